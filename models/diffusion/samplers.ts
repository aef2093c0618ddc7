/**
 * Host-side samplers over a model callback, in the style of k-diffusion: pure functions with one signature,
 * `(denoiser, xT, schedule, options) => Promise<Float32Array>`, so they work with any model and any executor.
 *
 * Conventions shared by all samplers:
 * - `xT` is the noisy sample at the first timestep in the variance-preserving scale (pure noise N(0, I) on a
 *   zero-terminal-SNR schedule); the samplers never draw it, so runs can be compared on the same start.
 * - Timesteps are integer indices 0 … T−1 into the schedule (the papers' 1 … T); the step after the last one is the
 *   clean image (ᾱ = 1), so every sampler returns the model's x0 estimate at its last timestep.
 * - The state is kept in float64; the model sees float32.
 * - Noise comes from the engine's `Rng`, drawn in a fixed order (one `normal(n)` per noisy step), so a seed gives the
 *   same samples on every executor.
 *
 * @module
 */
import type { Rng } from "../../engine/rng.ts";
import {
  alphaBarAt,
  karrasSigmas,
  numTimesteps,
  type Schedule,
  spacedTimesteps,
  type Spacing,
  studentTimesteps,
  tFromVeSigma,
  veSigmaAt,
} from "./schedules.ts";

/** What a model predicts: the noise ε, the velocity v = α ε − σ x0 (Salimans & Ho 2022), or the clean x0. */
export type Prediction = "eps" | "v" | "x0";

/** The noise level a sampler evaluates the model at: x = α x0 + σ ε, α² + σ² = 1. */
export interface NoiseLevel {
  readonly alpha: number;
  readonly sigma: number;
}

/**
 * A model as samplers see it: `predict` maps a noisy batch `x` (flat, any shape) at timestep `t` to the model output
 * in the declared parameterisation. `t` is an integer index except for `sampleEuler` with Karras sigmas, which
 * passes fractional timesteps (as k-diffusion). `level` is the exact noise level the sampler assumes at `t`; a
 * network needs only `t`, an oracle may use `level`.
 */
export interface Denoiser {
  readonly prediction: Prediction;
  predict(x: Float32Array, t: number, level: NoiseLevel): Promise<Float32Array>;
}

const ZTSNR_EPS = "an ε-prediction model gives no x0 where ᾱ_t = 0 (zero terminal SNR: x0 = (x − σε)/α with α = 0); " +
  "train it with v-prediction (Lin et al. 2024, §3.2)";

/**
 * Converts a model output between parameterisations at noise level (α, σ), elementwise in float64:
 * x0 = (x − σε)/α = αx − σv, ε = (x − αx0)/σ = σx + αv, v = αε − σx0 = (ε − σx)/α = (αx − x0)/σ. Throws where the
 * result is undefined: from ε at α = 0 (the last step of a zero-terminal-SNR schedule; use v-prediction there) and
 * from x0 at σ = 0.
 */
export function convert(
  from: Prediction,
  to: Prediction,
  out: ArrayLike<number>,
  x: ArrayLike<number>,
  alpha: number,
  sigma: number,
): Float64Array {
  if (out.length !== x.length) throw new RangeError(`samplers: output has ${out.length} values, x has ${x.length}`);
  const n = x.length, r = new Float64Array(n);
  if (from === to) {
    r.set(out);
    return r;
  }
  if (from === "eps" && alpha === 0) throw new RangeError(`samplers: ${ZTSNR_EPS}`);
  if (from === "x0" && sigma === 0) throw new RangeError(`samplers: an x0 prediction gives no ε or v where σ_t = 0`);
  const key = `${from}>${to}`;
  for (let i = 0; i < n; i++) {
    const o = out[i], xi = x[i];
    r[i] = key === "eps>x0"
      ? (xi - sigma * o) / alpha
      : key === "eps>v"
      ? (o - sigma * xi) / alpha
      : key === "x0>eps"
      ? (xi - alpha * o) / sigma
      : key === "x0>v"
      ? (alpha * xi - o) / sigma
      : key === "v>x0"
      ? alpha * xi - sigma * o
      : sigma * xi + alpha * o; // v>eps
  }
  return r;
}

/** The x0 estimate of a model output (see `convert`). */
export const toX0 = (p: Prediction, out: ArrayLike<number>, x: ArrayLike<number>, alpha: number, sigma: number) =>
  convert(p, "x0", out, x, alpha, sigma);
