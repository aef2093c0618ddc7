/**
 * Noise schedules of discrete variance-preserving diffusion, as pure functions: x_t = α_t x0 + σ_t ε with
 * α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), ᾱ_t = ∏_{s≤t} (1 − β_s), t = 0 … T−1 (the papers' t = 1 … T).
 *
 * Everything is float64: the zero-terminal-SNR rescale relies on ᾱ_{T−1} being exactly 0, and samplers divide by α_t
 * and σ_t near the ends of the schedule.
 *
 * @module
 */
import { z } from "zod";

/** A discrete schedule: ᾱ_t for t = 0 … T−1, strictly decreasing, in [0, 1). */
export interface Schedule {
  readonly alphasCumprod: Float64Array;
}

/** How a sampler picks `steps` of the T training timesteps (Lin et al. 2024, Table 2). */
export type Spacing = "leading" | "trailing" | "linspace";

/** β_t evenly spaced from β0 to β1 (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020). */
export function linearBetas(T = 1000, beta0 = 1e-4, beta1 = 0.02): Float64Array {
  checkT(T);
  const out = new Float64Array(T);
  for (let i = 0; i < T; i++) out[i] = T === 1 ? beta0 : beta0 + (beta1 - beta0) * (i / (T - 1));
  return out;
}

/**
 * √β_t evenly spaced from √β0 to √β1, squared: Stable Diffusion's "scaled_linear" schedule (Rombach, Blattmann,
 * Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent Diffusion Models", 2022).
 */
export function scaledLinearBetas(T = 1000, beta0 = 0.00085, beta1 = 0.012): Float64Array {
  return linearBetas(T, Math.sqrt(beta0), Math.sqrt(beta1)).map((b) => b * b);
}

/**
 * The cosine schedule (Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021, eq. 17):
 * ᾱ(τ) = f(τ)/f(0), f(τ) = cos²((τ + s)/(1 + s) · π/2), β_t = 1 − ᾱ((t+1)/T)/ᾱ(t/T) clipped to `maxBeta` so the last
 * steps do not become singular.
 */
export function cosineBetas(T = 1000, s = 0.008, maxBeta = 0.999): Float64Array {
  checkT(T);
  const f = (tau: number) => Math.cos(((tau + s) / (1 + s)) * Math.PI / 2) ** 2;
  const out = new Float64Array(T);
  for (let i = 0; i < T; i++) out[i] = Math.min(1 - f((i + 1) / T) / f(i / T), maxBeta);
  return out;
}

/**
 * Rescales betas so that the terminal SNR is exactly zero while ᾱ at the first step is kept (Lin, Liu, Li, Yang,
 * "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024, Algorithm 1): √ᾱ is shifted so its last
 * value is 0 and scaled so its first is unchanged, then turned back into betas. The last beta becomes exactly 1, so
 * x_{T−1} is pure noise, which is what a sampler starts from; ε-prediction is then undefined at t = T−1 and the
 * model should predict v (Lin et al. §3.2).
 */
export function rescaleZeroTerminalSnr(betas: ArrayLike<number>): Float64Array {
  const T = betas.length;
  if (T < 2) throw new RangeError(`schedules: rescaleZeroTerminalSnr needs at least 2 betas, got ${T}`);
  const sq = cumprodOneMinus(betas).map(Math.sqrt);
  const first = sq[0], last = sq[T - 1];
  if (!(first > last)) {
    throw new RangeError(`schedules: rescaleZeroTerminalSnr needs ᾱ decreasing, got ${first}..${last}`);
  }
  // x − x is exactly 0 in floating point, so ᾱ_{T−1} comes out exactly 0 and the last beta exactly 1.
  const ab = sq.map((v) => ((v - last) * (first / (first - last))) ** 2);
  const out = new Float64Array(T);
  out[0] = 1 - ab[0];
  for (let i = 1; i < T; i++) out[i] = 1 - ab[i] / ab[i - 1];
  return out;
}

/** The schedule of a beta sequence: ᾱ_t = ∏_{s≤t} (1 − β_s). */
export function scheduleFromBetas(betas: ArrayLike<number>): Schedule {
  for (let i = 0; i < betas.length; i++) {
    if (!(betas[i] > 0 && betas[i] <= 1)) throw new RangeError(`schedules: beta[${i}] = ${betas[i]}, expected (0, 1]`);
  }
  return { alphasCumprod: cumprodOneMinus(betas) };
}

function cumprodOneMinus(betas: ArrayLike<number>): Float64Array {
  const out = new Float64Array(betas.length);
  let p = 1;
  for (let i = 0; i < betas.length; i++) out[i] = p *= 1 - betas[i];
  return out;
}

