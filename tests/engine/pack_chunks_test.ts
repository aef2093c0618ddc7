// Chunked packing (issue 15): a group larger than an executor's buffer limit is split at parameter boundaries into
// several flat buffers, and a group that fits is packed exactly as before. Layouts, host and traced round trips, the
// one error for a parameter over the limit, each executor's limit (webgpu's read from a device that ort requested
// with the adapter's maximum limits), and a UNet sampler whose weights are split computing what the unsplit one does.
import assert from "node:assert/strict";
import { createExecutor } from "../../engine/executors/auto.ts";
import { packLimit, webGpuPackLimit } from "../../engine/executors/executor.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { grad } from "../../engine/grad.ts";
import { add, mul, square } from "../../engine/math.ts";
import { sum } from "../../engine/ops.ts";
import {
  chunkLayout,
  chunkNames,
  layoutOf,
  packChunks,
  packedInputs,
  packHost,
  packHostChunks,
  splitFlat,
  unpackChunks,
  unpackHostChunks,
} from "../../engine/pack.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { unet } from "../../models/unet.ts";

const SHAPES = { a: [2, 3], b: [4], c: [5], d: [3], e: [1, 1] };
const values = (shapes: Record<string, number[]>, seed = 1) =>
  Object.fromEntries(
    Object.entries(shapes).map(([k, s], i) => [k, new Rng(seed).fold(i).normal(s.reduce((x, y) => x * y, 1))]),
  );

Deno.test("chunkLayout: greedy at parameter boundaries, offsets from each buffer's start; a fitting layout is itself", () => {
  const whole = layoutOf(SHAPES);
  assert.equal(whole.total, 19);
  assert.deepEqual(chunkLayout(whole, 19), [whole], "fits: the same layout, unchanged");
  assert.equal(chunkLayout(whole, Infinity)[0], whole);
  const chunks = chunkLayout(whole, 10);
  assert.deepEqual(chunks.map((c) => c.entries.map((e) => e.path)), [["a", "b"], ["c", "d", "e"]]);
  assert.deepEqual(chunks.map((c) => c.total), [10, 9]);
  assert.deepEqual(chunks[1].entries.map((e) => e.offset), [0, 5, 8]);
  assert.deepEqual(chunks.map((c) => c.entries.map((e) => e.shape)), [[[2, 3], [4]], [[5], [3], [1, 1]]]);
  assert.deepEqual(chunkLayout(whole, 6).map((c) => c.total), [6, 4, 5, 4], "four buffers at 6");
  assert.deepEqual(chunkNames("model.net", 1), ["model.net"]);
  assert.deepEqual(chunkNames("opt.o.net.m", 3), ["opt.o.net.m.0", "opt.o.net.m.1", "opt.o.net.m.2"]);
});

Deno.test("chunkLayout: a parameter over the limit is one error naming it, its size and the limit", () => {
  assert.throws(
    () => chunkLayout(layoutOf({ small: [3], "down.0.conv.w": [4, 2, 3, 3] }), 50, 'model "unet" on webgpu'),
    {
      message: 'model "unet" on webgpu: parameter "down.0.conv.w" [4,2,3,3] has 72 elements, over the limit of 50 ' +
        "elements per packed buffer; a parameter is never split",
    },
  );
  for (const bad of [0, -1, 2.5, NaN]) assert.throws(() => chunkLayout(layoutOf(SHAPES), bad), /positive integer/);
});

Deno.test("packHostChunks/unpackHostChunks round trip; the chunks are the whole buffer cut at their boundaries", () => {
  const v = values(SHAPES), whole = layoutOf(SHAPES), chunks = chunkLayout(whole, 7);
  assert.equal(chunks.length, 4);
  const bufs = packHostChunks(v, chunks);
  assert.deepEqual(bufs.map((b) => b.length), chunks.map((c) => c.total));
  assert.deepEqual(unpackHostChunks(bufs, chunks), v);
  const flat = packHost(v, whole);
  assert.deepEqual(splitFlat(flat, chunks), bufs);
  assert.throws(() => splitFlat(flat.subarray(1), chunks), /18 values, expected 19/);
  assert.throws(() => unpackHostChunks(bufs.slice(1), chunks), /3 buffers, 4 chunks/);
});

Deno.test("unpackChunks/packChunks traced: views and their gradients per buffer, exact on the reference", () => {
  const v = values(SHAPES), chunks = chunkLayout(layoutOf(SHAPES), 10);
  const tr = new Trace();
  const w = packedInputs(tr, "w", chunks);
  assert.deepEqual(w.names, ["w.0", "w.1"]);
  // Each parameter scaled by its own power of two (exact in f32 too), repacked; and d/dw of Σ w², 2w buffer by buffer.
  const scaled = Object.fromEntries(Object.entries(w.params).map(([k, t], i) => [k, mul(t, 2 ** i)]));
  const loss = Object.values(w.params).map((t) => sum(square(t))).reduce((a, b) => add(a, b));
  const packed = packChunks(scaled, chunks), g = packChunks(grad(loss, w.params), chunks);
  const out = tr.build({ p0: packed[0], p1: packed[1], g0: g[0], g1: g[1] });
  const bufs = packHostChunks(v, chunks);
  const res = evaluate(out, { "w.0": { data: bufs[0], shape: [10] }, "w.1": { data: bufs[1], shape: [9] } });
  const want = packHostChunks(
    Object.fromEntries(Object.entries(v).map(([k, a], i) => [k, a.map((x) => x * 2 ** i)])),
    chunks,
  );
  assert.deepEqual([...res.p0], [...want[0]]);
  assert.deepEqual([...res.p1], [...want[1]]);
  assert.deepEqual([...res.g0], [...bufs[0]].map((x) => 2 * x));
  assert.deepEqual([...res.g1], [...bufs[1]].map((x) => 2 * x));
  assert.deepEqual(Object.keys(unpackChunks([packed[0], packed[1]], chunks)), Object.keys(SHAPES));
});

