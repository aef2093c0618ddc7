/**
 * The one narrow interface every executor implements: upload, read, prepare (compile) a graph, run it.
 *
 * Buffers are opaque handles owned by the executor (host arrays on cpu and the reference, GPU buffers on webgpu), so
 * state that is fed back step after step never leaves the device. Only what the caller `read`s crosses back.
 *
 * @module
 */
import type { DType, Graph } from "../ir.ts";

/** Host-side data of a tensor. Floats are Float32Array (Float64Array accepted by the reference), bools Uint8Array. */
export type HostArray = Float32Array | Float64Array | Int32Array | Uint8Array;

/** A tensor living on an executor. Opaque apart from its shape and dtype. */
export interface Buffer {
  /** Static shape, row-major. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
}

/** A graph compiled for one executor. */
export interface Prepared {
  /** Names of the graph's inputs, in order. */
  readonly inputNames: readonly string[];
  /** Names of the graph's outputs, in order. */
  readonly outputNames: readonly string[];
  /** Runs the graph. Every input must be given. Returned buffers belong to the caller (dispose them). */
  run(inputs: Record<string, Buffer>): Promise<Record<string, Buffer>>;
  /** Releases the compiled session. */
  dispose(): Promise<void>;
}

/** Options for `Executor.prepare`. */
export interface PrepareOptions {
  /** Outputs that should stay on the device (fed back as inputs next step); others may come back to the host. */
  resident?: readonly string[];
}

/** An engine backend. */
export interface Executor {
  /** `cpu`, `wasm`, `webgpu` or `reference`. */
  readonly name: string;
  /** Copies host data into a new executor buffer. */
  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer;
  /** Copies a buffer back to the host (float32 for floats; float64 on the reference). */
  read(buf: Buffer): Promise<HostArray>;
  /** Frees a buffer. Disposing twice is an error. */
  dispose(buf: Buffer): void;
  /** Compiles a graph. */
  prepare(graph: Graph, opts?: PrepareOptions): Promise<Prepared>;
  /**
   * The most elements one packed parameter buffer may hold on this executor: a model's packed parameters, its
   * gradient, optimizer state and EMA are split into buffers of at most this many (engine/pack.ts `chunkLayout`).
   * Absent: no limit. Read it through `packLimit`, which applies the `ADD_PACK_LIMIT` override.
   */
  readonly packLimit?: number;
  /**
   * The most elements of frozen weights (a teacher, a feature network: read, never trained) that a graph compiled
   * here holds as constants rather than inputs, where that makes it faster; absent: none. Read it through
   * `constantLimit`, which applies the `ADD_CONSTANT_WEIGHTS` override.
   */
  readonly constantLimit?: number;
  /** Number of buffers allocated and not yet disposed (for leak tests). */
  liveBuffers(): number;
  /** Releases everything the executor holds. */
  close(): Promise<void>;
}

/**
 * `ex`'s limit of elements per packed buffer, or `ADD_PACK_LIMIT=N` when set: a smaller limit forces models to split
 * (tests check that a split run computes what an unsplit one does); a larger one than the executor's only moves the
 * failure to its first upload. Read at each call, so one process may plan under several limits.
 */
export function packLimit(ex: Pick<Executor, "packLimit">, v: string | undefined = envPackLimit()): number {
  if (v === undefined || v === "") return ex.packLimit ?? Infinity;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`ADD_PACK_LIMIT=${v}: expected an integer ≥ 1 (elements)`);
  return n;
}

/**
 * `ex`'s limit of frozen-weight elements a graph may hold as constants, or with `ADD_CONSTANT_WEIGHTS=0` none and
 * with `=1` no limit (tests compare the two ways; a benchmark measures them).
 */
export function constantLimit(
  ex: Pick<Executor, "constantLimit">,
  v: string | undefined = envVar("ADD_CONSTANT_WEIGHTS"),
): number {
  if (v === undefined || v === "") return ex.constantLimit ?? 0;
  if (v === "0" || v === "1") return v === "1" ? Infinity : 0;
  throw new Error(`ADD_CONSTANT_WEIGHTS=${v}: expected 0 or 1`);
}

