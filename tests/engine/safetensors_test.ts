import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
} from "../../engine/safetensors.ts";

// A file from a header (object or raw JSON text) and a data section, built by hand so malformed cases are possible.
function file(header: unknown, data: Uint8Array | number = 0, headerLen?: number): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const body = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen ?? json.length), true);
  out.set(json, 8);
  out.set(body, 8 + json.length);
  return out;
}

function f32le(values: number[]): Uint8Array {
  const out = new Uint8Array(4 * values.length), dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setFloat32(4 * i, v, true));
  return out;
}

Deno.test("round trip of several dtypes and shapes, including a 0-d scalar and an empty tensor", () => {
  const tensors = {
    "w": { data: new Float32Array([1, -2.5, 3e-8, 4e30, -0, 6]), shape: [2, 3] },
    "0": { data: new Float64Array([Math.PI, -1e-300]), shape: [2] },
    "i32": { data: new Int32Array([-(2 ** 31), 0, 2 ** 31 - 1]), shape: [3, 1] },
    "i64": { data: new BigInt64Array([-(2n ** 63n), 5n]), shape: [2] },
    "u64": { data: new BigUint64Array([2n ** 64n - 1n]), shape: [1] },
    "i16": { data: new Int16Array([-32768, 7]), shape: [2] },
    "i8": { data: new Int8Array([-128, 127]), shape: [1, 2] },
    "u32": { data: new Uint32Array([2 ** 32 - 1]), shape: [1, 1, 1] },
    "u16": { data: new Uint16Array([65535, 1]), shape: [2] },
    "u8": { data: new Uint8Array([0, 255, 9]), shape: [3] },
    "mask": { data: new Uint8Array([1, 0, 1]), shape: [3], dtype: "BOOL" as const },
    "scalar": { data: new Float32Array([3.5]), shape: [] },
    "empty": { data: new Float32Array(0), shape: [0, 4] },
    "half": { data: new Float32Array([1, -2, 65504, 2 ** -24, 0.5]), shape: [5], dtype: "F16" as const },
    "brain": { data: new Float32Array([1, -2, 3.140625, 2 ** 100]), shape: [2, 2], dtype: "BF16" as const },
  };
  const meta = { format: "pt", note: "ünïcode ✓" };
  const { tensors: got, metadata } = decodeSafetensors(encodeSafetensors(tensors, meta));
  assert.deepEqual(metadata, meta);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(tensors).sort());
  const want: Record<string, string> = { w: "F32", "0": "F64", i32: "I32", i64: "I64", u64: "U64", i16: "I16" };
  Object.assign(want, { i8: "I8", u32: "U32", u16: "U16", u8: "U8", mask: "BOOL", scalar: "F32", empty: "F32" });
  Object.assign(want, { half: "F16", brain: "BF16" });
  for (const [name, t] of Object.entries(tensors)) {
    assert.equal(got[name].dtype, want[name], name);
    assert.deepEqual(got[name].shape, t.shape, name);
    assert.deepEqual(got[name].data, t.data, name); // F16/BF16 inputs were chosen exactly representable
  }
  assert.ok(Object.is(got.w.data[4], -0));
});

Deno.test("written file matches the published byte layout", () => {
  const bytes = encodeSafetensors(
    {
      w: { data: new Float32Array([1, 2, 3, 4]), shape: [2, 2] },
      b: { data: new Float32Array([-1, 0.5]), shape: [2] },
    },
    { format: "pt" },
  );
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0);
  assert.equal(bytes.length, 8 + n + 24);
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(text, /^\{.*\} *$/);
  assert.deepEqual(JSON.parse(text), {
    __metadata__: { format: "pt" },
    w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] },
    b: { dtype: "F32", shape: [2], data_offsets: [16, 24] },
  });
  assert.deepEqual(bytes.subarray(8 + n), f32le([1, 2, 3, 4, -1, 0.5]));
});

Deno.test("decodes a hand-built file whose header order differs from its data order", () => {
  const header = {
    __metadata__: { format: "pt" },
    a: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    b: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
  };
  const { tensors } = decodeSafetensors(file(header, f32le([10, 20, 30])));
  assert.deepEqual(tensors.a.data, new Float32Array([30]));
  assert.deepEqual(tensors.b.data, new Float32Array([10, 20]));
});

Deno.test("F16 and BF16 encode with round-to-nearest-even and decode to float32", () => {
  const xs = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 65519, 65520, 2 ** -25, 3 * 2 ** -25, 0.1, -Infinity, NaN];
  const bits = (dtype: "F16" | "BF16", v: number[]) => {
    const b = encodeSafetensors({ x: { data: new Float32Array(v), shape: [v.length], dtype } });
    return Array.from(new Uint16Array(b.slice(b.length - 2 * v.length).buffer));
  };
  assert.deepEqual(bits("F16", xs), [0x3c00, 0x3c02, 0x7bff, 0x7c00, 0x0000, 0x0002, 0x2e66, 0xfc00, 0x7e00]);
  assert.deepEqual(bits("BF16", [1, -2, 1 + 2 ** -8, 1 + 3 * 2 ** -8, NaN]), [0x3f80, 0xc000, 0x3f80, 0x3f82, 0x7fc0]);
  const raw = encodeSafetensors({ x: { data: new Uint16Array([0x3c00, 0x0001, 0xfc00]), shape: [3], dtype: "F16" } });
  assert.deepEqual(decodeSafetensors(raw).tensors.x.data, new Float32Array([1, 2 ** -24, -Infinity]));
  const nan = decodeSafetensors(
    file({ x: { dtype: "F16", shape: [1], data_offsets: [0, 2] } }, new Uint8Array([1, 0x7e])),
  );
  assert.ok(Number.isNaN(nan.tensors.x.data[0]));
});

