/**
 * `model`: applies a declared model to its inputs (any port names the model kind accepts) and exposes the model's
 * outputs as ports.
 *
 * @module
 */
import { z } from "zod";
import { modelKinds, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** Name of a model declared under `models:`. */
  model: z.string(),
});

/** The model stage. */
export const model: StageDef<z.output<typeof Params>> = {
  kind: "model",
  doc: "applies a declared model (its inputs and outputs are the model kind's)",
  role: "traced",
  params: Params,
  inputs: ["*"],
  models: (p) => [p.model],
  types: ({ params, inputs, models }) => {
    const info = models[params.model];
    if (!info) throw new StageTypeError(`model "${params.model}" is not declared`, ["params", "model"]);
    return modelKinds().get(info.kind)!.types(info.params, inputs);
  },
  trace: (ctx, p, inputs) => ctx.apply(p.model, inputs),
};
