/**
 * `add_student`: the ADD student (Sauer et al. 2023): a UNet, initialised from the teacher's weights, applied to the
 * noised input x_s at its timestep, its output turned into the image estimate x̂ = x̂_θ(x_s, s).
 *
 * @module
 */
import { z } from "zod";
import { toX0Traced } from "../../models/diffusion/traced.ts";
import { isDenoiser, notADenoiser } from "../../models/denoiser.ts";
import { expectPort, modelKinds, type StageDef, StageTypeError } from "../../pipeline/stage.ts";

const Params = z.strictObject({
  /** The declared denoiser (`unet`, `diffusers_unet`, …) trained as the student. */
  model: z.string(),
  /** The UNet's output parameterisation (as its teacher was trained). */
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
});

/** The add_student stage. */
export const addStudent: StageDef<z.output<typeof Params>> = {
  kind: "add_student",
  doc: "student UNet on x_s at timestep s, giving the image estimate x̂",
  role: "traced",
  params: Params,
  inputs: ["x_s", "t", "alpha", "sigma", "tokens?", "pooled?"],
  models: (p) => [p.model],
  types: ({ params, inputs, models }) => {
    const m = models[params.model];
    if (!isDenoiser(m)) throw new StageTypeError(notADenoiser(params.model, m), ["params", "model"]);
    const x = expectPort(inputs, "x_s", { dtype: "f32", rank: 4 });
    expectPort(inputs, "alpha", { dtype: "f32", shape: [x.shape[0], 1, 1, 1] });
    expectPort(inputs, "sigma", { dtype: "f32", shape: [x.shape[0], 1, 1, 1] });
    const { x_s, alpha: _a, sigma: _s, ...rest } = inputs;
    modelKinds().get(m.kind)!.types(m.params, { x: x_s, ...rest });
    return { x0_hat: { dtype: "f32", shape: [...x.shape] } };
  },
  trace: (ctx, p, { x_s, t, alpha, sigma, tokens, pooled }) => {
    const out = ctx.apply(p.model, { x: x_s, t, ...(tokens ? { tokens } : {}), ...(pooled ? { pooled } : {}) }).out;
    return { x0_hat: toX0Traced(p.prediction, out, x_s, alpha, sigma) };
  },
};