Deno.test("toFloat32 converts every numeric dtype", () => {
  assert.deepEqual(toFloat32({ data: new Int32Array([1, -2]) }), new Float32Array([1, -2]));
  assert.deepEqual(toFloat32({ data: new BigInt64Array([3n, -4n]) }), new Float32Array([3, -4]));
  assert.deepEqual(toFloat32({ data: new Float64Array([0.5]) }), new Float32Array([0.5]));
  assert.deepEqual(toFloat32({ data: new Uint8Array([255]) }), new Float32Array([255]));
  const f = new Float32Array([1]);
  assert.equal(toFloat32({ data: f }), f);
});

Deno.test("each malformed file throws one SafetensorsError naming the source and the problem", () => {
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const cases: [string, Uint8Array, RegExp][] = [
    ["short", new Uint8Array(5), /5 bytes, shorter than the 8-byte header length/],
    ["header past end", file({}, 0, 100), /header length 100 runs past the end of the 10-byte file/],
    ["not JSON", file("{nope"), /header is not valid UTF-8 JSON/],
    ["bad UTF-8", file("{}").map((b, i) => i === 8 ? 0xff : b), /header is not valid UTF-8 JSON/],
    ["array", file("[1, 2]"), /header is not a JSON object/],
    ["null", file("null"), /header is not a JSON object/],
    ["entry not object", file({ x: 3 }), /tensor "x": entry is not an object/],
    ["unknown dtype", file({ x: { ...ok, dtype: "F8_E4M3" } }, 8), /tensor "x": unknown dtype "F8_E4M3"/],
    ["prototype dtype", file({ x: { ...ok, dtype: "toString" } }, 8), /unknown dtype "toString"/],
    ["negative dim", file({ x: { ...ok, shape: [-2] } }, 8), /tensor "x": shape must be an array of non-negative/],
    ["fractional dim", file({ x: { ...ok, shape: [1.5] } }, 8), /shape must be an array of non-negative integers/],
    ["shape not array", file({ x: { ...ok, shape: "2" } }, 8), /shape must be an array/],
    ["offsets missing", file({ x: { dtype: "F32", shape: [2] } }, 8), /data_offsets must be \[begin, end\]/],
    ["offsets reversed", file({ x: { ...ok, data_offsets: [8, 0] } }, 8), /data_offsets must be \[begin, end\]/],
    ["size mismatch", file({ x: { ...ok, data_offsets: [0, 4] } }, 4), /span 4 bytes but shape \[2\] of F32 needs 8/],
    ["out of range", file({ x: { ...ok, data_offsets: [4, 12] } }, 8), /out of range of the 8-byte data section/],
    [
      "overlap",
      file({ a: ok, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, 8),
      /tensor "b" at byte 4 overlaps tensor "a" ending at 8/,
    ],
    [
      "gap",
      file({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] }, b: { ...ok, data_offsets: [8, 16] } }, 16),
      /gap of 4 bytes before tensor "b" at byte 8/,
    ],
    ["leading gap", file({ x: { ...ok, data_offsets: [4, 12] } }, 12), /gap of 4 bytes before tensor "x"/],
    ["trailing bytes", file({ x: ok }, 12), /4 bytes after the last tensor are not covered/],
    ["metadata value", file({ __metadata__: { a: 1 } }), /metadata "a" is not a string: 1/],
    ["metadata not object", file({ __metadata__: ["a"] }), /"__metadata__" is not an object/],
  ];
  for (const [what, bytes, message] of cases) {
    assert.throws(() => decodeSafetensors(bytes, "bad.safetensors"), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError, `${what}: ${e}`);
      assert.match(e.message, /^safetensors bad\.safetensors: /, what);
      assert.match(e.message, message, what);
      return true;
    });
  }
});

Deno.test("encoding rejects inconsistent inputs", () => {
  const bad: [() => unknown, RegExp][] = [
    [() => encodeSafetensors({ x: { data: new Float32Array(3), shape: [2] } }), /3 elements for shape \[2\]/],
    [() => encodeSafetensors({ x: { data: new Float32Array(1), shape: [-1] } }), /shape must be/],
    [() => encodeSafetensors({ x: { data: new Int32Array(1), shape: [1], dtype: "F32" } }), /cannot store/],
    [() => encodeSafetensors({ __metadata__: { data: new Float32Array(1), shape: [1] } }), /reserved/],
    [() => encodeSafetensors({}, { a: 1 as unknown as string }), /metadata "a" must be a string/],
  ];
  for (const [f, m] of bad) assert.throws(f, (e: unknown) => e instanceof SafetensorsError && m.test(e.message));
});

Deno.test("writeSafetensors is atomic and readSafetensors names the path in errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/model.safetensors`;
    await Deno.writeTextFile(path, "old contents");
    await writeSafetensors(path, { x: { data: new Float32Array([1, 2]), shape: [2] } }, { step: "3" });
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["model.safetensors"]);
    const { tensors, metadata } = await readSafetensors(path);
    assert.deepEqual(tensors.x.data, new Float32Array([1, 2]));
    assert.deepEqual(metadata, { step: "3" });

    await assert.rejects(writeSafetensors(`${dir}/missing/m.safetensors`, {}), Deno.errors.NotFound);
    const broken = `${dir}/broken.safetensors`;
    await Deno.writeFile(broken, new Uint8Array(3));
    await assert.rejects(readSafetensors(broken), (e: unknown) => {
      return e instanceof SafetensorsError && e.message.includes(broken) && /shorter than/.test(e.message);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
