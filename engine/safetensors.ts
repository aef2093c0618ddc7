/**
 * Reading and writing the safetensors format, the checkpoint format of diffusers and PyTorch.
 *
 * Layout: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON mapping each tensor name to
 * `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data section) plus an optional
 * `__metadata__` map of strings, then the tensor bytes, little-endian, contiguous and without gaps.
 *
 * Decoding validates the whole header before touching data, so a truncated or hand-edited checkpoint fails with one
 * message naming the file instead of producing silently wrong weights.
 *
 * @module
 */

/** The element types of the format. F8 variants are not supported: nothing in this engine produces them. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL";

// The typed array holding each dtype's raw little-endian bytes; F16/BF16 bits live in a Uint16Array. `satisfies`
// keeps each entry's own constructor type and fails deno check when this table and the dtype list differ.
const RAW = {
  F64: Float64Array,
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I64: BigInt64Array,
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U64: BigUint64Array,
  U32: Uint32Array,
  U16: Uint16Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
} satisfies Record<SafetensorsDType, unknown>;

/** True if `s` names a supported dtype (own keys only, so "toString" is not a dtype). */
export function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  return typeof s === "string" && Object.hasOwn(RAW, s);
}

/** Bytes per element of `dtype`. */
export function dtypeSize(dtype: SafetensorsDType): number {
  return RAW[dtype].BYTES_PER_ELEMENT;
}

/** Any typed array a tensor can be held in. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | BigInt64Array
  | BigUint64Array
  | Uint32Array
  | Uint16Array
  | Uint8Array;

/**
 * A decoded tensor. `dtype` is the type stored in the file; F16 and BF16 are widened to Float32Array because JS has
 * no half-precision arithmetic, the integer types keep their own typed array, BOOL is a Uint8Array of 0/1.
 */
export interface SafeTensor {
  /** The type stored in the file, which may be narrower than `data` (F16 and BF16). */
  dtype: SafetensorsDType;
  /** Row-major shape; `[]` for a scalar. */
  shape: number[];
  /** The elements in row-major order. */
  data: TensorData;
}

/** A tensor to encode; `dtype` defaults to the natural type of `data` (Float32Array -> F32, ...). */
export interface TensorInput {
  /** The elements in row-major order; their count must match `shape`. */
  data: TensorData;
  /** Row-major shape; `[]` for a scalar. */
  shape: number[];
  /** The type to store; default from `data`'s array. Float data may also be stored as F64, F32, F16 or BF16. */
  dtype?: SafetensorsDType;
}

/** A decoded file: tensors by name and the `__metadata__` strings (empty when absent). */
export interface SafetensorsFile {
  /** Every tensor of the file by name. */
  tensors: Record<string, SafeTensor>;
  /** The header's `__metadata__` strings. */
  metadata: Record<string, string>;
}

/** Thrown for every malformed file or invalid input; the message names the source and the problem. */
export class SafetensorsError extends Error {
  /**
   * An error about the file or bytes `source`.
   *
   * @param source file path or label of the bytes
   * @param problem what is wrong
   */
  constructor(readonly source: string, problem: string) {
    super(`safetensors ${source}: ${problem}`);
    this.name = "SafetensorsError";
  }
}

// Typed arrays are host-endian and the format is little-endian; every host Deno runs on is LE, so reinterpreting
// bytes directly is both correct and far faster than a DataView loop over gigabytes of weights.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("safetensors.ts needs a little-endian host");

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
let halfTable: Float32Array | undefined;

