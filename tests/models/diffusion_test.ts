// Schedules, samplers and the traced diffusion formulas. The samplers run on a Gaussian toy, x0 ~ N(μ, s²) per
// dimension, whose optimal denoiser is closed form: x_t ~ N(αμ, V) with V = α²s² + σ², and
// E[x0 | x_t] = μ + (α s²/V)(x_t − αμ). What each sampler must then return is derived independently below.
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import {
  alphaBarAt,
  alphaSigma,
  cosineBetas,
  linearBetas,
  makeSchedule,
  rescaleZeroTerminalSnr,
  scaledLinearBetas,
  type Schedule,
  scheduleFromBetas,
  spacedTimesteps,
  studentTimesteps,
  tFromVeSigma,
  veSigmaAt,
} from "../../models/diffusion/schedules.ts";
import {
  addNoise,
  cfg,
  convert,
  type Denoiser,
  dropCaptions,
  eulerLevels,
  type Prediction,
  sampleAdd,
  sampleDdim,
  sampleDdpm,
  sampleEuler,
  toX0,
} from "../../models/diffusion/samplers.ts";
import {
  epsFromV,
  epsFromX0,
  noiseTraced,
  toX0Traced,
  vTarget,
  x0FromEps,
  x0FromV,
} from "../../models/diffusion/traced.ts";

const MU = [0.3, -1.2, 2.0, 0.5], S = [0.5, 1.0, 0.2, 1.5], D = MU.length;
const ZT = makeSchedule({ kind: "scaled_linear", zeroTerminalSnr: true });
const SD = makeSchedule({ kind: "scaled_linear" });

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

/** The optimal denoiser of N(μ, s²) per dimension (dimension = index mod D), in parameterisation `p`. */
function gaussian(schedule: Schedule, p: Prediction, mu = MU, s = S, calls?: { t: number; x: Float32Array }[]) {
  const d: Denoiser = {
    prediction: p,
    predict(x, t, level) {
      calls?.push({ t, x });
      // The level must be the schedule's at t: exactly at integer t, through log σ̃ interpolation otherwise.
      const ab = alphaBarAt(schedule, t), a2 = level.alpha ** 2;
      if (Math.abs(a2 - ab) > 1e-12 + 1e-9 * ab) throw new Error(`level α² = ${a2} but ᾱ(${t}) = ${ab}`);
      const { alpha: a, sigma: sg } = level, out = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) {
        const m = mu[i % D], v = s[i % D] ** 2, x0 = m + (a * v / (a * a * v + sg * sg)) * (x[i] - a * m);
        const eps = (x[i] - a * x0) / sg;
        out[i] = p === "x0" ? x0 : p === "eps" ? eps : a * eps - sg * x0;
      }
      return Promise.resolve(out);
    },
  };
  return d;
}

const noise = (n: number, seed: number) => new Rng(seed).normal(n);

Deno.test("schedules: β ranges, ᾱ strictly decreasing in (0, 1), SD's terminal √ᾱ, cosine's closed form", () => {
  const lin = linearBetas(1000), sl = scaledLinearBetas(1000), cos = cosineBetas(1000);
  assert.equal(lin[0], 1e-4);
  assert.ok(Math.abs(lin[999] - 0.02) < 1e-15);
  assert.ok(Math.abs(sl[0] - 0.00085) < 1e-15 && Math.abs(sl[999] - 0.012) < 1e-15);
  for (const betas of [lin, sl, cos]) {
    const ab = scheduleFromBetas(betas).alphasCumprod;
    for (let t = 0; t < 1000; t++) assert.ok(ab[t] > 0 && ab[t] < 1 && (t === 0 || ab[t] < ab[t - 1]), `t=${t}`);
  }
  // Lin et al. 2024, Table 1: Stable Diffusion's schedule ends at √ᾱ_T = 0.068265 (SNR 0.004682), not 0.
  assert.ok(Math.abs(Math.sqrt(SD.alphasCumprod[999]) - 0.068265) < 1e-6, `${Math.sqrt(SD.alphasCumprod[999])}`);
  // Nichol & Dhariwal eq. 17: ᾱ_t = f(t)/f(0) wherever the β clip at 0.999 has not acted (it does only at the end).
  const f = (tau: number) => Math.cos(((tau + 0.008) / 1.008) * Math.PI / 2) ** 2;
  const cab = scheduleFromBetas(cos).alphasCumprod;
  for (let t = 0; t < 990; t++) assert.ok(Math.abs(cab[t] - f((t + 1) / 1000) / f(0)) < 1e-12, `t=${t}`);
  assert.equal(cos[999], 0.999);
});

