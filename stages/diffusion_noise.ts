/**
 * `diffusion_noise`: the forward process of a diffusion training step (Ho et al. 2020). Draws t uniformly over the
 * schedule's timesteps and ε ~ N(0, I) per example, and gives x_t = α_t x0 + σ_t ε, the timesteps, and the
 * regression target of the chosen parameterisation (ε, or v = α ε − σ x0 of Salimans & Ho 2022; v is the one that
 * stays defined at zero terminal SNR, Lin et al. 2024).
 *
 * @module
 */
import { z } from "zod";
import { mul } from "../engine/math.ts";
import { cast } from "../engine/ops.ts";
import { makeSchedule } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import { levelsAt, noiseTraced, vTarget } from "../models/diffusion/traced.ts";
import { expectPort, type StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v"]).default("v"),
});

/** The diffusion_noise stage. */
export const diffusionNoise: StageDef<z.output<typeof Params>> = {
  kind: "diffusion_noise",
  doc: "x_t = α_t x0 + σ_t ε at uniform random t; outputs x_t, t and the ε or v target",
  role: "traced",
  params: Params,
  inputs: ["x0"],
  types: ({ inputs }) => {
    const x0 = expectPort(inputs, "x0", { dtype: "f32", rank: 4 });
    const b = x0.shape[0];
    return {
      x_t: { dtype: "f32", shape: [...x0.shape] },
      t: { dtype: "f32", shape: [b] },
      target: { dtype: "f32", shape: [...x0.shape] },
    };
  },
  trace: (ctx, p, { x0 }) => {
    const s = makeSchedule(p.schedule);
    const T = s.alphasCumprod.length, b = x0.shape[0];
    // Truncation of u·T with u in [0, 1) is a uniform integer in [0, T).
    const ti = cast(mul(ctx.uniform("t", [b]), T), "i32");
    const { alpha, sigma } = levelsAt(s.alphasCumprod, ti);
    const eps = ctx.normal("eps", [...x0.shape]);
    return {
      x_t: noiseTraced(x0, eps, alpha, sigma),
      t: cast(ti, "f32"),
      target: p.prediction === "v" ? vTarget(x0, eps, alpha, sigma) : eps,
    };
  },
};