function halfToFloat(h: number): number {
  const exp = (h >>> 10) & 0x1f, mant = h & 0x3ff, sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** float32 -> IEEE half bits, round to nearest even, as PyTorch's `.half()` does. */
function floatToHalf(x: number): number {
  f32[0] = x;
  const b = u32[0], sign = (b >>> 16) & 0x8000, exp = (b >>> 23) & 0xff, mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    const shift = 14 - e; // lands the 24-bit significand on the 2^-24 grid of half subnormals
    if (shift > 25) return sign;
    const m = mant | 0x800000, half = 1 << (shift - 1), rem = m & ((1 << shift) - 1);
    let r = m >>> shift;
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++; // a carry into the exponent is the correct rounding
  return sign | r;
}

function floatToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40; // keep NaN a NaN: rounding could make it Inf
  return (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
}

/**
 * Converts any numeric tensor to a Float32Array (F16/BF16 data already is one after decoding). Returns `t.data`
 * itself, not a copy, when it is already a Float32Array.
 */
export function toFloat32(t: { data: TensorData }): Float32Array {
  const d = t.data;
  if (d instanceof Float32Array) return d;
  const out = new Float32Array(d.length);
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) {
    for (let i = 0; i < d.length; i++) out[i] = Number(d[i]);
  } else out.set(d);
  return out;
}

function checkShape(source: string, name: string, shape: unknown): number {
  if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) {
    const got = JSON.stringify(shape);
    throw new SafetensorsError(source, `tensor "${name}": shape must be an array of non-negative integers, got ${got}`);
  }
  return shape.reduce((a: number, b: number) => a * b, 1);
}

function inferDType(data: TensorData): SafetensorsDType {
  // F16, BF16 and BOOL share a typed array with U16/U8, so they are never inferred, only asked for.
  for (const [dt, ctor] of Object.entries(RAW)) {
    if (data.constructor === ctor && dt !== "F16" && dt !== "BF16" && dt !== "BOOL") return dt as SafetensorsDType;
  }
  throw new TypeError("unsupported typed array");
}

// Returns the little-endian bytes of `data` stored as `dtype`, converting floats where the two differ.
function rawBytes(name: string, dtype: SafetensorsDType, data: TensorData): Uint8Array {
  let raw: TensorData = data;
  if (data.constructor !== RAW[dtype]) {
    const isFloat = data instanceof Float32Array || data instanceof Float64Array;
    if (isFloat && (dtype === "F16" || dtype === "BF16")) {
      const conv = dtype === "F16" ? floatToHalf : floatToBf16;
      raw = new Uint16Array(data.length);
      for (let i = 0; i < data.length; i++) raw[i] = conv(data[i]);
    } else if (isFloat && (dtype === "F32" || dtype === "F64")) {
      raw = dtype === "F32" ? Float32Array.from(data) : Float64Array.from(data);
    } else {
      throw new SafetensorsError("<encode>", `tensor "${name}": cannot store a ${data.constructor.name} as ${dtype}`);
    }
  }
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
}

/**
 * Encodes tensors as a safetensors file. Data is laid out in the iteration order of `tensors` and the header keys
 * follow the same order (after `__metadata__`), unsorted: readers locate tensors by offset, so order is cosmetic.
 * F16/BF16 accept float arrays (rounded to nearest even) or Uint16Array raw bits; BOOL takes a Uint8Array.
 */
export function encodeSafetensors(tensors: Record<string, TensorInput>, metadata?: Record<string, string>): Uint8Array {
  const parts: string[] = [];
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new SafetensorsError("<encode>", `metadata "${k}" must be a string`);
    }
    parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") throw new SafetensorsError("<encode>", `"__metadata__" is reserved`);
    const numel = checkShape("<encode>", name, t.shape);
    const dtype = t.dtype ?? inferDType(t.data);
    if (!isSafetensorsDType(dtype)) {
      throw new SafetensorsError("<encode>", `tensor "${name}": unknown dtype "${dtype}"`);
    }
    if (t.data.length !== numel) {
      throw new SafetensorsError("<encode>", `tensor "${name}": ${t.data.length} elements for shape [${t.shape}]`);
    }
    const bytes = rawBytes(name, dtype, t.data);
    // Building the JSON by hand keeps integer-like names ("0", "1") in place; JSON.stringify would hoist them.
    const entry = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    blobs.push(bytes);
    offset += bytes.length;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const n = Math.ceil(json.length / 8) * 8; // spaces pad the header so the data section starts 8-byte aligned
  const out = new Uint8Array(8 + n + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + n);
  let at = 8 + n;
  for (const b of blobs) out.set(b, at), at += b.length;
  return out;
}

