/**
 * `dmd`: the distribution-matching loss of DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching
 * Distillation", §3.2, eq. 7–8). The generator's output x̂ is noised at t, x_t = α_t x̂ + σ_t ε; a frozen "real"
 * diffusion model (the teacher) and a "fake" one, trained on the generator's own outputs, each estimate the clean
 * image. The KL gradient between the generated and the real distribution, with DMD's weighting
 * w_t = σ_t² / α_t · CS / ‖μ_real − x̂‖₁, is in x̂-space
 *
 *   g = (μ_fake(x_t, t) − μ_real(x_t, t)) / mean_{C,H,W} |x̂ − μ_real(x_t, t)|
 *
 * (s_real − s_fake = α_t (μ_real − μ_fake) / σ_t², so the σ_t²/α_t cancels), applied as the surrogate
 *
 *   L_DMD = ½ mean (x̂ − sg(x̂ − g))²,   ∂L/∂x̂ = g / (number of elements).
 *
 * Unlike ADD's score distillation (`add_distill`), which pulls x̂ towards the teacher's mode, the fake model's term
 * pushes it away from where the generator already puts its mass. Train the fake model with the ordinary diffusion
 * loss on sg(x̂) (`diffusion_noise` → `model` → `mse`, with its own optimizer); its weights are only read here.
 *
 * @module
 */
import { z } from "zod";
import { abs, add, div, mean, mul, square, sub } from "../engine/math.ts";
import { cast, stopGradient } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { makeSchedule } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import { levelsAt, noiseTraced, toX0Traced } from "../models/diffusion/traced.ts";
import { isDenoiser, notADenoiser } from "../models/denoiser.ts";
import { expectPort, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** The declared frozen denoiser of the real distribution (the teacher). */
  real: z.string(),
  /** The declared denoiser trained on the generator's outputs (initialised from the teacher). */
  fake: z.string(),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  /** Both models' output parameterisation. */
  prediction: z.enum(["eps", "v"]).default("v"),
  /** t is drawn uniformly from [t_min, t_max] (DMD: 0.02 T to 0.98 T). */
  t_min: z.number().int().min(0).default(20),
  t_max: z.number().int().min(0).default(980),
});
type P = z.output<typeof Params>;

/** The dmd stage. */
export const dmd: StageDef<P> = {
  kind: "dmd",
  doc: "DMD distribution matching: noise x̂, (fake − real) clean-image estimates, normalised, as a surrogate loss",
  role: "traced",
  params: Params,
  inputs: ["x0_hat", "tokens?", "pooled?"],
  models: (p) => [p.real, p.fake],
  types: ({ params, inputs, models }) => {
    for (const k of ["real", "fake"] as const) {
      if (!isDenoiser(models[params[k]])) {
        throw new StageTypeError(notADenoiser(params[k], models[params[k]]), ["params", k]);
      }
    }
    if (params.real === params.fake) throw new StageTypeError(`real and fake must be two models`, ["params", "fake"]);
    expectPort(inputs, "x0_hat", { dtype: "f32", rank: 4 });
    const T = params.schedule.T;
    if (!(params.t_min <= params.t_max && params.t_max < T)) {
      throw new StageTypeError(`need t_min ≤ t_max < T = ${T}`, ["params", "t_max"]);
    }
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, { x0_hat: x, tokens, pooled }) => {
    const s = makeSchedule(p.schedule), b = x.shape[0];
    const ti = cast(add(mul(ctx.uniform("t", [b]), p.t_max - p.t_min + 1), p.t_min), "i32");
    const { alpha, sigma } = levelsAt(s.alphasCumprod, ti);
    const xt = noiseTraced(stopGradient(x), ctx.normal("eps", [...x.shape]), alpha, sigma);
    const cond = { t: cast(ti, "f32"), ...(tokens ? { tokens } : {}), ...(pooled ? { pooled } : {}) };
    const estimate = (m: string): Tensor =>
      toX0Traced(p.prediction, ctx.apply(m, { x: xt, ...cond }).out, xt, alpha, sigma);
    const muReal = estimate(p.real), muFake = estimate(p.fake);
    // The per-example L1 normaliser keeps the step size the same across t and images (DMD eq. 8); + 1e-6 guards x̂ = μ.
    const norm = add(mean(abs(sub(x, muReal)), [1, 2, 3], true), 1e-6);
    const g = stopGradient(div(sub(muFake, muReal), norm));
    return { loss: mul(mean(square(sub(x, stopGradient(sub(x, g))))), 0.5) };
  },
};