/** The ε estimate of a model output (see `convert`). */
export const toEps = (p: Prediction, out: ArrayLike<number>, x: ArrayLike<number>, alpha: number, sigma: number) =>
  convert(p, "eps", out, x, alpha, sigma);
/** The v estimate of a model output (see `convert`). */
export const toV = (p: Prediction, out: ArrayLike<number>, x: ArrayLike<number>, alpha: number, sigma: number) =>
  convert(p, "v", out, x, alpha, sigma);

/** The noise level at an integer timestep: α = √ᾱ_t, σ = √(1 − ᾱ_t). */
export function levelAt(schedule: Schedule, t: number): NoiseLevel {
  const ab = alphaBarAt(schedule, t);
  return { alpha: Math.sqrt(ab), sigma: Math.sqrt(1 - ab) };
}

/**
 * The forward process q(x_t | x0) = N(α_t x0, σ_t² I): x_t = α_t x0 + σ_t ε (Ho et al. 2020, eq. 4). `t` is one
 * timestep for the whole array or one per batch element (the array is then split into `t.length` equal parts).
 */
export function addNoise(
  x0: ArrayLike<number>,
  eps: ArrayLike<number>,
  schedule: Schedule,
  t: number | ArrayLike<number>,
): Float32Array {
  if (eps.length !== x0.length) {
    throw new RangeError(`samplers: addNoise eps has ${eps.length} values, x0 ${x0.length}`);
  }
  const ts = typeof t === "number" ? [t] : t, per = x0.length / ts.length;
  if (!Number.isInteger(per)) throw new RangeError(`samplers: addNoise: ${x0.length} values in ${ts.length} batches`);
  const out = new Float32Array(x0.length);
  for (let b = 0; b < ts.length; b++) {
    const { alpha, sigma } = levelAt(schedule, checkInt(schedule, ts[b]));
    for (let i = b * per; i < (b + 1) * per; i++) out[i] = alpha * x0[i] + sigma * eps[i];
  }
  return out;
}

/**
 * Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022) as a denoiser:
 * out = uncond + scale · (cond − uncond). Scale 1 is the conditional model, 0 the unconditional. Guidance is applied
 * in the models' own parameterisation; the conversions are affine in the output with weights summing to 1, so the
 * result is the same as guiding x0 or ε.
 */
export function cfg(cond: Denoiser, uncond: Denoiser, scale: number): Denoiser {
  if (cond.prediction !== uncond.prediction) {
    throw new Error(`samplers: cfg needs one parameterisation, got "${cond.prediction}" and "${uncond.prediction}"`);
  }
  if (!Number.isFinite(scale)) throw new RangeError(`samplers: cfg scale must be finite, got ${scale}`);
  return {
    prediction: cond.prediction,
    async predict(x, t, level) {
      // One after the other: an executor holding resident state need not support overlapping runs.
      const c = await cond.predict(x, t, level), u = await uncond.predict(x, t, level);
      if (c.length !== u.length) {
        throw new RangeError(`samplers: cfg outputs differ in size (${c.length}, ${u.length})`);
      }
      const out = new Float32Array(c.length);
      for (let i = 0; i < c.length; i++) out[i] = u[i] + scale * (c[i] - u[i]);
      return out;
    },
  };
}

/**
 * Caption dropout for training a guidable model (Ho & Salimans 2022): each caption is replaced by `empty` with
 * probability `p`, drawn from `rng` (one uniform per caption, in order).
 */
export function dropCaptions<T>(captions: readonly T[], p: number, rng: Rng, empty: T): T[] {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`samplers: caption dropout probability must be in [0, 1], got ${p}`);
  const u = rng.uniform(captions.length);
  return captions.map((c, i) => u[i] < p ? empty : c);
}

/** Which timesteps a multi-step sampler visits: explicit, or `steps` of T by a spacing. */
export interface StepOptions {
  /** Number of model evaluations; required unless `timesteps` is given. */
  steps?: number;
  /** How to space `steps` timesteps; "trailing" (default) always starts at T−1 (Lin et al. 2024). */
  spacing?: Spacing;
  /** Added to "leading" timesteps (Stable Diffusion uses 1). */
  offset?: number;
  /** Explicit strictly decreasing integer timesteps; overrides `steps` and `spacing`. */
  timesteps?: ArrayLike<number>;
}