/** Parameters of `makeSchedule`, for configs. */
export const ScheduleParams = z.strictObject({
  /** β schedule: "linear" (Ho et al.), "scaled_linear" (Stable Diffusion), "cosine" (Nichol & Dhariwal). */
  kind: z.enum(["linear", "scaled_linear", "cosine"]).default("scaled_linear"),
  /** Number of training timesteps (at most 100,000: a schedule holds a few arrays of T numbers). */
  T: z.number().int().min(2).max(100_000).default(1000),
  /** First β; default 1e-4 for linear, 0.00085 for scaled_linear; not used by cosine. */
  betaStart: z.number().positive().max(1).optional(),
  /** Last β; default 0.02 for linear, 0.012 for scaled_linear; not used by cosine. */
  betaEnd: z.number().positive().max(1).optional(),
  /** Rescale to zero terminal SNR (Lin et al. 2024); needed for sampling from pure noise, with v-prediction. */
  zeroTerminalSnr: z.boolean().default(false),
});

/** `makeSchedule`'s options as written in a config (defaults may be left out). */
export type ScheduleOptions = z.input<typeof ScheduleParams>;

/** A schedule from its config: β schedule, T, optional zero-terminal-SNR rescale. */
export function makeSchedule(options: ScheduleOptions = {}): Schedule {
  const r = ScheduleParams.safeParse(options);
  if (!r.success) {
    const why = r.error.issues.map((i) => `${i.path.join(".") || "(options)"}: ${i.message}`).join("; ");
    throw new Error(`schedules: bad makeSchedule options: ${why}`);
  }
  const p = r.data;
  if (p.kind === "cosine" && (p.betaStart !== undefined || p.betaEnd !== undefined)) {
    throw new Error(`schedules: betaStart/betaEnd do not apply to kind "cosine"`);
  }
  let betas = p.kind === "linear"
    ? linearBetas(p.T, p.betaStart ?? 1e-4, p.betaEnd ?? 0.02)
    : p.kind === "scaled_linear"
    ? scaledLinearBetas(p.T, p.betaStart ?? 0.00085, p.betaEnd ?? 0.012)
    : cosineBetas(p.T);
  if (p.zeroTerminalSnr) betas = rescaleZeroTerminalSnr(betas);
  return scheduleFromBetas(betas);
}

/** Number of training timesteps T. */
export const numTimesteps = (s: Schedule): number => s.alphasCumprod.length;

/** α_t = √ᾱ_t at an integer timestep. */
export function alphaAt(s: Schedule, t: number): number {
  return Math.sqrt(s.alphasCumprod[checkStep(s, t)]);
}

/** σ_t = √(1 − ᾱ_t) at an integer timestep. */
export function sigmaAt(s: Schedule, t: number): number {
  return Math.sqrt(1 - s.alphasCumprod[checkStep(s, t)]);
}

/** Per-element α_t and σ_t for a batch of integer timesteps, to feed a traced step as [B,1,1,1] inputs. */
export function alphaSigma(s: Schedule, ts: ArrayLike<number>): { alpha: Float32Array; sigma: Float32Array } {
  const alpha = new Float32Array(ts.length), sigma = new Float32Array(ts.length);
  for (let i = 0; i < ts.length; i++) alpha[i] = alphaAt(s, ts[i]), sigma[i] = sigmaAt(s, ts[i]);
  return { alpha, sigma };
}

/**
 * The noise level in the variance-exploding parametrisation of Karras et al. 2022: σ̃_t = σ_t/α_t = √((1−ᾱ)/ᾱ),
 * +∞ where ᾱ = 0. Accepts fractional t (see `alphaBarAt`).
 */
export function veSigmaAt(s: Schedule, t: number): number {
  const ab = alphaBarAt(s, t);
  return ab === 0 ? Infinity : Math.sqrt((1 - ab) / ab);
}

/**
 * ᾱ at a possibly fractional timestep, interpolating log σ̃ linearly in t as k-diffusion and diffusers do for Karras
 * sigmas. Where ᾱ_{T−1} = 0 (zero terminal SNR), log σ̃ is +∞ there, so every t in (T−2, T−1] gives ᾱ = 0.
 */
export function alphaBarAt(s: Schedule, t: number): number {
  const T = numTimesteps(s);
  if (!(t >= 0 && t <= T - 1)) throw new RangeError(`schedules: timestep ${t} outside [0, ${T - 1}]`);
  const lo = Math.floor(t), hi = Math.ceil(t), a = s.alphasCumprod;
  if (lo === hi) return a[lo];
  if (a[hi] === 0) return 0;
  const w = t - lo, logSig = (ab: number) => 0.5 * Math.log((1 - ab) / ab);
  const ls = (1 - w) * logSig(a[lo]) + w * logSig(a[hi]);
  return 1 / (1 + Math.exp(2 * ls));
}

/**
 * The inverse of `veSigmaAt`: the fractional timestep whose σ̃ is `sigma`, by linear interpolation of log σ̃ (as
 * k-diffusion's `sigma_to_t`). σ̃ = ∞ maps to T−1 where ᾱ_{T−1} = 0; values outside the schedule's range throw.
 */
