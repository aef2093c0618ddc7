/**
 * `ema`: keeps an exponential moving average of a model's weights on the executor, e ← decay·e + (1 − decay)·p,
 * updated at the stage's cadence after the step's optimizers ran. Checkpoints save it beside the weights.
 *
 * `profile: power` is the power-function EMA of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of
 * Diffusion Models", EDM2, eq. 3): at the n-th update the decay is (1 − 1/n)^(γ+1), so the average holds the n-th
 * weights with share (n^(γ+1) − (n−1)^(γ+1)) / N^(γ+1) after N updates — a window that grows with the run (its relative
 * width σ_rel ≈ 0.1 at γ = 6.94) instead of trailing a still-improving model by a fixed number of steps.
 *
 * @module
 */
import { z } from "zod";
import type { StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  model: z.string(),
  decay: z.number().min(0).max(1).default(0.999),
  /**
   * Warm the average up from a random start: the decay used at the n-th update is min(decay, (1 + n)/(10 + n)), so
   * the initial weights are forgotten quickly (as TensorFlow's ExponentialMovingAverage with num_updates). Leave it
   * off when the model starts from good weights (a student initialised from its teacher).
   */
  warmup: z.boolean().default(false),
  /** `constant`: `decay` at every update; `power`: EDM2's power-function profile with exponent `gamma` (`decay` unused). */
  profile: z.enum(["constant", "power"]).default("constant"),
  /** The power profile's exponent γ > 0 (6.94: σ_rel ≈ 0.1; 16.97: σ_rel ≈ 0.05). */
  gamma: z.number().positive().default(6.94),
}).refine((p) => !(p.profile === "power" && p.warmup), {
  path: ["warmup"],
  message: "warm-up is for the constant profile; the power profile forgets the start by itself",
});

/** The decay of the n-th update (n ≥ 1) of the power profile: (1 − 1/n)^(γ+1); 0 at n = 1, so the start is forgotten. */
export function powerDecay(n: number, gamma: number): number {
  return Math.pow(1 - 1 / n, gamma + 1);
}

/** The ema stage. */
export const emaStage: StageDef<z.output<typeof Params>> = {
  kind: "ema",
  doc: "exponential moving average of a model's weights",
  role: "effect",
  params: Params,
  inputs: [],
  models: (p) => [p.model],
  types: () => ({}),
  effect: (ctx, p) => {
    if (p.profile === "power") {
      return ctx.updateEma(p.model, powerDecay(Math.max(1, Math.floor(ctx.step / ctx.every)), p.gamma));
    }
    const n = ctx.step; // counts steps, not updates: with every > 1 the warm-up is just slower
    return ctx.updateEma(p.model, p.warmup ? Math.min(p.decay, (1 + n) / (10 + n)) : p.decay);
  },
};
