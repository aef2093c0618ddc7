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
  effect: (ctx, p) => ctx.updateEma(p.model, p.decay),
};