/**
 * DDPM ancestral sampling (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020, Algorithm 2), on any
 * subsequence of timesteps: from t to the next timestep p, x_p ~ q(x_p | x_t, x̂0) with the posterior of eq. 6–7,
 * β' = 1 − ᾱ_t/ᾱ_p, mean √ᾱ_p β'/(1−ᾱ_t) x̂0 + √(ᾱ_t/ᾱ_p)(1−ᾱ_p)/(1−ᾱ_t) x_t, variance (1−ᾱ_p)/(1−ᾱ_t) β'
 * ("fixed small"). Draws one normal per element and step except the last.
 */
export async function sampleDdpm(
  denoiser: Denoiser,
  xT: Float32Array,
  schedule: Schedule,
  options: StepOptions & { rng: Rng },
): Promise<Float32Array> {
  const ts = resolveSteps(schedule, options, "sampleDdpm");
  let x = Float64Array.from(xT);
  for (let i = 0; i < ts.length; i++) {
    const at = schedule.alphasCumprod[ts[i]], ap = i + 1 < ts.length ? schedule.alphasCumprod[ts[i + 1]] : 1;
    const x0 = await estimate(denoiser, x, ts[i], schedule, "x0");
    const betaP = 1 - at / ap;
    const c0 = Math.sqrt(ap) * betaP / (1 - at), cx = Math.sqrt(at / ap) * (1 - ap) / (1 - at);
    const std = Math.sqrt((1 - ap) / (1 - at) * betaP);
    const z = std > 0 ? options.rng.normal(x.length) : null;
    const next = new Float64Array(x.length);
    for (let j = 0; j < x.length; j++) next[j] = c0 * x0[j] + cx * x[j] + (z ? std * z[j] : 0);
    x = next;
  }
  return Float32Array.from(x);
}

/**
 * DDIM (Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12):
 * x_p = √ᾱ_p x̂0 + √(1 − ᾱ_p − σ_η²) ε̂ + σ_η z, σ_η = η √((1−ᾱ_p)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_p). η = 0 (default) is
 * deterministic; η = 1 has DDPM's posterior variance. `rng` is needed only when η > 0. `clip` clamps x̂0 to
 * [−clip, clip] each step (diffusers' `clip_sample`, `clip_sample_range`).
 */
export async function sampleDdim(
  denoiser: Denoiser,
  xT: Float32Array,
  schedule: Schedule,
  options: StepOptions & { eta?: number; rng?: Rng; clip?: number },
): Promise<Float32Array> {
  const ts = resolveSteps(schedule, options, "sampleDdim"), eta = options.eta ?? 0, clip = options.clip;
  if (clip !== undefined && !(clip > 0)) throw new RangeError(`samplers: sampleDdim clip must be > 0, got ${clip}`);
  if (!(eta >= 0)) throw new RangeError(`samplers: sampleDdim eta must be ≥ 0, got ${eta}`);
  if (eta > 0 && !options.rng) throw new Error(`samplers: sampleDdim with eta > 0 needs options.rng`);
  let x = Float64Array.from(xT);
  for (let i = 0; i < ts.length; i++) {
    const at = schedule.alphasCumprod[ts[i]], ap = i + 1 < ts.length ? schedule.alphasCumprod[ts[i + 1]] : 1;
    const { alpha, sigma } = levelAt(schedule, ts[i]);
    const out = await callModel(denoiser, x, ts[i], { alpha, sigma });
    const x0 = toX0(denoiser.prediction, out, x, alpha, sigma);
    const eps = toEpsGiven(denoiser.prediction, out, x, x0, alpha, sigma);
    // After ε̂: diffusers' DDIM clamps only x̂0 (`clip_sample`) and keeps the ε̂ of the unclamped estimate.
    if (clip !== undefined) { for (let j = 0; j < x0.length; j++) x0[j] = Math.min(clip, Math.max(-clip, x0[j])); }
    const s = eta * Math.sqrt((1 - ap) / (1 - at) * (1 - at / ap));
    const dir = Math.sqrt(Math.max(0, 1 - ap - s * s)), a = Math.sqrt(ap);
    const z = s > 0 ? options.rng!.normal(x.length) : null;
    const next = new Float64Array(x.length);
    for (let j = 0; j < x.length; j++) next[j] = a * x0[j] + dir * eps[j] + (z ? s * z[j] : 0);
    x = next;
  }
  return Float32Array.from(x);
}