Deno.test("packLimit: the executor's, ADD_PACK_LIMIT over it, one line for a bad value", () => {
  // "" is unset, as an empty variable is (and unlike undefined, it does not read this process's environment).
  assert.equal(packLimit({ packLimit: 7 }, ""), 7);
  assert.equal(packLimit({}, ""), Infinity);
  assert.equal(packLimit({ packLimit: 7 }, "300"), 300);
  for (const bad of ["0", "-3", "1.5", "lots"]) {
    assert.throws(() => packLimit({}, bad), { message: `ADD_PACK_LIMIT=${bad}: expected an integer ≥ 1 (elements)` });
  }
  // llvmpipe here: a 128 MiB binding under a 2 GiB − 1 buffer; uploads round up to 16 bytes.
  assert.equal(webGpuPackLimit({ maxBufferSize: 2 ** 31 - 1, maxStorageBufferBindingSize: 2 ** 27 }), 2 ** 25);
  assert.equal(webGpuPackLimit({ maxBufferSize: 2 ** 32 - 1, maxStorageBufferBindingSize: 2 ** 32 - 1 }), 2 ** 30 - 4);
});

Deno.test({
  name: "executors' limits: cpu 2^30 − 4, wasm 2^29 − 4, webgpu its device's, which has the adapter's maximum limits",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    for (const [name, want] of [["cpu", 2 ** 30 - 4], ["wasm", 2 ** 29 - 4]] as const) {
      const ex = await createExecutor(name);
      assert.equal(ex.packLimit, want, name);
      await ex.close();
    }
    const adapter = await navigator.gpu.requestAdapter();
    assert.ok(adapter, "no WebGPU adapter (mesa-vulkan-drivers gives llvmpipe)");
    const ex = await createExecutor("webgpu") as Awaited<ReturnType<typeof createExecutor>> & { device: GPUDevice };
    try {
      // WebGPU's defaults are 128 MiB and 256 MiB: a device with the adapter's values was requested with its maxima.
      for (const k of ["maxBufferSize", "maxStorageBufferBindingSize"] as const) {
        assert.equal(ex.device.limits[k], adapter.limits[k], k);
      }
      assert.equal(ex.packLimit, webGpuPackLimit(adapter.limits));
    } finally {
      await ex.close();
    }
  },
});

Deno.test({
  name: "UNetRunner: weights split into 3+ buffers (ADD_PACK_LIMIT) give the unsplit runner's output, bit for bit",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const u = unet.params.parse({
      channels: [8, 16],
      attention_levels: [1],
      size: 8,
      groups: 4,
      context_dim: 4,
      pooled_dim: 0,
    });
    const shapes = unet.shapes(u), weights = unet.init(u, new Rng(5));
    const largest = Math.max(...layoutOf(shapes).entries.map((e) => e.size));
    const limit = Math.max(largest, Math.ceil(layoutOf(shapes).total / 4));
    assert.ok(chunkLayout(layoutOf(shapes), limit).length >= 3);
    const x = new Rng(6).normal(2 * 3 * 8 * 8),
      text = { tokens: new Rng(7).normal(2 * 3 * 4), pooled: new Float32Array(0), length: 3 };
    const ex = await createExecutor("cpu");
    const before = Deno.env.get("ADD_PACK_LIMIT"), constants = Deno.env.get("ADD_CONSTANT_WEIGHTS");
    try {
      // The weights as inputs (on cpu they would be constants, unsplit), the unsplit runner under the executor's own
      // limit, whatever the environment says.
      Deno.env.set("ADD_CONSTANT_WEIGHTS", "0");
      Deno.env.delete("ADD_PACK_LIMIT");
      const whole = await UNetRunner.create(ex, u, weights, 2, 3);
      const a = await whole.run(x, 500, text);
      await whole.dispose();
      Deno.env.set("ADD_PACK_LIMIT", String(limit));
      const split = await UNetRunner.create(ex, u, weights, 2, 3);
      const b = await split.run(x, 500, text);
      await split.dispose();
      assert.deepEqual(b, a);
    } finally {
      if (before === undefined) Deno.env.delete("ADD_PACK_LIMIT");
      else Deno.env.set("ADD_PACK_LIMIT", before);
      if (constants === undefined) Deno.env.delete("ADD_CONSTANT_WEIGHTS");
      else Deno.env.set("ADD_CONSTANT_WEIGHTS", constants);
      await ex.close();
    }
  },
});
