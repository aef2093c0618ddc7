// ADD's distillation and noising on tiny tensors, against values computed here with plain loops in float64: the
// distillation weightings (exponential, SDS, NFSD: values, gradients in x̂, and the teacher's stop-gradient), the
// teacher's guidance in the target, and add_noise (the zero-terminal-SNR check at plan time, x_s = ε exactly at T−1,
// t only from the student timesteps). Stages are traced with a fake TraceContext whose models are small functions
// and whose random draws are graph inputs fed here, then run on the reference executor.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { createExecutor } from "../../engine/executors/auto.ts";
import { vjp } from "../../engine/grad.ts";
import { add, mul } from "../../engine/math.ts";
import { reshape } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { ConfigError, loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { StageTypeError } from "../../pipeline/stage.ts";
import { addDistill } from "../../stages/add/add_distill.ts";
import { addNoise } from "../../stages/add/add_noise.ts";
import { lcg, randn } from "../helpers/grad_check.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
import { allClose, Bench, close, drawsFrom, fakeCtx, TOL } from "../helpers/stage_bench.ts";

const meanOf = (xs: ArrayLike<number>) => Array.from(xs).reduce((a, b) => a + b, 0) / xs.length;

// ---------------------------------------------------------------------------------------------------------------
// Distillation

const SCHED = makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true });
const XS = [2, 1, 2, 2], N = 8;

interface DistillCase {
  xhat: number[];
  eps: number[];
  u: number[];
  tw: number;
  cc: number[];
  cu: number[];
}

/** The fake teacher: out = w·x + c + 0.001·t, with c depending on which caption embedding it was given. */
function teacherRef(c: DistillCase, x: number[], t: number[], cond: boolean) {
  return x.map((v, i) => c.tw * v + (cond ? c.cc : c.cu)[i] + 0.001 * t[Math.floor(i / 4)]);
}

