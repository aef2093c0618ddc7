// Frozen weights as graph constants (issue 15): `withConstants` turns named inputs into constants that compute what
// feeding them does (bit for bit on the float64 reference), `frozenWeights` declares a frozen model either way by the
// executor's `constantLimit`, and a UNet sampler on cpu gives the same output with its weights as constants (which
// onnxruntime folds and runs in its NCHWc layout, so to float rounding) as with them resident inputs.
import assert from "node:assert/strict";
import { createExecutor } from "../../engine/executors/auto.ts";
import { constantLimit } from "../../engine/executors/executor.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { withConstants } from "../../engine/ir.ts";
import { conv2d, matmul, reshape } from "../../engine/ops.ts";
import { chunkLayout, frozenWeights, layoutOf } from "../../engine/pack.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { unet } from "../../models/unet.ts";

const rng = new Rng(11);
const X = rng.fold("x").normal(2 * 3 * 5 * 5), W = rng.fold("w").normal(4 * 3 * 3 * 3), M = rng.fold("m").normal(4 * 6);

Deno.test("withConstants: the constants compute what feeding the inputs does, bit for bit; bad uses are one error", () => {
  const tr = new Trace();
  const x = tr.input("x", [2, 3, 5, 5]), w = tr.input("w", [4, 3, 3, 3]), m = tr.input("m", [25, 6]);
  const y = matmul(reshape(conv2d(x, w, { pad: 1 }), [2, 4, 25]), m);
  const g = tr.build({ y });
  const feeds = {
    x: { data: X, shape: [2, 3, 5, 5] },
    w: { data: W, shape: [4, 3, 3, 3] },
    m: { data: rng.fold("m2").normal(25 * 6), shape: [25, 6] },
  };
  const want = evaluate(g, feeds).y;
  const c = withConstants(g, new Map([["w", W], ["m", feeds.m.data]]));
  assert.equal(c.nodes.length, g.nodes.length);
  assert.deepEqual(c.nodes.filter((n) => n.op === "input").map((n) => n.op === "input" && n.attrs.name), ["x"]);
  assert.deepEqual(evaluate(c, { x: feeds.x }).y, want);
  assert.throws(() => withConstants(g, new Map([["v", W]])), { message: 'withConstants: no input named "v"' });
  assert.throws(() => withConstants(g, new Map([["w", M]])), {
    message: 'withConstants: "w" is f32[4,3,3,3], given 24 f32 values',
  });
});

Deno.test("frozenWeights: constants within the limit, packed inputs with their data over it; the same values", () => {
  const shapes = { a: [4, 3, 3, 3], b: [4, 6] };
  const weights = { a: W, b: M };
  const chunks = chunkLayout(layoutOf(shapes), 110);
  assert.equal(chunks.length, 2);
  const outputs = (limit: number) => {
    const tr = new Trace();
    const f = frozenWeights(tr, "weights", chunks, weights, limit);
    const g = tr.build({ a: f.params.a, b: f.params.b });
    const feeds = Object.fromEntries(f.uploads.map(([n, d], i) => [n, { data: d, shape: [chunks[i].total] }]));
    return { f, out: evaluate(g, feeds) };
  };
  const inside = outputs(132), over = outputs(131);
  assert.deepEqual(inside.f.uploads, []);
  assert.deepEqual(over.f.uploads.map(([n]) => n), ["weights.0", "weights.1"]);
  for (const k of ["a", "b"] as const) {
    assert.deepEqual(inside.out[k], Float64Array.from(weights[k]), k);
    assert.deepEqual(over.out[k], Float64Array.from(weights[k]), k);
  }
});

Deno.test("constantLimit: the executor's, none at ADD_CONSTANT_WEIGHTS=0, all at 1, one line for a bad value", () => {
  assert.equal(constantLimit({ constantLimit: 77 }, ""), 77);
  assert.equal(constantLimit({}, undefined), 0);
  assert.equal(constantLimit({ constantLimit: 77 }, "0"), 0);
  assert.equal(constantLimit({}, "1"), Infinity);
  assert.throws(() => constantLimit({}, "yes"), { message: "ADD_CONSTANT_WEIGHTS=yes: expected 0 or 1" });
});

Deno.test({
  name: "UNetRunner on cpu: weights as constants give the resident inputs' output to float rounding, no buffers kept",
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
    // Random everywhere (the initialiser zeroes the output layer, which would hide any difference).
    const weights = Object.fromEntries(
      Object.entries(unet.shapes(u)).map(([k, s]) => [k, new Rng(5).fold(k).normal(s.reduce((a, b) => a * b, 1))]),
    );
    const x = new Rng(6).normal(2 * 3 * 8 * 8),
      text = { tokens: new Rng(7).normal(2 * 3 * 4), pooled: new Float32Array(0), length: 3 };
    const ex = await createExecutor("cpu");
    const before = Deno.env.get("ADD_CONSTANT_WEIGHTS");
    const run = async (v: string) => {
      Deno.env.set("ADD_CONSTANT_WEIGHTS", v);
      const live = ex.liveBuffers();
      const r = await UNetRunner.create(ex, u, weights, 2, 3);
      const kept = ex.liveBuffers() - live;
      const out = await r.run(x, 500, text);
      await r.dispose();
      return { out, kept };
    };
    try {
      const inputs = await run("0"), constants = await run("");
      assert.ok(inputs.kept >= 1, "resident weights");
      assert.equal(constants.kept, 0, "constants keep no buffer");
      const scale = Math.max(...inputs.out.map(Math.abs));
      const err = Math.max(...inputs.out.map((v, i) => Math.abs(v - constants.out[i])));
      assert.ok(err <= 1e-5 * scale, `max abs difference ${err} (scale ${scale})`);
      assert.notDeepEqual(constants.out, new Float32Array(constants.out.length));
    } finally {
      if (before === undefined) Deno.env.delete("ADD_CONSTANT_WEIGHTS");
      else Deno.env.set("ADD_CONSTANT_WEIGHTS", before);
      await ex.close();
    }
  },
});
