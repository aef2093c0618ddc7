// The `dmd` stage (DMD's distribution-matching loss) on tiny tensors against plain float64 loops: the surrogate's
// value and its gradient in x̂, g / N with g = (μ_fake − μ_real) / mean|x̂ − μ_real|, for ε- and v-prediction; no
// gradient to either model; and the plan-time checks.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { vjp } from "../../engine/grad.ts";
import { add, mul } from "../../engine/math.ts";
import { reshape } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { StageTypeError } from "../../pipeline/stage.ts";
import { dmd } from "../../stages/dmd.ts";
import { lcg, randn } from "../helpers/grad_check.ts";
import { allClose, Bench, close, drawsFrom, fakeCtx, TOL } from "../helpers/stage_bench.ts";

const SCHED = makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true });
const XS = [2, 1, 2, 2], N = 8;

for (const prediction of ["eps", "v"] as const) {
  Deno.test(`dmd (${prediction}): surrogate value and ∂L/∂x̂ = (μ_fake − μ_real) / (N·mean|x̂ − μ_real|)`, () => {
    const rand = lcg(prediction === "eps" ? 51 : 52);
    const xhat = randn(N, rand), eps = randn(N, rand), u = [0.15, 0.85];
    const w = { real: 0.7, fake: 0.9 }, c = { real: randn(N, rand), fake: randn(N, rand) };

    const b = new Bench();
    const x = b.input("xhat", XS, xhat), tokens = b.input("tokens", [2, 3, 2], randn(12, rand));
    const params: Record<string, Tensor> = {};
    const net = (m: "real" | "fake") => {
      const wm = params[`${m}.w`] = b.input(`${m}.w`, [1], [w[m]]);
      const cm = params[`${m}.c`] = b.input(`${m}.c`, XS, c[m]);
      return (ins: Record<string, Tensor>) => {
        assert.equal(ins.tokens, tokens, `${m} gets the caption embedding`);
        return { out: add(add(mul(ins.x, wm), cm), mul(reshape(ins.t, [2, 1, 1, 1]), 0.001)) };
      };
    };
    const { ctx } = fakeCtx(b.tr, { teacher: net("real"), fake_net: net("fake") }, drawsFrom(b, { t: u, eps }));
    const p = dmd.params.parse({ real: "teacher", fake: "fake_net", prediction });
    const { loss } = dmd.trace!(ctx, p, { x0_hat: x, tokens });
    const [gx, ...gm] = vjp(loss, [x, params["real.w"], params["real.c"], params["fake.w"], params["fake.c"]]);
    const r = b.run({ loss, gx, ...Object.fromEntries(gm.map((g, i) => [`g${i}`, g])) });

    // t = ⌊u·961⌋ + 20 (defaults t_min 20, t_max 980), x_t = α x̂ + σ ε, each model's clean-image estimate.
    const t = u.map((v) => Math.floor(v * 961 + 20));
    const al = t.map((s) => Math.sqrt(SCHED.alphasCumprod[s])),
      si = t.map((s) => Math.sqrt(1 - SCHED.alphasCumprod[s]));
    const xt = xhat.map((v, i) => al[i >> 2] * v + si[i >> 2] * eps[i]);
    const mu = (m: "real" | "fake") =>
      xt.map((v, i) => {
        const o = w[m] * v + c[m][i] + 0.001 * t[i >> 2], a = al[i >> 2], s = si[i >> 2];
        return prediction === "eps" ? (v - s * o) / a : a * v - s * o;
      });
    const real = mu("real"), fake = mu("fake");
    const norm = [0, 1].map((e) =>
      xhat.slice(4 * e, 4 * e + 4).reduce((a, v, j) => a + Math.abs(v - real[4 * e + j]), 0) / 4
    );
    const g = fake.map((f, i) => (f - real[i]) / (norm[i >> 2] + 1e-6));
    close(r.loss[0], 0.5 * g.reduce((a, v) => a + v * v, 0) / N, TOL, "loss");
    allClose(r.gx, g.map((v) => v / N), TOL, "∂L/∂x̂");
    for (let i = 0; i < gm.length; i++) {
      assert.ok(Array.from(r[`g${i}`]).every((v) => v === 0), "a model gets a gradient from the dmd loss");
    }
  });
}

Deno.test("dmd: the real and fake models must be two declared unets, and t_min ≤ t_max < T", () => {
  const unet = (name: string) => ({ name, kind: "unet", params: {}, shapes: {} });
  const models = { teacher: unet("teacher"), fake: unet("fake"), mlp: { ...unet("mlp"), kind: "mlp" } };
  const inputs = { x0_hat: { dtype: "f32" as const, shape: XS } };
  const typesOf = (params: Record<string, unknown>) => () =>
    dmd.types({ params: dmd.params.parse({ real: "teacher", fake: "fake", ...params }), inputs, models, datasets: {} });
  assert.deepEqual(typesOf({})(), { loss: { dtype: "f32", shape: [] } });
  assert.throws(
    typesOf({ fake: "teacher" }),
    (e: Error) => e instanceof StageTypeError && /two models/.test(e.message),
  );
  assert.throws(
    typesOf({ fake: "mlp" }),
    (e: Error) => e instanceof StageTypeError && /not a denoiser/.test(e.message),
  );
  assert.throws(typesOf({ t_max: 1000 }), (e: Error) => e instanceof StageTypeError && /t_max < T/.test(e.message));
});