Deno.test("rescaleZeroTerminalSnr: ᾱ_T exactly 0, ᾱ_1 kept, √ᾱ an affine image of the original", () => {
  for (const betas of [linearBetas(1000), scaledLinearBetas(1000), cosineBetas(1000), linearBetas(10, 0.01, 0.3)]) {
    const T = betas.length, before = scheduleFromBetas(betas).alphasCumprod;
    const rb = rescaleZeroTerminalSnr(betas), after = scheduleFromBetas(rb).alphasCumprod;
    assert.equal(after[T - 1], 0);
    assert.equal(rb[T - 1], 1);
    assert.ok(Math.abs(after[0] - before[0]) <= 4e-16, `${after[0]} vs ${before[0]}`);
    for (let t = 1; t < T; t++) assert.ok(after[t] < after[t - 1], `not decreasing at ${t}`);
    // Shift-and-scale of √ᾱ (Lin et al. eq. in Algorithm 1), written from its definition: a·(√ᾱ − √ᾱ_T) with a fixed.
    const a = Math.sqrt(after[0]) / (Math.sqrt(before[0]) - Math.sqrt(before[T - 1]));
    for (let t = 0; t < T; t++) {
      assert.ok(Math.abs(Math.sqrt(after[t]) - a * (Math.sqrt(before[t]) - Math.sqrt(before[T - 1]))) < 1e-12);
    }
  }
  assert.deepEqual(ZT.alphasCumprod, scheduleFromBetas(rescaleZeroTerminalSnr(scaledLinearBetas())).alphasCumprod);
});

Deno.test("makeSchedule rejects unknown keys and β bounds on cosine, in one line", () => {
  assert.throws(() => makeSchedule({ kind: "cosine", betaStart: 0.1 }), /betaStart\/betaEnd do not apply/);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => makeSchedule({ zeroTerminalSNR: true } as any), (e: Error) => !e.message.includes("\n"));
  assert.throws(() => makeSchedule({ T: 1.5 }), /T:/);
});

Deno.test("timestep spacings match diffusers' and the student timesteps start at T−1", () => {
  assert.deepEqual(Array.from(spacedTimesteps(1000, 4, "trailing")), [999, 749, 499, 249]);
  assert.deepEqual(Array.from(spacedTimesteps(1000, 3, "trailing")), [999, 666, 332]);
  // numpy's round is half-to-even: 937.5 → 938 but 812.5 → 812.
  const t16 = [999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61];
  assert.deepEqual(Array.from(spacedTimesteps(1000, 16, "trailing")), t16);
  assert.deepEqual(Array.from(spacedTimesteps(1000, 4, "linspace")), [999, 666, 333, 0]);
  assert.deepEqual(Array.from(spacedTimesteps(1000, 5, "linspace")), [999, 749, 500, 250, 0]); // 499.5 → 500
  const sd = spacedTimesteps(1000, 50, "leading", 1); // Stable Diffusion's 50 DDIM steps: 981, 961, …, 1
  assert.equal(sd.length, 50);
  assert.deepEqual([sd[0], sd[1], sd[49]], [981, 961, 1]);
  for (const sp of ["leading", "trailing", "linspace"] as const) {
    assert.deepEqual(Array.from(spacedTimesteps(20, 20, sp)), Array.from({ length: 20 }, (_, i) => 19 - i));
  }
  assert.throws(() => spacedTimesteps(1000, 1001), /steps must be an integer in \[1, 1000\]/);
  assert.throws(() => spacedTimesteps(1000, 10, "leading", 200), /bad timesteps/);

  assert.deepEqual(Array.from(studentTimesteps(4, 1000)), [999, 749, 499, 249]);
  assert.deepEqual(Array.from(studentTimesteps(4, 1000, "linspace")), [999, 666, 333, 0]);
  assert.deepEqual(Array.from(studentTimesteps(1, 1000)), [999]);
  assert.deepEqual(Array.from(studentTimesteps(2, 1000)), [999, 499]);
  assert.deepEqual(Array.from(studentTimesteps(2, 1000, "linspace")), [999, 0]);
  assert.deepEqual(Array.from(studentTimesteps(4, 1000, "trailing")), [999, 749, 499, 249]);
  for (let n = 1; n <= 4; n++) {
    for (const sp of ["linspace", "trailing"] as const) assert.equal(studentTimesteps(n, 1000, sp)[0], 999);
  }
});