export function tFromVeSigma(s: Schedule, sigma: number): number {
  const T = numTimesteps(s), a = s.alphasCumprod;
  const sig = (t: number) => a[t] === 0 ? Infinity : Math.sqrt((1 - a[t]) / a[t]);
  const top = a[T - 1] === 0 ? T - 2 : T - 1; // the last finite level
  if (sigma === Infinity && top === T - 2) return T - 1;
  if (!(sigma >= sig(0) * (1 - 1e-12) && sigma <= sig(top) * (1 + 1e-12))) {
    throw new RangeError(`schedules: σ̃ = ${sigma} outside the schedule's finite range [${sig(0)}, ${sig(top)}]`);
  }
  // σ̃ increases with t: binary search for the interval [lo, lo+1] containing sigma.
  let lo = 0, hi = top;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (sig(mid) <= sigma) lo = mid;
    else hi = mid;
  }
  const l0 = Math.log(sig(lo)), l1 = Math.log(sig(hi));
  return Math.min(top, Math.max(0, lo + (l1 === l0 ? 0 : (Math.log(sigma) - l0) / (l1 - l0))));
}

// Round half to even, as numpy's `round`, so spacings match the reference implementations digit for digit.
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * `steps` timesteps out of T in sampling order (descending), as diffusers' `timestep_spacing` (Lin et al. 2024,
 * Table 2): "linspace" rounds linspace(0, T−1, steps); "leading" takes multiples of ⌊T/steps⌋ from 0 (plus `offset`,
 * 1 in Stable Diffusion); "trailing" counts down from T−1 by T/steps. Only "trailing" and "linspace" always include
 * T−1, the step where a zero-terminal-SNR schedule has pure noise; Lin et al. recommend "trailing".
 */
export function spacedTimesteps(T: number, steps: number, spacing: Spacing = "trailing", offset = 0): Int32Array {
  checkT(T);
  if (!Number.isInteger(steps) || steps < 1 || steps > T) {
    throw new RangeError(`schedules: steps must be an integer in [1, ${T}], got ${steps}`);
  }
  const out = new Int32Array(steps);
  if (spacing === "linspace") {
    const step = steps === 1 ? 0 : (T - 1) / (steps - 1);
    for (let k = 0; k < steps; k++) out[steps - 1 - k] = roundHalfEven(k * step);
  } else if (spacing === "leading") {
    const ratio = Math.floor(T / steps);
    for (let k = 0; k < steps; k++) out[steps - 1 - k] = k * ratio + offset;
  } else if (spacing === "trailing") {
    const ratio = T / steps;
    for (let k = 0; k < steps; k++) out[k] = roundHalfEven(T - k * ratio) - 1;
  } else {
    throw new RangeError(`schedules: spacing must be "leading", "trailing" or "linspace", got "${spacing}"`);
  }
  for (let k = 0; k < steps; k++) {
    if (out[k] < 0 || out[k] > T - 1 || (k > 0 && out[k] >= out[k - 1])) {
      throw new RangeError(`schedules: ${spacing} spacing with offset ${offset} gives bad timesteps [${out}]`);
    }
  }
  return out;
}

/**
 * The N student timesteps of ADD (Sauer, Lorenz, Blattmann, Rombach, "Adversarial Diffusion Distillation", 2023,
 * §3.2: N = 4 with τ_N = 1000, i.e. index T−1, and zero terminal SNR so the student starts from pure noise), in
 * sampling order: the first is T−1. "trailing" (the default) gives diffusers' trailing spacing (999, 749, 499, 249),
 * as SDXL-Turbo's scheduler config uses; "linspace" gives linspace(0, T−1, N) reversed, as a public ADD trainer does
 * (999, 666, 333, 0 for N = 4; 999 alone for N = 1), whose last student timestep is the clean image itself.
 */
export function studentTimesteps(N = 4, T = 1000, spacing: "linspace" | "trailing" = "trailing"): Int32Array {
  if (spacing === "linspace" && N === 1) return Int32Array.of(T - 1);
  return spacedTimesteps(T, N, spacing);
}

/**
 * Karras sigmas (Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative Models",
 * 2022, eq. 5): n noise levels from σmax down to σmin, evenly spaced in σ^(1/ρ).
 */
export function karrasSigmas(n: number, sigmaMin: number, sigmaMax: number, rho = 7): Float64Array {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`schedules: karrasSigmas n must be a positive integer`);
  if (!(sigmaMin > 0 && sigmaMax >= sigmaMin && Number.isFinite(sigmaMax))) {
    throw new RangeError(`schedules: karrasSigmas needs 0 < σmin ≤ σmax < ∞, got ${sigmaMin}, ${sigmaMax}`);
  }
  const a = sigmaMax ** (1 / rho), b = sigmaMin ** (1 / rho), out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (a + (n === 1 ? 0 : i / (n - 1)) * (b - a)) ** rho;
  return out;
}

function checkT(T: number): void {
  if (!Number.isInteger(T) || T < 1) throw new RangeError(`schedules: T must be a positive integer, got ${T}`);
}

function checkStep(s: Schedule, t: number): number {
  const T = numTimesteps(s);
  if (!Number.isInteger(t) || t < 0 || t >= T) {
    throw new RangeError(`schedules: timestep ${t} not an integer in [0, ${T})`);
  }
  return t;
}
