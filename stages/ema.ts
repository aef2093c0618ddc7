/**
 * `ema`: keeps an exponential moving average of a model's weights on the executor, e ← decay·e + (1 − decay)·p,
 * updated at the stage's cadence after the step's optimizers ran. Checkpoints save it beside the weights.
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
});

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
    const n = ctx.step; // counts steps, not updates: with every > 1 the warm-up is just slower
    return ctx.updateEma(p.model, p.warmup ? Math.min(p.decay, (1 + n) / (10 + n)) : p.decay);
  },
};