/**
 * Elements of frozen weights a cpu graph holds as constants: 2^26 (256 MB of f32). Constant filters let onnxruntime
 * run a convolution in its NCHWc layout with bias and activation fused: `deno run -A bench/constant_weights.ts`
 * (2026-12-04, AMD EPYC 2-core) ran a chain of depthwise 3×3 at [16, 960, 2, 2] 17.6× faster than with the filter as
 * an input, pointwise 960←160 7.4×, a 3×3 of 32 channels at 32² 1.5×. The limit bounds the copy the session keeps
 * beside the store's, and the model file, which onnxruntime reads only up to 2 GB: Stable Diffusion's frozen UNet
 * stays an input.
 */
export const CPU_CONSTANT_LIMIT = 2 ** 26;

/**
 * Elements of frozen weights a wasm graph holds as constants: 2^24 (64 MB), a small share of the 4 GiB wasm32 heap
 * that every input of a step already shares. There is no NCHWc layout in the wasm build; folding still paid in the
 * same benchmark: depthwise 3×3 at [16, 144, 16, 16] 2.1×, pointwise 1.3×, 3×3 convolutions the same.
 */
export const WASM_CONSTANT_LIMIT = 2 ** 24;

/**
 * Elements per packed buffer on cpu: 2^30 − 4, just under 4 GiB of f32. Nothing below memory binds here: Deno's
 * Float32Array holds more than 2^32 elements and onnxruntime's CPU tensors are host memory with 64-bit sizes. The
 * limit keeps each buffer's byte length below 2^32, where a 32-bit size anywhere between JS, N-API and onnxruntime
 * would wrap, and it is above the largest model that runs here whole (Stable Diffusion 1.5's UNet, 859.5 M
 * parameters, 3.4 GB: bench:sd15), so no model of today splits; SDXL's UNet (2.57 G) would be three buffers.
 */
export const CPU_PACK_LIMIT = 2 ** 30 - 4;

/**
 * Elements per packed buffer on wasm: 2^29 − 4, just under 2 GiB of f32. onnxruntime-web copies every input into its
 * wasm32 heap, which holds at most 4 GiB for all a step touches, so that heap, not one buffer, bounds a model here
 * (weights, gradient and two moments of a 2^29-element model alone fill it); the limit keeps one tensor to half of it.
 */
export const WASM_PACK_LIMIT = 2 ** 29 - 4;

/**
 * The packing limit an executor of this name will have, where it is known without creating one (`--dry-run` plans
 * without an executor): `ADD_PACK_LIMIT` where set, else cpu's and wasm's constants, none for the reference, and null
 * for webgpu (its adapter's) and auto (webgpu's where an adapter exists).
 */
export function knownPackLimit(name: string): number | null {
  const limit = name === "cpu"
    ? CPU_PACK_LIMIT
    : name === "wasm"
    ? WASM_PACK_LIMIT
    : name === "reference"
    ? Infinity
    : null;
  const forced = packLimit({});
  return Number.isFinite(forced) ? forced : limit;
}

/** The two WebGPU limits that bound one buffer (a device's, or the adapter's it was requested with). */
export interface BufferLimits {
  /** Bytes of the largest buffer the device creates. */
  maxBufferSize: number;
  /** Bytes of the largest storage buffer a shader binds. */
  maxStorageBufferBindingSize: number;
}

/**
 * The f32 elements of the largest packed buffer a WebGPU device takes: the smaller of its two limits, in whole
 * 16-byte units, since uploads round a buffer up to a multiple of 16 bytes (onnxruntime's shaders bind vec4s).
 */
export function webGpuPackLimit(limits: BufferLimits): number {
  return Math.floor(Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize) / 16) * 4;
}

/** An override, where the process may read it without asking (a permission prompt must not stop a run). */
function envVar(variable: string): string | undefined {
  const d = (globalThis as { Deno?: typeof Deno }).Deno;
  if (d?.permissions?.querySync?.({ name: "env", variable }).state !== "granted") return undefined;
  return d.env.get(variable);
}

function envPackLimit(): string | undefined {
  return envVar("ADD_PACK_LIMIT");
}

/** The executors the engine knows by name. */
export type ExecutorName = "cpu" | "wasm" | "webgpu" | "reference" | "auto";