/** Options of `sampleEuler`. */
export interface EulerOptions {
  /** Number of model evaluations. */
  steps: number;
  /** Noise levels: the σ̃ of spaced integer timesteps (default "trailing"), or Karras et al.'s ρ-spacing. */
  sigmas?: Spacing | "karras";
  /** ρ of the Karras spacing (default 7). */
  rho?: number;
  /** Added to "leading" timesteps. */
  offset?: number;
}

/**
 * Euler's method on the probability-flow ODE in σ-space (Karras, Aittala, Aila, Laine, "Elucidating the Design Space
 * of Diffusion-Based Generative Models", 2022, Algorithm 1 without churn; k-diffusion's `sample_euler`): with
 * x̃ = x/α and σ̃ = σ/α, dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃, stepping σ̃_i → σ̃_{i+1} down to 0. The VP model sees α x̃ and
 * the timestep of σ̃ (fractional for Karras sigmas, as k-diffusion's `sigma_to_t`). A first level of σ̃ = ∞ (zero
 * terminal SNR) is taken as the limit x̃_1 = x̂0 + σ̃_1 ε̂; with Karras sigmas on such a schedule the first step is
 * that one and the other steps − 1 are Karras-spaced from the largest finite σ̃. On the same timesteps this is
 * DDIM with η = 0 (Karras et al. §3), up to rounding.
 */
export async function sampleEuler(
  denoiser: Denoiser,
  xT: Float32Array,
  schedule: Schedule,
  options: EulerOptions,
): Promise<Float32Array> {
  const levels = eulerLevels(schedule, options);
  let x = Float64Array.from(xT); // VP scale: x = α x̃
  for (let i = 0; i < levels.length; i++) {
    const { t, s } = levels[i], sNext = i + 1 < levels.length ? levels[i + 1].s : 0;
    const alpha = s === Infinity ? 0 : 1 / Math.sqrt(1 + s * s), sigma = s === Infinity ? 1 : s * alpha;
    const out = await callModel(denoiser, x, t, { alpha, sigma });
    const x0 = toX0(denoiser.prediction, out, x, alpha, sigma);
    const aNext = 1 / Math.sqrt(1 + sNext * sNext), next = new Float64Array(x.length);
    if (s === Infinity) {
      const eps = toEpsGiven(denoiser.prediction, out, x, x0, alpha, sigma);
      for (let j = 0; j < x.length; j++) next[j] = aNext * (x0[j] + (sNext === 0 ? 0 : sNext * eps[j]));
    } else {
      for (let j = 0; j < x.length; j++) {
        const xt = x[j] / alpha, d = (xt - x0[j]) / s;
        next[j] = aNext * (xt + (sNext - s) * d);
      }
    }
    x = next;
  }
  return Float32Array.from(x);
}

/** The (timestep, σ̃) pairs `sampleEuler` visits, before the final σ̃ = 0. */
export function eulerLevels(schedule: Schedule, options: EulerOptions): { t: number; s: number }[] {
  const T = numTimesteps(schedule), kind = options.sigmas ?? "trailing";
  if (kind !== "karras") {
    return Array.from(spacedTimesteps(T, options.steps, kind, options.offset ?? 0), (t) => ({
      t,
      s: veSigmaAt(schedule, t),
    }));
  }
  if (!Number.isInteger(options.steps) || options.steps < 1) {
    throw new RangeError(`samplers: sampleEuler steps must be a positive integer, got ${options.steps}`);
  }
  const ztsnr = schedule.alphasCumprod[T - 1] === 0, n = options.steps - (ztsnr ? 1 : 0);
  const sMax = veSigmaAt(schedule, ztsnr ? T - 2 : T - 1);
  const ks = n > 0 ? karrasSigmas(n, veSigmaAt(schedule, 0), sMax, options.rho ?? 7) : [];
  // Clamp into the table's range: rounding in σ^(1/ρ) must not push the ends just outside it.
  const lv = Array.from(ks, (s) => ({ t: tFromVeSigma(schedule, Math.min(sMax, s)), s }));
  return ztsnr ? [{ t: T - 1, s: Infinity }, ...lv] : lv;
}