Deno.test("fractional timesteps: σ̃ ↔ t round trip, table values at integers, ∞ at T−1 under zero terminal SNR", () => {
  const rng = new Rng(5);
  for (const s of [SD, ZT]) {
    for (let t = 0; t < 998; t += 37) assert.equal(alphaBarAt(s, t), s.alphasCumprod[t]);
    for (const u of rng.uniform(50)) {
      const t = u * 998;
      assert.ok(Math.abs(tFromVeSigma(s, veSigmaAt(s, t)) - t) < 1e-8, `t=${t}`);
    }
  }
  assert.equal(veSigmaAt(ZT, 999), Infinity);
  assert.equal(tFromVeSigma(ZT, Infinity), 999);
  assert.throws(() => tFromVeSigma(ZT, veSigmaAt(ZT, 998) * 2), /outside the schedule's finite range/);
  assert.throws(() => tFromVeSigma(SD, 1e-4), /outside/);
});

Deno.test("conversions between ε, v and x0 round-trip; ε-prediction is refused where ᾱ = 0", () => {
  const n = 64, x0 = noise(n, 1), eps = noise(n, 2);
  for (const alpha of [0.01, 0.3, 0.8, 0.999]) {
    const sigma = Math.sqrt(1 - alpha * alpha);
    const x = Array.from(x0, (v, i) => alpha * v + sigma * eps[i]);
    const truth: Record<Prediction, number[]> = {
      x0: Array.from(x0),
      eps: Array.from(eps),
      v: Array.from(eps, (e, i) => alpha * e - sigma * x0[i]),
    };
    for (const from of ["x0", "eps", "v"] as const) {
      for (const to of ["x0", "eps", "v"] as const) {
        const tol = 1e-12 / Math.min(alpha, sigma);
        assert.ok(
          maxAbsDiff(convert(from, to, truth[from], x, alpha, sigma), truth[to]) < tol,
          `${from}→${to} α=${alpha}`,
        );
      }
    }
  }
  // At α = 0 the sample is pure noise: v = −x0, and x0 follows from v, but not from ε.
  const v = Array.from(x0, (a) => -a);
  assert.deepEqual(Array.from(toX0("v", v, eps, 0, 1)), Array.from(x0));
  assert.throws(() => toX0("eps", eps, eps, 0, 1), /ε-prediction .* v-prediction/);
  assert.throws(() => convert("x0", "eps", x0, x0, 1, 0), /σ_t = 0/);
});

Deno.test("traced noising and conversions agree with the host ones", () => {
  const B = 3, shape = [B, 2, 2, 2], n = 24, ts = [0, 400, 998];
  const { alpha, sigma } = alphaSigma(ZT, ts);
  const x0v = noise(n, 3), ev = noise(n, 4);
  const tr = new Trace();
  const x0 = tr.input("x0", shape), e = tr.input("eps", shape);
  const a = tr.input("alpha", [B, 1, 1, 1]), s = tr.input("sigma", [B, 1, 1, 1]);
  const x = noiseTraced(x0, e, a, s), v = vTarget(x0, e, a, s);
  const g = tr.build({
    x,
    v,
    x0e: x0FromEps(x, e, a, s),
    x0v: x0FromV(x, v, a, s),
    x0d: toX0Traced("v", v, x, a, s),
    ev: epsFromV(x, v, a, s),
    ex: epsFromX0(x, x0, a, s),
  });
  const r = evaluate(g, {
    x0: { data: x0v, shape },
    eps: { data: ev, shape },
    alpha: { data: alpha, shape: [B, 1, 1, 1] },
    sigma: { data: sigma, shape: [B, 1, 1, 1] },
  });
  assert.ok(maxAbsDiff(r.x, addNoise(x0v, ev, ZT, ts)) < 1e-6);
  const per = n / B;
  for (let b = 0; b < B; b++) {
    const sl = (arr: ArrayLike<number>) => Array.from(arr).slice(b * per, (b + 1) * per);
    const xb = sl(r.x), al = alpha[b], sg = sigma[b];
    const vb = sl(ev).map((e, i) => al * e - sg * x0v[b * per + i]);
    assert.ok(maxAbsDiff(sl(r.v), vb) < 1e-6, `v b=${b}`);
    assert.ok(maxAbsDiff(convert("v", "eps", vb, xb, al, sg), sl(ev)) < 1e-5);
    assert.ok(maxAbsDiff(sl(r.x0e), sl(x0v)) < 1e-5);
    assert.ok(maxAbsDiff(sl(r.x0v), sl(x0v)) < 1e-5);
    assert.ok(maxAbsDiff(sl(r.x0d), sl(x0v)) < 1e-5);
    assert.ok(maxAbsDiff(sl(r.ev), sl(ev)) < 1e-5);
    assert.ok(maxAbsDiff(sl(r.ex), sl(ev)) < 1e-5);
  }
});

Deno.test("addNoise: per-batch timesteps, pure noise at T−1 of a zero-terminal-SNR schedule", () => {
  const x0 = noise(12, 6), e = noise(12, 7), out = addNoise(x0, e, ZT, [0, 500, 999]);
  assert.deepEqual(Array.from(out.subarray(8)), Array.from(e.subarray(8)));
  const a = Math.sqrt(ZT.alphasCumprod[500]), s = Math.sqrt(1 - ZT.alphasCumprod[500]);
  for (let i = 4; i < 8; i++) assert.ok(Math.abs(out[i] - (a * x0[i] + s * e[i])) < 1e-6);
  assert.throws(() => addNoise(x0, e, ZT, [0, 1, 2, 3, 4]), /12 values in 5 batches/);
});

Deno.test("point mass: every sampler returns μ after its last step, in every parameterisation", async () => {
  const zero = S.map(() => 0), n = 8 * D, xT = noise(n, 8);
  const cases: [Schedule, Prediction][] = [[ZT, "v"], [ZT, "x0"], [SD, "eps"], [SD, "v"]];
  for (const [sch, p] of cases) {
    const d = gaussian(sch, p, MU, zero), rng = new Rng(9);
    const outs: Record<string, Float32Array> = {
      ddpm: await sampleDdpm(d, xT, sch, { steps: 10, rng }),
      ddim: await sampleDdim(d, xT, sch, { steps: 10 }),
      ddimEta: await sampleDdim(d, xT, sch, { steps: 7, eta: 0.5, rng }),
      euler: await sampleEuler(d, xT, sch, { steps: 10 }),
      eulerKarras: await sampleEuler(d, xT, sch, { steps: 10, sigmas: "karras" }),
      add1: await sampleAdd(d, xT, sch, { steps: 1, rng }),
      add4: await sampleAdd(d, xT, sch, { steps: 4, rng }),
    };
    const want = Array.from({ length: n }, (_, i) => MU[i % D]);
    for (const [k, out] of Object.entries(outs)) assert.ok(maxAbsDiff(out, want) < 1e-5, `${k} ${p}`);
  }
});

// DDIM (η = 0) with the optimal Gaussian denoiser, derived by hand: write x_t = αμ + √V g. Then
// x̂0 = μ + α s² g/√V and ε̂ = σ g/√V, so the next state has g' = g (α'α s² + σ'σ)/√(V V'), which is the cosine of
// the angle between (α s, σ) and (α' s, σ'). The output is μ + s·g_T·∏ cos(θ_t − θ_p), θ = atan2(σ, α s), ending
// at the clean level θ = 0; with many steps the product tends to 1, the probability-flow ODE's μ + s·g_T.
function ddimClosedForm(sch: Schedule, ts: ArrayLike<number>, xT: Float32Array): Float64Array {
  const out = new Float64Array(xT.length);
  for (let i = 0; i < xT.length; i++) {
    const m = MU[i % D], s = S[i % D], ab0 = sch.alphasCumprod[ts[0]];
    const g = (xT[i] - Math.sqrt(ab0) * m) / Math.sqrt(ab0 * s * s + 1 - ab0);
    const theta = (t: number) => Math.atan2(Math.sqrt(1 - sch.alphasCumprod[t]), Math.sqrt(sch.alphasCumprod[t]) * s);
    let prod = 1;
    for (let k = 0; k < ts.length; k++) prod *= Math.cos(theta(ts[k]) - (k + 1 < ts.length ? theta(ts[k + 1]) : 0));
    out[i] = m + s * g * prod;
  }
  return out;
}

Deno.test("DDIM (η = 0) on a Gaussian reproduces the closed-form finite-step result and tends to the ODE's", async () => {
  const xT = noise(16 * D, 10);
  // With "linspace" every run ends at t = 0: the exact flow keeps g = x_T (zero terminal SNR) down to t = 0, and the
  // last step to the clean level multiplies by cos θ_0, so the many-step limit is μ + s·x_T·cos θ_0.
  const theta0 = (s: number) => Math.atan2(Math.sqrt(1 - ZT.alphasCumprod[0]), Math.sqrt(ZT.alphasCumprod[0]) * s);
  const limit = Array.from(xT, (z, i) => MU[i % D] + S[i % D] * z * Math.cos(theta0(S[i % D])));
  let prevErr = Infinity, prevSteps = 1;
  for (const steps of [1, 2, 5, 25, 200, 1000]) {
    for (const [sch, p, sp] of [[ZT, "v", "trailing"], [ZT, "x0", "linspace"], [SD, "eps", "trailing"]] as const) {
      const ts = spacedTimesteps(1000, steps, sp);
      const got = await sampleDdim(gaussian(sch, p), xT, sch, { steps, spacing: sp });
      assert.ok(maxAbsDiff(got, ddimClosedForm(sch, ts, xT)) < 2e-5, `steps=${steps} ${p}`);
      if (sp === "linspace" && steps > 1) {
        const err = maxAbsDiff(got, limit);
        // First order: the error falls roughly like 1/steps (the 0.6 leaves room for the uneven integer spacing).
        const want = 0.6 * steps / prevSteps;
        assert.ok(prevErr / err > want, `error ${err} at ${steps} steps, ${prevErr} at ${prevSteps}: not first order`);
        prevErr = err, prevSteps = steps;
      }
    }
  }
  // Steps are even in t, not in log-SNR, and the SD schedule's first steps are large there: convergence is slow.
  assert.ok(prevErr < 1e-2, `1000 steps still ${prevErr} from the ODE solution`);
});

Deno.test("Euler on DDIM's timesteps is DDIM (η = 0), as Karras et al. 2022 note", async () => {
  const xT = noise(16 * D, 11);
  for (const [sch, p] of [[ZT, "v"], [SD, "eps"], [SD, "x0"]] as [Schedule, Prediction][]) {
    for (const steps of [1, 3, 8]) {
      const a = await sampleEuler(gaussian(sch, p), xT, sch, { steps, sigmas: "trailing" });
      const b = await sampleDdim(gaussian(sch, p), xT, sch, { steps, spacing: "trailing" });
      assert.ok(maxAbsDiff(a, b) < 1e-5, `${p} steps=${steps}: ${maxAbsDiff(a, b)}`);
    }
  }
});

// Euler with Karras sigmas. On a zero-terminal-SNR schedule the first step, from σ̃ = ∞, gives x̃_1 = μ + σ̃_1 x_T
// (x̂0 = μ and ε̂ = x_T there); on Stable Diffusion's, x̃ starts at x_T/α_max. The exact ODE then keeps
// g = (x̃ − μ)/√(s² + σ̃²) fixed down to σ̃_min, and the last step returns x̂0 there: the many-step limit is
// μ + s² g/√(s² + σ̃_min²), whose error must halve when the steps double (first order). With σ̃_min → 0 and
// σ̃_1 → ∞ this is the probability-flow solution μ + s·x_T.
Deno.test("Euler with Karras sigmas converges to the ODE solution at first order", async () => {
  const xT = noise(8 * D, 12);
  for (const [sch, p] of [[ZT, "x0"], [SD, "eps"]] as [Schedule, Prediction][]) {
    const errs: number[] = [];
    for (const steps of [12, 24, 48, 96]) {
      const lv = eulerLevels(sch, { steps, sigmas: "karras" });
      assert.equal(lv.length, steps);
      assert.ok(lv.some((l) => !Number.isInteger(l.t)), "Karras levels should fall between integer timesteps");
      const ztsnr = lv[0].s === Infinity, s1 = ztsnr ? lv[1].s : lv[0].s, sMin = lv[steps - 1].s;
      const limit = Array.from(xT, (z, i) => {
        const s = S[i % D], x1 = ztsnr ? MU[i % D] + s1 * z : z * Math.sqrt(1 + s1 * s1);
        const g = (x1 - MU[i % D]) / Math.sqrt(s * s + s1 * s1);
        return MU[i % D] + s * s * g / Math.sqrt(s * s + sMin * sMin);
      });
      errs.push(maxAbsDiff(await sampleEuler(gaussian(sch, p), xT, sch, { steps, sigmas: "karras" }), limit));
    }
    for (let k = 0; k + 1 < errs.length; k++) {
      const r = errs[k] / errs[k + 1];
      assert.ok(r > 1.7 && r < 2.3, `${p}: error ratio ${r} at doubling (errors ${errs})`);
    }
  }
});

// DDPM with the optimal denoiser is linear in (x_t, z) per dimension, so its output is Gaussian with moments from
// m' = c0(μ + k(m − αμ)) + cx·m, V' = (c0 k + cx)² V + var, k = α s²/(α²s² + σ²), starting from N(0, 1) (the exact
// marginal at T−1 under zero terminal SNR). The mean stays μ exactly; the variance falls short of s² by the ignored
// posterior variance of x0, which vanishes as the steps grow.
function ddpmMoments(sch: Schedule, ts: ArrayLike<number>, mu: number, s: number) {
  let m = 0, V = 1;
  for (let k = 0; k < ts.length; k++) {
    const at = sch.alphasCumprod[ts[k]], ap = k + 1 < ts.length ? sch.alphasCumprod[ts[k + 1]] : 1;
    const a = Math.sqrt(at), g = a * s * s / (at * s * s + 1 - at), b = 1 - at / ap;
    const c0 = Math.sqrt(ap) * b / (1 - at), cx = Math.sqrt(at / ap) * (1 - ap) / (1 - at);
    m = c0 * (mu + g * (m - a * mu)) + cx * m;
    V = (c0 * g + cx) ** 2 * V + (1 - ap) / (1 - at) * b;
  }
  return { m, V };
}

Deno.test("DDPM ancestral on a Gaussian: sample moments match the chain's exact moments, tending to N(μ, s²)", async () => {
  for (const [steps, n] of [[8, 8192], [1000, 2048]]) {
    const ts = spacedTimesteps(1000, steps, "trailing");
    const out = await sampleDdpm(gaussian(ZT, "v"), noise(n * D, 13), ZT, { steps, rng: new Rng(14) });
    for (let j = 0; j < D; j++) {
      const { m, V } = ddpmMoments(ZT, ts, MU[j], S[j]);
      assert.ok(Math.abs(m - MU[j]) < 1e-12);
      // The chain undershoots s² by Σ c0²·Var(x0 | x_t); the SD schedule's first steps are large in log-SNR, so even
      // 1000 steps keep 1–7 % of it here (the s = 0.2 dimension worst); 8 steps lose far more.
      const ratio = V / S[j] ** 2;
      assert.ok(steps === 1000 ? ratio > 0.92 && ratio < 1 : ratio < 0.65, `steps ${steps}: V/s² = ${ratio}`);
      let sum = 0, sq = 0;
      for (let i = j; i < out.length; i += D) sum += out[i];
      const mean = sum / n;
      for (let i = j; i < out.length; i += D) sq += (out[i] - mean) ** 2;
      const varS = sq / (n - 1);
      assert.ok(Math.abs(mean - m) < 4.5 * Math.sqrt(V / n), `dim ${j} steps ${steps}: mean ${mean} vs ${m}`);
      assert.ok(Math.abs(varS - V) < 4.5 * V * Math.sqrt(2 / n), `dim ${j} steps ${steps}: var ${varS} vs ${V}`);
    }
  }
});

Deno.test("DDIM with η = 1 is DDPM's ancestral step (Song et al. 2021)", async () => {
  const xT = noise(64 * D, 15);
  for (const [sch, p] of [[ZT, "v"], [SD, "eps"]] as [Schedule, Prediction][]) {
    const a = await sampleDdpm(gaussian(sch, p), xT, sch, { steps: 6, rng: new Rng(16) });
    const b = await sampleDdim(gaussian(sch, p), xT, sch, { steps: 6, eta: 1, rng: new Rng(16) });
    assert.ok(maxAbsDiff(a, b) < 1e-5, `${p}: ${maxAbsDiff(a, b)}`);
  }
});

Deno.test("samplers refuse ε-prediction at zero terminal SNR and bad options, with one clear line", async () => {
  const xT = noise(D, 17);
  await assert.rejects(() => sampleDdim(gaussian(ZT, "eps"), xT, ZT, { steps: 4 }), /v-prediction \(Lin et al/);
  await assert.rejects(() => sampleAdd(gaussian(ZT, "eps"), xT, ZT, { rng: new Rng(1) }), /ε-prediction/);
  await assert.rejects(() => sampleDdim(gaussian(SD, "v"), xT, SD, {}), /needs options.steps or options.timesteps/);
  await assert.rejects(() => sampleDdim(gaussian(SD, "v"), xT, SD, { steps: 4, eta: 1 }), /needs options.rng/);
  await assert.rejects(
    () => sampleDdpm(gaussian(SD, "v"), xT, SD, { timesteps: [10, 20], rng: new Rng(1) }),
    /strictly decrease/,
  );
  const short: Denoiser = { prediction: "x0", predict: () => Promise.resolve(new Float32Array(1)) };
  await assert.rejects(() => sampleEuler(short, xT, SD, { steps: 2 }), /returned 1 values for an input of 4/);
});

Deno.test("classifier-free guidance: scale 1 is the conditional, 0 the unconditional, linear and parameterisation-free", async () => {
  const muC = [1, 2, 3, 4], muU = [0, -1, 0.5, 0], x = noise(4 * D, 18), t = 500;
  const a = Math.sqrt(ZT.alphasCumprod[t]), s = Math.sqrt(1 - ZT.alphasCumprod[t]), level = { alpha: a, sigma: s };
  const c = gaussian(ZT, "v", muC), u = gaussian(ZT, "v", muU);
  const [oc, ou] = [await c.predict(x, t, level), await u.predict(x, t, level)];
  assert.deepEqual(await cfg(c, u, 1).predict(x, t, level), oc);
  assert.deepEqual(await cfg(c, u, 0).predict(x, t, level), ou);
  const g = await cfg(c, u, 4).predict(x, t, level);
  // Guiding v and converting equals guiding x0 directly.
  const xc = await gaussian(ZT, "x0", muC).predict(x, t, level),
    xu = await gaussian(ZT, "x0", muU).predict(x, t, level);
  const want = Array.from(xc, (v, i) => xu[i] + 4 * (v - xu[i]));
  assert.ok(maxAbsDiff(toX0("v", g, x, a, s), want) < 1e-5);
  assert.throws(() => cfg(c, gaussian(ZT, "x0"), 2), /one parameterisation/);
});

Deno.test("guided DDIM equals a plain loop that guides the two models' x0 estimates step by step", async () => {
  const muC = [1, 2, 3, 4], muU = [0, -1, 0.5, 0], xT = noise(4 * D, 23), w = 3, steps = 6;
  const guided = await sampleDdim(cfg(gaussian(ZT, "v", muC), gaussian(ZT, "v", muU), w), xT, ZT, { steps });
  // The loop: both models asked for x0 directly, guided in x0, then DDIM's η = 0 update by its definition.
  const x0c = gaussian(ZT, "x0", muC), x0u = gaussian(ZT, "x0", muU);
  const ts = spacedTimesteps(1000, steps, "trailing");
  let x = Float64Array.from(xT);
  for (let i = 0; i < ts.length; i++) {
    const ab = ZT.alphasCumprod[ts[i]], next = i + 1 < ts.length ? ZT.alphasCumprod[ts[i + 1]] : 1;
    const level = { alpha: Math.sqrt(ab), sigma: Math.sqrt(1 - ab) }, xf = Float32Array.from(x);
    const c = await x0c.predict(xf, ts[i], level), u = await x0u.predict(xf, ts[i], level);
    x = x.map((v, j) => {
      const x0 = u[j] + w * (c[j] - u[j]);
      const eps = (v - level.alpha * x0) / level.sigma;
      return Math.sqrt(next) * x0 + Math.sqrt(1 - next) * eps;
    });
  }
  assert.ok(maxAbsDiff(guided, x) < 1e-4, `guided DDIM vs loop: ${maxAbsDiff(guided, x)}`);
  // Guidance changes the result: the unguided conditional sample is another one.
  const plain = await sampleDdim(gaussian(ZT, "v", muC), xT, ZT, { steps });
  assert.ok(maxAbsDiff(plain, x) > 0.1);
});

Deno.test("sampleAdd: an oracle student returns the true x0 after 1–4 steps; re-noised inputs are α x0 + σ ε", async () => {
  const n = 4096, x0 = noise(n, 19), xT = noise(n, 20);
  for (let steps = 1; steps <= 4; steps++) {
    const calls: { t: number; x: Float32Array }[] = [];
    // A v-prediction oracle that knows x0 and uses the schedule's ᾱ at the t it is called with, not the sampler's
    // level: a re-noising at another level than the model's t would show up as a wrong x0.
    const oracle: Denoiser = {
      prediction: "v",
      predict(x, t) {
        calls.push({ t, x });
        const a = Math.sqrt(ZT.alphasCumprod[t]), s = Math.sqrt(1 - ZT.alphasCumprod[t]);
        return Promise.resolve(Float32Array.from(x, (xi, i) => (a * xi - x0[i]) / s));
      },
    };
    const out = await sampleAdd(oracle, xT, ZT, { steps, rng: new Rng(21) });
    assert.ok(maxAbsDiff(out, x0) < 1e-5, `steps=${steps}`);
    assert.deepEqual(calls.map((c) => c.t), Array.from(studentTimesteps(steps, 1000)));
    assert.deepEqual(calls[0].x, xT);
    for (const { t, x } of calls.slice(1)) {
      const a = Math.sqrt(ZT.alphasCumprod[t]), s = Math.sqrt(1 - ZT.alphasCumprod[t]);
      const e = Array.from(x, (xi, i) => (xi - a * x0[i]) / s);
      const mean = e.reduce((p, q) => p + q, 0) / n, v = e.reduce((p, q) => p + (q - mean) ** 2, 0) / (n - 1);
      assert.ok(
        Math.abs(mean) < 4.5 / Math.sqrt(n) && Math.abs(v - 1) < 4.5 * Math.sqrt(2 / n),
        `t=${t}: ${mean} ${v}`,
      );
    }
  }
});

Deno.test("dropCaptions: probability p, seeded, all or nothing at 0 and 1", () => {
  const caps = Array.from({ length: 20000 }, (_, i) => `caption ${i}`);
  assert.deepEqual(dropCaptions(caps, 0, new Rng(1), ""), caps);
  assert.ok(dropCaptions(caps, 1, new Rng(1), "").every((c) => c === ""));
  const d = dropCaptions(caps, 0.1, new Rng(2), "");
  const frac = d.filter((c) => c === "").length / caps.length;
  assert.ok(Math.abs(frac - 0.1) < 4.5 * Math.sqrt(0.1 * 0.9 / caps.length), `${frac}`);
  assert.ok(d.every((c, i) => c === "" || c === caps[i]));
  assert.deepEqual(dropCaptions(caps, 0.1, new Rng(2), ""), d);
  assert.notDeepEqual(dropCaptions(caps, 0.1, new Rng(3), ""), d);
  assert.throws(() => dropCaptions(caps, 1.5, new Rng(1), ""), /\[0, 1\]/);
});
