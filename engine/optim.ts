/**
 * Optimizers written inside the traced graph, so one compiled step does forward, backward and update.
 *
 * They work on any tensor, and are meant for packed flat parameter buffers (see `pack.ts`): one elementwise update
 * over a whole parameter group instead of hundreds of small ones. Per-group settings come from calling them once per
 * group.
 *
 * @module
 */
import { add, cos, div, maximum, minimum, mul, pow, sqrt, square, sub } from "./math.ts";
import { sum } from "./ops.ts";
import type { Tensor, TensorLike } from "./tensor.ts";

/** AdamW settings (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"). */
export interface AdamWConfig {
  /** Learning rate: a number, or a traced scalar for schedules. */
  lr: TensorLike;
  /** Decay of the first moment; default 0.9 (0: the step uses the raw gradient, as the ADD discriminator's does). */
  beta1?: number;
  /** Decay of the second moment; default 0.999. */
  beta2?: number;
  /** Added to √v̂ so the step stays finite where the gradient has been zero; default 1e-8. */
  eps?: number;
  /** Decoupled weight decay: p ← p − lr·wd·p, applied beside (not through) the Adam moments. */
  weightDecay?: number;
}

/** The new parameter and moments of one AdamW step. */
export interface AdamWResult {
  /** The updated parameter. */
  p: Tensor;
  /** The first moment to feed back as `m` next step. */
  m: Tensor;
  /** The second moment to feed back as `v` next step. */
  v: Tensor;
}

/**
 * One AdamW step (Kingma & Ba 2015, with decoupled decay). `step` is the 1-based step count as a traced f32 scalar,
 * for the bias corrections 1 − βᵗ. With β1 = 0 (the ADD discriminator) the first moment is just the gradient.
 */
export function adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: Tensor, cfg: AdamWConfig): AdamWResult {
  const b1 = cfg.beta1 ?? 0.9, b2 = cfg.beta2 ?? 0.999, eps = cfg.eps ?? 1e-8, wd = cfg.weightDecay ?? 0;
  const m1 = add(mul(m, b1), mul(g, 1 - b1));
  const v1 = add(mul(v, b2), mul(square(g), 1 - b2));
  const bc1 = sub(1, pow(b1, step)), bc2 = sub(1, pow(b2, step));
  const mhat = b1 === 0 ? m1 : div(m1, bc1);
  const update = div(mhat, add(sqrt(div(v1, bc2)), eps));
  // A number lr with weight decay is folded here: mul needs one tensor operand.
  const lrWd = typeof cfg.lr === "number" ? cfg.lr * wd : mul(cfg.lr, wd);
  const decayed = wd === 0 ? p : sub(p, mul(p, lrWd));
  return { p: sub(decayed, mul(update, cfg.lr)), m: m1, v: v1 };
}

/** SGD settings. */
export interface SgdConfig {
  /** Learning rate: a number, or a traced scalar for schedules. */
  lr: TensorLike;
  /** Heavy-ball coefficient; default 0, which needs no buffer. */
  momentum?: number;
  /** L2 penalty added to the gradient (coupled, unlike AdamW's); default 0. */
  weightDecay?: number;
}

/** One SGD step with optional heavy-ball momentum buffer `buf` (pass and keep it when momentum > 0). */
export function sgd(p: Tensor, g: Tensor, cfg: SgdConfig, buf?: Tensor): { p: Tensor; buf?: Tensor } {
  const wd = cfg.weightDecay ?? 0, mom = cfg.momentum ?? 0;
  const d = wd === 0 ? g : add(g, mul(p, wd));
  if (mom === 0 || !buf) return { p: sub(p, mul(d, cfg.lr)) };
  const b = add(mul(buf, mom), d);
  return { p: sub(p, mul(b, cfg.lr)), buf: b };
}

/** Exponential moving average of weights: e ← decay·e + (1 − decay)·p. */
export function ema(e: Tensor, p: Tensor, decay: TensorLike): Tensor {
  return add(mul(e, decay), mul(p, sub(1, decay)));
}

/** The global L2 norm of several tensors. */
export function globalNorm(gs: readonly Tensor[]): Tensor {
  return sqrt(gs.map((g) => sum(square(g))).reduce((a, b) => add(a, b)));
}

/**
 * Scales gradients so their global norm is at most `maxNorm` (Pascanu et al. 2013). Returns the scaled gradients
 * and the norm before clipping, which is worth logging.
 */
export function clipByGlobalNorm(gs: readonly Tensor[], maxNorm: number): { grads: Tensor[]; norm: Tensor } {
  const norm = globalNorm(gs);
  const scale = minimum(div(maxNorm, add(norm, 1e-6)), 1);
  return { grads: gs.map((g) => mul(g, scale)), norm };
}

/** A learning-rate schedule over an optimizer's update count t = 1, 2, … */
export interface LrSchedule {
  /** `constant`, `linear` decay, or `cosine` decay (Loshchilov & Hutter 2017, SGDR, without restarts). */
  kind: "constant" | "linear" | "cosine";
  /** Updates of linear warm-up from 0 (0: none). */
  warmup?: number;
  /** Update count at which the decay ends (warm-up included); required unless `constant`. */
  decaySteps?: number;
  /** The factor the decay ends at (0: decays to zero). */
  finalFraction?: number;
}

/**
 * The schedule's factor at update t on the host (the reference for `lrFactor`):
 * warm(t) · f(p) with warm = min(t/W, 1), p = clamp((t − W)/(D − W), 0, 1), f = 1 − (1 − r)p (linear) or
 * r + (1 − r)(1 + cos πp)/2 (cosine), W the warm-up, D the decay length, r the final fraction.
 */
export function lrFactorAt(t: number, s: LrSchedule): number {
  const w = s.warmup ?? 0, r = s.finalFraction ?? 0;
  const warm = w > 0 ? Math.min(t / w, 1) : 1;
  if (s.kind === "constant") return warm;
  const d = Math.max(1, (s.decaySteps ?? NaN) - w);
  const p = Math.min(Math.max((t - w) / d, 0), 1);
  return warm * (s.kind === "linear" ? 1 - (1 - r) * p : r + (1 - r) * (1 + Math.cos(Math.PI * p)) / 2);
}

/** `lrFactorAt` traced from the update count t (an f32 scalar tensor), to multiply a learning rate by in the graph. */
export function lrFactor(t: Tensor, s: LrSchedule): Tensor | number {
  const w = s.warmup ?? 0, r = s.finalFraction ?? 0;
  const warm: Tensor | number = w > 0 ? minimum(div(t, w), 1) : 1;
  if (s.kind === "constant") return warm;
  if (!(s.decaySteps !== undefined && s.decaySteps > 0)) throw new Error(`lrFactor: ${s.kind} needs decaySteps`);
  const d = Math.max(1, s.decaySteps - w);
  const p = minimum(maximum(div(sub(t, w), d), 0), 1);
  const f = s.kind === "linear" ? sub(1, mul(p, 1 - r)) : add(r, mul(add(1, cos(mul(p, Math.PI))), (1 - r) / 2));
  return typeof warm === "number" ? f : mul(warm, f);
}