/** Options of `sampleAdd`. */
export interface AddOptions {
  /** Number of student steps, 1–4 in the paper (default 4); ignored when `timesteps` is given. */
  steps?: number;
  /** Spacing of `studentTimesteps` (default "trailing", as the `add_noise` stage trains). */
  spacing?: "linspace" | "trailing";
  /** Explicit strictly decreasing student timesteps; the first should be T−1. */
  timesteps?: ArrayLike<number>;
  /** Noise for the re-noising between steps (anything with `normal(n)`, e.g. one stream per image). */
  rng: Pick<Rng, "normal">;
}

/**
 * The few-step sampler of Adversarial Diffusion Distillation (Sauer, Lorenz, Blattmann, Rombach, 2023, §3.2 and
 * Fig. 2): x̂0 = student(xT, τ_1), then for each further τ_n the estimate is re-noised, x = α_{τn} x̂0 + σ_{τn} ε
 * with fresh ε, and x̂0 = student(x, τ_n). τ_1 = T−1 so that, on a zero-terminal-SNR schedule, the pure noise `xT`
 * is exactly the student's training input at τ_1.
 */
export async function sampleAdd(
  denoiser: Denoiser,
  xT: Float32Array,
  schedule: Schedule,
  options: AddOptions,
): Promise<Float32Array> {
  const T = numTimesteps(schedule);
  const ts = options.timesteps
    ? checkDescending(schedule, options.timesteps, "sampleAdd")
    : studentTimesteps(options.steps ?? 4, T, options.spacing ?? "trailing");
  let x0: Float64Array | null = null;
  for (const t of ts) {
    const { alpha, sigma } = levelAt(schedule, t);
    let x: Float64Array;
    if (x0 === null) x = Float64Array.from(xT);
    else {
      const eps = options.rng.normal(x0.length), prev: Float64Array = x0;
      x = prev.map((v, j) => alpha * v + sigma * eps[j]);
    }
    x0 = toX0(denoiser.prediction, await callModel(denoiser, x, t, { alpha, sigma }), x, alpha, sigma);
  }
  return Float32Array.from(x0!);
}

// ε̂ given x̂0 already computed: at σ = 0 nothing defines ε, but no sampler evaluates there.
function toEpsGiven(p: Prediction, out: Float32Array, x: Float64Array, x0: Float64Array, alpha: number, sigma: number) {
  if (p !== "x0") return toEps(p, out, x, alpha, sigma);
  return x.map((xi, j) => (xi - alpha * x0[j]) / sigma);
}

async function estimate(d: Denoiser, x: Float64Array, t: number, schedule: Schedule, to: Prediction) {
  const { alpha, sigma } = levelAt(schedule, t);
  return convert(d.prediction, to, await callModel(d, x, t, { alpha, sigma }), x, alpha, sigma);
}

async function callModel(d: Denoiser, x: Float64Array, t: number, level: NoiseLevel): Promise<Float32Array> {
  const out = await d.predict(Float32Array.from(x), t, level);
  if (out.length !== x.length) {
    throw new RangeError(`samplers: denoiser returned ${out.length} values for an input of ${x.length} at t = ${t}`);
  }
  return out;
}

function resolveSteps(schedule: Schedule, o: StepOptions, who: string): Int32Array {
  if (o.timesteps) return checkDescending(schedule, o.timesteps, who);
  if (o.steps === undefined) throw new Error(`samplers: ${who} needs options.steps or options.timesteps`);
  return spacedTimesteps(numTimesteps(schedule), o.steps, o.spacing ?? "trailing", o.offset ?? 0);
}

function checkDescending(schedule: Schedule, ts: ArrayLike<number>, who: string): Int32Array {
  if (ts.length === 0) throw new RangeError(`samplers: ${who} got no timesteps`);
  for (let i = 0; i < ts.length; i++) {
    checkInt(schedule, ts[i]);
    if (i > 0 && ts[i] >= ts[i - 1]) {
      throw new RangeError(`samplers: ${who} timesteps must strictly decrease, got [${Array.from(ts)}]`);
    }
  }
  return Int32Array.from(ts);
}

function checkInt(schedule: Schedule, t: number): number {
  const T = numTimesteps(schedule);
  if (!Number.isInteger(t) || t < 0 || t >= T) {
    throw new RangeError(`samplers: timestep ${t} not an integer in [0, ${T})`);
  }
  return t;
}