function decodeData(dtype: SafetensorsDType, bytes: Uint8Array): TensorData {
  const buf = bytes.slice().buffer; // copy: the file's offsets need not be aligned for the element size
  if (dtype === "BF16") {
    const src = new Uint16Array(buf), out = new Float32Array(src.length), bits = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
    return out;
  }
  if (dtype === "F16") {
    if (!halfTable) {
      halfTable = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
    }
    const src = new Uint16Array(buf), out = new Float32Array(src.length);
    for (let i = 0; i < src.length; i++) out[i] = halfTable[src[i]];
    return out;
  }
  return new RAW[dtype](buf);
}

/** Decodes a safetensors file held in memory; `source` names it in errors. Throws SafetensorsError if malformed. */
export function decodeSafetensors(bytes: Uint8Array, source = "<bytes>"): SafetensorsFile {
  function fail(problem: string): never {
    throw new SafetensorsError(source, problem);
  }
  if (bytes.length < 8) fail(`file is ${bytes.length} bytes, shorter than the 8-byte header length`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) fail(`header length ${n} runs past the end of the ${bytes.length}-byte file`);
  const dataStart = 8 + Number(n), dataLen = bytes.length - dataStart;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (e) {
    fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) fail("header is not a JSON object");
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: SafetensorsDType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) fail(`"__metadata__" is not an object`);
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== "string") fail(`metadata "${k}" is not a string: ${JSON.stringify(s)}`);
        metadata[k] = s as string;
      }
      continue;
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) fail(`tensor "${name}": entry is not an object`);
    const { dtype, shape, data_offsets: off } = v as Record<string, unknown>;
    if (!isSafetensorsDType(dtype)) fail(`tensor "${name}": unknown dtype ${JSON.stringify(dtype)}`);
    const numel = checkShape(source, name, shape);
    if (
      !Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[0] > off[1]
    ) {
      fail(`tensor "${name}": data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(off)}`);
    }
    const [begin, end] = off as number[], need = numel * dtypeSize(dtype);
    if (end - begin !== need) {
      const span = end - begin;
      fail(
        `tensor "${name}": data_offsets [${begin}, ${end}] span ${span} bytes but shape [${shape}] of ${dtype} needs ${need}`,
      );
    }
    if (end > dataLen) {
      fail(`tensor "${name}": data_offsets [${begin}, ${end}] out of range of the ${dataLen}-byte data section`);
    }
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }
  // The format promises a dense data section; a gap or overlap means a corrupt or hand-edited file.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0, prev = "";
  for (const e of sorted) {
    if (e.begin < pos) fail(`tensor "${e.name}" at byte ${e.begin} overlaps tensor "${prev}" ending at ${pos}`);
    if (e.begin > pos) fail(`gap of ${e.begin - pos} bytes before tensor "${e.name}" at byte ${e.begin}`);
    pos = e.end, prev = e.name;
  }
  if (pos !== dataLen) fail(`${dataLen - pos} bytes after the last tensor are not covered by any tensor`);
  const tensors: Record<string, SafeTensor> = {};
  for (const e of entries) {
    const slice = bytes.subarray(dataStart + e.begin, dataStart + e.end);
    tensors[e.name] = { dtype: e.dtype, shape: e.shape, data: decodeData(e.dtype, slice) };
  }
  return { tensors, metadata };
}

/** Reads and decodes a safetensors file; errors name `path`. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  return decodeSafetensors(await Deno.readFile(path), path);
}

/**
 * Writes a safetensors file atomically: the bytes go to `path.tmp-<random>` and are renamed over `path`, so a crash
 * mid-write never leaves a truncated checkpoint where a good one was.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  const bytes = encodeSafetensors(tensors, metadata);
  const rand = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  const tmp = `${path}.tmp-${rand}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