function traceDistill(c: DistillCase, params: Record<string, unknown>) {
  const b = new Bench();
  const xhat = b.input("xhat", XS, c.xhat), tw = b.input("teacher.w", [1], [c.tw]);
  const cc = b.input("teacher.cc", XS, c.cc), cu = b.input("teacher.cu", XS, c.cu);
  const tokens = b.input("tokens", [2, 3, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  const emptyTokens = b.input("empty_tokens", [2, 3, 2], new Array(12).fill(0.5));
  const seen: Tensor[] = [];
  const { ctx, metrics } = fakeCtx(b.tr, {
    teacher: (ins) => {
      assert.ok(ins.tokens === tokens || ins.tokens === emptyTokens, "teacher gets the caption embedding");
      seen.push(ins.tokens);
      const cond = ins.tokens === tokens ? cc : cu;
      return { out: add(add(mul(ins.x, tw), cond), mul(reshape(ins.t, [2, 1, 1, 1]), 0.001)) };
    },
  }, drawsFrom(b, { t: c.u, eps: c.eps }));
  const p = addDistill.params.parse({ model: "teacher", ...params });
  const ins: Record<string, Tensor> = { x0_hat: xhat, tokens };
  if (p.weighting === "nfsd" || p.guidance > 1) ins.empty_tokens = emptyTokens;
  const { loss } = addDistill.trace!(ctx, p, ins);
  const [gx, gw, gc] = vjp(loss, [xhat, tw, cc]);
  assert.deepEqual(Object.keys(metrics), []);
  return { r: b.run({ loss, gx, gw, gc }), calls: seen.length };
}

/** t, α_t, σ_t and x̂_t = α x̂ + σ ε' of a case, with t = ⌊u·(t_max − t_min + 1)⌋ + t_min (defaults 20, 980). */
function renoise(c: DistillCase) {
  const t = c.u.map((u) => Math.floor(u * 961 + 20));
  const alpha = t.map((s) => Math.sqrt(SCHED.alphasCumprod[s])),
    sigma = t.map((s) => Math.sqrt(1 - SCHED.alphasCumprod[s]));
  const xt = c.xhat.map((v, i) => alpha[i >> 2] * v + sigma[i >> 2] * c.eps[i]);
  return { t, alpha, sigma, xt };
}

function distillCase(seed: number): DistillCase {
  const rand = lcg(seed);
  // u = 0.1 gives t = 116 (< 200, NFSD's low-noise branch); 0.9 gives t = 884.
  return { xhat: randn(N, rand), eps: randn(N, rand), u: [0.1, 0.9], tw: 0.7, cc: randn(N, rand), cu: randn(N, rand) };
}

for (const prediction of ["eps", "v"] as const) {
  Deno.test(`add_distill (${prediction} teacher): exponential and sds values and gradients; no gradient to the teacher`, () => {
    const c = distillCase(prediction === "eps" ? 31 : 32);
    const { t, alpha, sigma, xt } = renoise(c);
    const out = teacherRef(c, xt, t, true);
    const at = (i: number) => i >> 2;
    // The teacher's ε and x̂ estimates from its output, by the parameterisation's definitions.
    const epsHat = out.map((o, i) => (prediction === "eps" ? o : sigma[at(i)] * xt[i] + alpha[at(i)] * o));
    const x0Hat = out.map((o, i) =>
      prediction === "eps" ? (xt[i] - sigma[at(i)] * o) / alpha[at(i)] : alpha[at(i)] * xt[i] - sigma[at(i)] * o
    );
    const perEx = [0, 1].map((b) => meanOf(c.xhat.slice(4 * b, 4 * b + 4).map((v, j) => (v - x0Hat[4 * b + j]) ** 2)));
    for (const weighting of ["exponential", "sds"] as const) {
      const { r, calls } = traceDistill(c, { weighting, prediction });
      assert.equal(calls, 1);
      const cw = (b: number) => (weighting === "exponential" ? alpha[b] : alpha[b] * sigma[b] / 2);
      close(r.loss[0], (cw(0) * perEx[0] + cw(1) * perEx[1]) / 2, TOL, `${weighting} loss`);
      // The target is a constant: d/dx̂ of c(t)·mean((x̂ − x̂_ψ)²) over all N elements.
      const want = c.xhat.map((v, i) => (2 * cw(at(i)) * (v - x0Hat[i])) / N);
      allClose(r.gx, want, TOL, `${weighting} ∂L/∂x̂`);
      if (weighting === "sds") {
        // …which for c = α σ / 2 is the score-distillation gradient σ_t² (ε̂_ψ − ε') / N.
        allClose(r.gx, epsHat.map((e, i) => (sigma[at(i)] ** 2 * (e - c.eps[i])) / N), TOL, "sds = σ²(ε̂ − ε')/N");
      }
      assert.deepEqual(
        [r.gw[0], ...r.gc].map(Math.abs),
        new Array(N + 1).fill(0),
        `${weighting}: teacher gets a gradient`,
      );
    }
  });
}

Deno.test("add_distill nfsd: gradient σ_t² δ / N with δ = s(ε_c − ε_u) + [t<200] ε_u; no gradient to the teacher", () => {
  for (const prediction of ["eps", "v"] as const) {
    const c = distillCase(prediction === "eps" ? 41 : 42);
    const { t, alpha, sigma, xt } = renoise(c);
    assert.ok(t[0] < 200 && t[1] >= 200, `t = ${t}`);
    const eps = (cond: boolean) =>
      teacherRef(c, xt, t, cond).map((o, i) => (prediction === "eps" ? o : sigma[i >> 2] * xt[i] + alpha[i >> 2] * o));
    const ec = eps(true), eu = eps(false), s = 3.5;
    const delta = ec.map((e, i) => s * (e - eu[i]) + (t[i >> 2] < 200 ? eu[i] : 0));
    const g = delta.map((d, i) => (sigma[i >> 2] ** 2 * d) / N);
    const { r, calls } = traceDistill(c, { weighting: "nfsd", prediction, nfsd_scale: s });
    assert.equal(calls, 2, "nfsd asks the teacher with and without the caption");
    allClose(r.gx, g, TOL, `nfsd (${prediction}) ∂L/∂x̂`);
    close(r.loss[0], g.reduce((a, v, i) => a + v * c.xhat[i], 0), TOL, "nfsd surrogate value");
    assert.deepEqual([r.gw[0], ...r.gc].map(Math.abs), new Array(N + 1).fill(0), "nfsd: teacher gets a gradient");
  }
});

Deno.test("add_distill with guidance s: target from o_∅ + s(o_c − o_∅), by hand; s = 1 is the unguided target", () => {
  for (const prediction of ["eps", "v"] as const) {
    const c = distillCase(prediction === "eps" ? 51 : 52);
    const { t, alpha, sigma, xt } = renoise(c);
    const oc = teacherRef(c, xt, t, true), ou = teacherRef(c, xt, t, false), s = 2.5;
    const at = (i: number) => i >> 2;
    const x0Of = (o: number[]) =>
      o.map((v, i) =>
        prediction === "eps" ? (xt[i] - sigma[at(i)] * v) / alpha[at(i)] : alpha[at(i)] * xt[i] - sigma[at(i)] * v
      );
    // Guidance applied to the x̂ estimates themselves: the same target as guiding the network's output.
    const x0c = x0Of(oc), x0u = x0Of(ou), x0g = x0c.map((v, i) => x0u[i] + s * (v - x0u[i]));
    const perEx = [0, 1].map((b) => meanOf(c.xhat.slice(4 * b, 4 * b + 4).map((v, j) => (v - x0g[4 * b + j]) ** 2)));
    const { r, calls } = traceDistill(c, { prediction, guidance: s });
    assert.equal(calls, 2, "guidance asks the teacher with and without the caption");
    close(r.loss[0], (alpha[0] * perEx[0] + alpha[1] * perEx[1]) / 2, TOL, `guided loss (${prediction})`);
    allClose(r.gx, c.xhat.map((v, i) => (2 * alpha[at(i)] * (v - x0g[i])) / N), TOL, `guided ∂L/∂x̂ (${prediction})`);
    assert.deepEqual([r.gw[0], ...r.gc].map(Math.abs), new Array(N + 1).fill(0), "guided: teacher gets a gradient");
    const plain = traceDistill(c, { prediction, guidance: 1 });
    assert.equal(plain.calls, 1, "guidance 1 runs the teacher once");
    const perC = [0, 1].map((b) => meanOf(c.xhat.slice(4 * b, 4 * b + 4).map((v, j) => (v - x0c[4 * b + j]) ** 2)));
    close(plain.r.loss[0], (alpha[0] * perC[0] + alpha[1] * perC[1]) / 2, TOL, `unguided loss (${prediction})`);
  }
});

Deno.test("add_distill: guidance > 1 without the empty caption's embedding is rejected", () => {
  const p = addDistill.params.parse({ model: "teacher", guidance: 3 });
  const unet = { name: "teacher", kind: "unet", params: {}, shapes: {} };
  assert.throws(
    () =>
      addDistill.types({
        params: p,
        inputs: { x0_hat: { dtype: "f32", shape: XS } },
        models: { teacher: unet },
        datasets: {},
      }),
    (e: Error) => e instanceof StageTypeError && /guidance > 1 needs the empty caption's embedding/.test(e.message),
  );
});

Deno.test("add_distill: nfsd without the empty caption's embedding is rejected", () => {
  const p = addDistill.params.parse({ model: "teacher", weighting: "nfsd" });
  const unet = { name: "teacher", kind: "unet", params: {}, shapes: {} };
  assert.throws(
    () =>
      addDistill.types({
        params: p,
        inputs: { x0_hat: { dtype: "f32", shape: XS } },
        models: { teacher: unet },
        datasets: {},
      }),
    (e: Error) => e instanceof StageTypeError && /needs the empty caption's embedding/.test(e.message),
  );
});

// ---------------------------------------------------------------------------------------------------------------
// add_noise

Deno.test("add_noise: a schedule without zero terminal SNR is rejected when the pipeline is planned", () => {
  const file = `${ROOT}configs/add_tiny.yaml`, text = Deno.readTextFileSync(file);
  planPipeline(loadConfig(file, text)); // the tiny config itself plans
  const bad = loadConfig(file, text, ["stages.noise.params.schedule.zeroTerminalSnr=false"]);
  assert.throws(() => planPipeline(bad), (e: Error) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.lines.length, 1, e.message);
    assert.match(
      e.lines[0],
      /^\S+: stage "noise" \(add_noise\): ᾱ at the largest student timestep 999 is 2\.4\d*e-9, not 0: use schedule\.zeroTerminalSnr and include T−1 = 999/,
    );
    return true;
  });
  // Leaving out T−1 is caught the same way.
  const p = addNoise.params.parse({ timesteps: [500, 0] });
  assert.throws(
    () =>
      addNoise.types({ params: p, inputs: { x0: { dtype: "f32", shape: [2, 3, 4, 4] } }, models: {}, datasets: {} }),
    (e: Error) => e instanceof StageTypeError && /largest student timestep 500 is .*, not 0/.test(e.message),
  );
});

