// models/lora.ts: the merged weight W + (alpha/rank)·B·A of linear and conv weights against float64 finite differences
// (first and second order, as ADD's R1 differentiates the student's output again), the traced and the host merge
// agreeing, and a LoRA UNet with B = 0 giving its base's output exactly.
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { conv2d, sum } from "../../engine/ops.ts";
import { mul } from "../../engine/math.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import {
  adapterShapes,
  initAdapters,
  type LoraSpec,
  loraTargets,
  loraWeight,
  mergeHost,
  mergeTraced,
} from "../../models/lora.ts";
import { unet } from "../../models/unet.ts";
import { checkGrad } from "../helpers/grad_check.ts";
import { randomTinyUnet, TINY_UNET } from "../helpers/tiny_unet.ts";

Deno.test("loraWeight: gradients of a linear weight's merge against finite differences", () => {
  const r = checkGrad(
    "lora linear",
    [{ shape: [5, 3] }, { shape: [2, 3] }, { shape: [5, 2] }],
    ([w, a, b]) => loraWeight(w, a, b, 0.75),
    { order: 2 },
  );
  assert.ok(r.checked > 0);
});

Deno.test("loraWeight: gradients of a conv weight's merge, used by a conv, against finite differences", () => {
  const specs = [{ shape: [1, 3, 5, 5] }, { shape: [4, 3, 3, 3] }, { shape: [2, 3, 3, 3] }, { shape: [4, 2, 1, 1] }];
  const r = checkGrad("lora conv", specs, ([x, w, a, b]) => conv2d(x, loraWeight(w, a, b, 2), { pad: 1 }), {
    order: 2,
  });
  assert.ok(r.checked > 0);
});

Deno.test("adapterShapes, loraTargets: A [rank, ...rest], B [out, rank(, 1, 1)]; only 2-D and 4-D weights", () => {
  const shapes = { "a.w": [6, 4], "a.b": [6], "c.w": [8, 3, 3, 3], "n.w": [8] };
  const targets = loraTargets(shapes, [/w$/]);
  assert.deepEqual(Object.keys(targets), ["a.w", "c.w"]);
  assert.deepEqual(adapterShapes({ rank: 2, alpha: 2, targets }), {
    "a.w.lora_A": [2, 4],
    "a.w.lora_B": [6, 2],
    "c.w.lora_A": [2, 3, 3, 3],
    "c.w.lora_B": [8, 2, 1, 1],
  });
});

Deno.test("initAdapters: B = 0, A within ±1/√fan-in, the same draws for a weight whatever the other targets", () => {
  const one: LoraSpec = { rank: 2, alpha: 2, targets: { "c.w": [8, 3, 3, 3] } };
  const two: LoraSpec = { rank: 2, alpha: 2, targets: { "a.w": [6, 4], "c.w": [8, 3, 3, 3] } };
  const x = initAdapters(one, new Rng(1)), y = initAdapters(two, new Rng(1));
  assert.deepEqual(x["c.w.lora_A"], y["c.w.lora_A"]);
  assert.ok(y["a.w.lora_B"].every((v) => v === 0) && y["c.w.lora_B"].every((v) => v === 0));
  const bound = 1 / Math.sqrt(27);
  assert.ok(x["c.w.lora_A"].every((v) => Math.abs(v) <= bound) && x["c.w.lora_A"].some((v) => v !== 0));
});

Deno.test("mergeHost agrees with mergeTraced, and leaves untargeted weights the base's own arrays", () => {
  const spec: LoraSpec = { rank: 3, alpha: 1.5, targets: { "l.w": [4, 5], "c.w": [2, 3, 3, 3] } };
  const rng = new Rng(7);
  const base = { "l.w": rng.fold(1).normal(20), "c.w": rng.fold(2).normal(54), "c.b": rng.fold(3).normal(2) };
  const adapters = Object.fromEntries(
    Object.entries(adapterShapes(spec)).map(([k, s]) => [k, rng.fold(k).normal(s.reduce((a, b) => a * b, 1))]),
  );
  const host = mergeHost(base, adapters, spec);
  assert.equal(host["c.b"], base["c.b"]);
  const tr = new Trace();
  const shapes: Record<string, number[]> = { "l.w": [4, 5], "c.w": [2, 3, 3, 3], "c.b": [2], ...adapterShapes(spec) };
  const inputs = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const merged = mergeTraced(inputs, inputs, spec);
  const g = tr.build({ l: merged["l.w"], c: merged["c.w"] });
  const all: Record<string, Float32Array> = { ...base, ...adapters };
  const r = evaluate(g, Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, { data: all[k], shape: s }])));
  for (const [out, path] of [["l", "l.w"], ["c", "c.w"]]) {
    r[out].forEach((v, i) => assert.ok(Math.abs(v - host[path][i]) <= 1e-5 * Math.max(1, Math.abs(v)), path));
  }
});

Deno.test("a LoRA UNet with B = 0 gives its base's output exactly", () => {
  const u = unet.params.parse({ ...TINY_UNET, size: 16 });
  const shapes = unet.shapes(u), weights = randomTinyUnet(3);
  const spec: LoraSpec = { rank: 2, alpha: 4, targets: loraTargets(shapes, [/conv[12]\.w$/, /self\.[qkvo]$/]) };
  const adapters = initAdapters(spec, new Rng(5));
  const tr = new Trace();
  const base = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const ad = Object.fromEntries(Object.entries(adapterShapes(spec)).map(([k, s]) => [k, tr.input(k, s)]));
  const ins = { x: tr.input("x", [1, 3, 16, 16]), t: tr.input("t", [1]) };
  const ctx = { tokens: tr.input("tokens", [1, 32, 64]), pooled: tr.input("pooled", [1, 64]) };
  const teacher = unet.apply(u, base, { ...ins, ...ctx }).out;
  const student = unet.apply(u, mergeTraced(base, ad, spec), { ...ins, ...ctx }).out;
  // The adapters must reach the output (a B that is not zero would move it), or the equality says nothing.
  const touched = sum(mul(student, student));
  const g = tr.build({ teacher, student, touched });
  const rng = new Rng(9);
  const feeds: Record<string, { data: ArrayLike<number>; shape: number[] }> = {};
  for (const [k, s] of Object.entries(shapes)) feeds[k] = { data: weights[k], shape: s };
  for (const [k, s] of Object.entries(adapterShapes(spec))) feeds[k] = { data: adapters[k], shape: s };
  feeds.x = { data: rng.fold("x").normal(768), shape: [1, 3, 16, 16] };
  feeds.t = { data: [500], shape: [1] };
  feeds.tokens = { data: rng.fold("tok").normal(2048), shape: [1, 32, 64] };
  feeds.pooled = { data: rng.fold("pool").normal(64), shape: [1, 64] };
  const r = evaluate(g, feeds);
  assert.deepEqual(r.student, r.teacher);
  assert.ok(r.teacher.some((v) => v !== 0));
  const moved = { ...adapters };
  for (const k of Object.keys(moved)) if (k.endsWith("lora_B")) moved[k] = moved[k].map(() => 0.1);
  for (const [k, s] of Object.entries(adapterShapes(spec))) feeds[k] = { data: moved[k], shape: s };
  const r2 = evaluate(g, feeds);
  assert.notDeepEqual(r2.student, r.teacher);
});
