// ship/unet_onnx.ts: the exported UNet graph computes what the project's UNetRunner computes, and its fp16 variant
// what the fp32 graph computes on weights rounded to float16.
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { OrtNodeExecutor } from "../../engine/executors/ort_node.ts";
import { Rng } from "../../engine/rng.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { unet } from "../../models/unet.ts";
import { toFloat16Bits, unetInputShapes, unetOnnx } from "../../ship/unet_onnx.ts";
import { randomTinyUnet, TINY_UNET } from "../helpers/tiny_unet.ts";

/** IEEE float16 bits → value, from the format's definition. */
function fromFloat16(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

Deno.test("toFloat16Bits: known values, and the nearest float16 (ties to even) for values across the range", () => {
  const known: [number, number][] = [
    [0, 0],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65520, 0x7c00], // halfway to the next step rounds to even: ∞
    [1e6, 0x7c00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // halfway between 0 and 2^-24: even is 0
    [3 * 2 ** -25, 0x0002],
    [1 + 2 ** -11, 0x3c00],
    [1 + 3 * 2 ** -11, 0x3c02],
    [Infinity, 0x7c00],
  ];
  const bits = toFloat16Bits(Float32Array.from(known.map(([v]) => v)));
  known.forEach(([v, h], i) => assert.equal(bits[i], h, `${v}: got 0x${bits[i].toString(16)}`));
  assert.ok(Number.isNaN(fromFloat16(toFloat16Bits(Float32Array.of(NaN))[0])));
  const rng = new Rng(1), u = rng.uniform(20_000), z = rng.normal(20_000);
  const vals = Float32Array.from(u, (x, i) => z[i] * 2 ** (Math.floor(x * 44) - 28));
  toFloat16Bits(vals).forEach((h, i) => {
    const v = vals[i], d = Math.abs(v - fromFloat16(h));
    if (Math.abs(v) >= 65520) return assert.equal(h & 0x7fff, 0x7c00, `${v} overflows to ∞`);
    for (const n of [h - 1, h + 1]) {
      if ((n & 0x7fff) > 0x7c00 || n < 0 || ((h ^ n) & 0x8000)) continue;
      const dn = Math.abs(v - fromFloat16(n));
      assert.ok(d < dn || (d === dn && (h & 1) === 0), `${v} → 0x${h.toString(16)}, but 0x${n.toString(16)} is nearer`);
    }
  });
});

function inputs(seed: number) {
  const u = unet.params.parse(TINY_UNET), shapes = unetInputShapes(u, 32), rng = new Rng(seed);
  const data = Object.fromEntries(
    Object.entries(shapes).map(([k, s]) => [k, rng.fold(k).normal(s.reduce((a, b) => a * b))]),
  );
  data.t = Float32Array.of(499);
  return { u, shapes, data };
}

async function runOnnx(model: Uint8Array, shapes: Record<string, number[]>, data: Record<string, Float32Array>) {
  const s = await ort.InferenceSession.create(model, { executionProviders: ["cpu"] });
  try {
    const feeds = Object.fromEntries(
      Object.entries(shapes).map(([k, sh]) => [k, new ort.Tensor("float32", data[k], sh)]),
    );
    return Float32Array.from((await s.run(feeds)).out.data as Float32Array);
  } finally {
    await s.release();
  }
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

Deno.test({
  name: "the exported fp32 UNet equals the project's UNetRunner on cpu for the same inputs",
  sanitizeResources: false,
  fn: async () => {
    const weights = randomTinyUnet(3), { u, shapes, data } = inputs(4);
    const got = await runOnnx(unetOnnx(u, weights, 32), shapes, data);
    const ex = new OrtNodeExecutor();
    const runner = await UNetRunner.create(ex, u, weights, 1, 32);
    try {
      const want = await runner.run(data.x, 499, { tokens: data.tokens, pooled: data.pooled, length: 32 });
      assert.ok(Math.max(...want.map(Math.abs)) > 0.1, "the UNet's output should not be trivially small");
      assert.ok(maxDiff(got, want) <= 1e-5, `max |Δ| ${maxDiff(got, want)}`);
    } finally {
      await runner.dispose();
      await ex.close();
    }
  },
});

Deno.test({
  name: "the fp16 UNet is half the file and computes the fp32 graph of its float16-rounded weights",
  sanitizeResources: false,
  fn: async () => {
    const weights = randomTinyUnet(5), { u, shapes, data } = inputs(6);
    const half = unetOnnx(u, weights, 32, { fp16: true }), full = unetOnnx(u, weights, 32);
    // Two bytes saved per weight, less a Cast node per tensor.
    const params = Object.values(weights).reduce((a, w) => a + w.length, 0);
    assert.ok(
      full.length - half.length > 1.8 * params,
      `fp16 ${half.length} bytes, fp32 ${full.length}, ${params} weights`,
    );
    const rounded = Object.fromEntries(
      Object.entries(weights).map(([k, w]) => [k, Float32Array.from(toFloat16Bits(w), fromFloat16)]),
    );
    const got = await runOnnx(half, shapes, data), want = await runOnnx(unetOnnx(u, rounded, 32), shapes, data);
    assert.ok(maxDiff(got, want) <= 1e-5, `max |Δ| ${maxDiff(got, want)}`);
    assert.ok(maxDiff(got, await runOnnx(full, shapes, data)) > 0, "rounding the weights should change something");
  },
});