function traceNoise(u: number[], params: Record<string, unknown>, shape: number[]) {
  const rand = lcg(77), n = shape.reduce((a, b) => a * b, 1);
  const x0 = randn(n, rand), eps = randn(n, rand);
  const b = new Bench();
  const { ctx } = fakeCtx(b.tr, {}, drawsFrom(b, { s: u, eps }));
  const out = addNoise.trace!(ctx, addNoise.params.parse(params), { x0: b.input("x0", shape, x0) });
  return { b, out, x0, eps };
}

Deno.test("add_noise: t only from the student timesteps, x_s = α_t x0 + σ_t ε, and x_s = ε exactly at T−1", async () => {
  // u on a grid over [0, 1), with the largest value the host generator can draw (1 − 2⁻²⁴).
  const u = [...Array.from({ length: 31 }, (_, i) => i / 31), 1 - 2 ** -24];
  for (const [params, want] of [[{}, [999, 749, 499, 249]], [{ timesteps: [999, 500, 10] }, [999, 500, 10]]] as const) {
    const shape = [u.length, 1, 2, 2];
    const { b, out, x0, eps } = traceNoise(u, params, shape);
    const r = b.run(out);
    assert.deepEqual([...new Set(r.t)].sort((p, q) => q - p), [...want], `t drawn ${[...r.t]}`);
    r.t.forEach((t, i) => {
      const a = SCHED.alphasCumprod[t];
      close(r.alpha[i], Math.sqrt(a), TOL, `α at t=${t}`);
      close(r.sigma[i], Math.sqrt(1 - a), TOL, `σ at t=${t}`);
      for (let j = 0; j < 4; j++) {
        const k = i * 4 + j;
        close(r.x_s[k], Math.sqrt(a) * x0[k] + Math.sqrt(1 - a) * eps[k], TOL, `x_s[${k}]`);
        if (t === 999) assert.equal(r.x_s[k], eps[k], `reference: x_s at T−1 is not ε exactly`);
      }
    });
  }
  // The same on a float32 executor: at T−1 the student's input is exactly the noise it will get at inference.
  const { b, out, eps } = traceNoise(u, {}, [u.length, 3, 2, 2]);
  const ex = await createExecutor("cpu");
  try {
    const prep = await ex.prepare(b.tr.build({ x_s: out.x_s, t: out.t }));
    const bufs = Object.fromEntries(
      Object.entries(b.feeds).map(([k, f]) => [k, ex.upload(Float32Array.from(f.data), f.shape, "f32")]),
    );
    const res = await prep.run(bufs);
    const xs = await ex.read(res.x_s), ts = await ex.read(res.t);
    const eps32 = Float32Array.from(eps);
    let hits = 0;
    ts.forEach((t, i) => {
      if (t !== 999) return;
      hits++;
      for (let j = 0; j < 12; j++) assert.equal(xs[i * 12 + j], eps32[i * 12 + j], `cpu: x_s at T−1 is not ε exactly`);
    });
    assert.ok(hits >= 7, `${hits} examples at T−1`);
    for (const x of [...Object.values(bufs), ...Object.values(res)]) ex.dispose(x);
    await prep.dispose();
  } finally {
    await ex.close();
  }
});
