/**
 * The diffusion formulas a traced training step needs (forward noising, parameterisation changes), built from
 * engine ops so they differentiate and lower like any other op. α and σ are traced tensors broadcasting against the
 * batch, typically [B,1,1,1] fed from `alphaSigma` (schedules.ts), or plain numbers. The host versions, for
 * samplers, are `addNoise` and `convert` in samplers.ts; the tests check each against the other.
 *
 * @module
 */
import { add, div, mul, sub } from "../../engine/math.ts";
import { gather, reshape } from "../../engine/ops.ts";
import type { Tensor, TensorLike } from "../../engine/tensor.ts";
import type { Prediction } from "./samplers.ts";

/**
 * α = √ᾱ and σ = √(1 − ᾱ) of a table of ᾱ at the integer indices `i` [B], shaped [B,1,1,1] to broadcast against a
 * batch of images (the table is a graph constant, so a step's random timesteps cost one gather each).
 */
export function levelsAt(alphasCumprod: ArrayLike<number>, i: Tensor): { alpha: Tensor; sigma: Tensor } {
  const n = alphasCumprod.length, b = i.shape[0];
  const table = (f: (a: number) => number) => i.trace.constant(Array.from(alphasCumprod, f), [n]);
  return {
    alpha: reshape(gather(table(Math.sqrt), i), [b, 1, 1, 1]),
    sigma: reshape(gather(table((a) => Math.sqrt(1 - a)), i), [b, 1, 1, 1]),
  };
}

/** x_t = α x0 + σ ε (Ho et al. 2020, eq. 4). */
export const noiseTraced = (x0: Tensor, eps: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  add(mul(alpha, x0), mul(sigma, eps));

/** x0 = (x − σ ε)/α; undefined where α = 0 (zero terminal SNR): use v-prediction there (Lin et al. 2024). */
export const x0FromEps = (x: Tensor, eps: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  div(sub(x, mul(sigma, eps)), alpha);

/** x0 = α x − σ v (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", 2022). */
export const x0FromV = (x: Tensor, v: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  sub(mul(alpha, x), mul(sigma, v));

/** ε = σ x + α v (Salimans & Ho 2022). */
export const epsFromV = (x: Tensor, v: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  add(mul(sigma, x), mul(alpha, v));

/** ε = (x − α x0)/σ; undefined where σ = 0. */
export const epsFromX0 = (x: Tensor, x0: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  div(sub(x, mul(alpha, x0)), sigma);

/** The v-prediction target v = α ε − σ x0 (Salimans & Ho 2022), for a v-loss. */
export const vTarget = (x0: Tensor, eps: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor =>
  sub(mul(alpha, eps), mul(sigma, x0));

/** The x0 estimate of a model output `out` of parameterisation `p` at x = α x0 + σ ε. */
export function toX0Traced(p: Prediction, out: Tensor, x: Tensor, alpha: TensorLike, sigma: TensorLike): Tensor {
  return p === "x0" ? out : p === "v" ? x0FromV(x, out, alpha, sigma) : x0FromEps(x, out, alpha, sigma);
}
