/**
 * `add_noise`: the student's input in ADD (Sauer et al. 2023, §3.1): x_s = α_s x0 + σ_s ε with s drawn uniformly
 * from N student timesteps. On a zero-terminal-SNR schedule the largest, T−1, has α = 0: the student sees pure noise
 * there, exactly what it gets at inference.
 *
 * @module
 */
import { z } from "zod";
import { mul } from "../../engine/math.ts";
import { cast, gather, reshape } from "../../engine/ops.ts";
import { makeSchedule, studentTimesteps } from "../../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../../models/diffusers/schedule_param.ts";
import { noiseTraced } from "../../models/diffusion/traced.ts";
import { expectPort, type StageDef, StageTypeError } from "../../pipeline/stage.ts";

const Params = z.strictObject({
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  /**
   * Student timesteps; default the N = 4 of `studentTimesteps` with trailing spacing (999, 749, 499, 249), the ones
   * the ADD sampler steps through.
   */
  timesteps: z.array(z.number().int().min(0)).min(1).optional(),
  /** N when `timesteps` is not given. */
  n: z.number().int().positive().default(4),
  /** Require ᾱ = 0 at the largest timestep (the student must start from pure noise). */
  require_pure_noise: z.boolean().default(true),
});
type P = z.output<typeof Params>;

function timesteps(p: P): number[] {
  return p.timesteps ?? Array.from(studentTimesteps(p.n, p.schedule.T));
}

/** The add_noise stage. */
export const addNoise: StageDef<P> = {
  kind: "add_noise",
  doc: "student input x_s = α_s x0 + σ_s ε, s uniform over N student timesteps (zero terminal SNR)",
  role: "traced",
  params: Params,
  inputs: ["x0"],
  types: ({ params, inputs }) => {
    const x0 = expectPort(inputs, "x0", { dtype: "f32", rank: 4 });
    const ts = timesteps(params), s = makeSchedule(params.schedule), T = s.alphasCumprod.length;
    if (ts.some((t) => t >= T)) throw new StageTypeError(`timesteps must be < T = ${T}`, ["params", "timesteps"]);
    const top = Math.max(...ts);
    if (params.require_pure_noise && s.alphasCumprod[top] !== 0) {
      throw new StageTypeError(
        `ᾱ at the largest student timestep ${top} is ${s.alphasCumprod[top]}, not 0: use schedule.zeroTerminalSnr ` +
          `and include T−1 = ${T - 1}, so the student learns to start from pure noise`,
        ["params"],
      );
    }
    const b = x0.shape[0];
    return {
      x_s: { dtype: "f32", shape: [...x0.shape] },
      t: { dtype: "f32", shape: [b] },
      alpha: { dtype: "f32", shape: [b, 1, 1, 1] },
      sigma: { dtype: "f32", shape: [b, 1, 1, 1] },
    };
  },
  trace: (ctx, p, { x0 }) => {
    const ts = timesteps(p), s = makeSchedule(p.schedule), tr = x0.trace, b = x0.shape[0];
    const tab = (f: (a: number) => number) => tr.constant(ts.map((t) => f(s.alphasCumprod[t])), [ts.length]);
    const i = cast(mul(ctx.uniform("s", [b]), ts.length), "i32");
    const alpha = reshape(gather(tab(Math.sqrt), i), [b, 1, 1, 1]);
    const sigma = reshape(gather(tab((a) => Math.sqrt(1 - a)), i), [b, 1, 1, 1]);
    const t = gather(tr.constant(ts, [ts.length]), i);
    return { x_s: noiseTraced(x0, ctx.normal("eps", [...x0.shape]), alpha, sigma), t, alpha, sigma };
  },
};
