/**
 * `add_distill`: ADD's score-distillation loss (Sauer et al. 2023, §3.2, eq. 4). The student's estimate x̂ is
 * re-noised at a teacher timestep t, x̂_t = α_t x̂ + σ_t ε', the frozen teacher denoises it, and the student is pulled
 * towards the teacher's estimate with a stop-gradient:
 *
 *   L_distill = E_{t,ε'} [ c(t) ‖x̂ − sg(x̂_ψ(x̂_t, t))‖² ]
 *
 * Weightings c(t):
 * - `exponential`: c(t) = α_t (the paper's default: noisier targets count less).
 * - `sds`: c(t) = α_t σ_t / 2, so that ∇_x̂ L = σ_t² (ε̂_ψ − ε'), the score-distillation gradient of Poole et al.
 *   2022 with w(t) = σ_t²; x̂ − x̂_ψ = (σ_t/α_t)(ε̂_ψ − ε') makes the two equal.
 * - `nfsd`: noise-free score distillation (Katzir et al. 2023): the gradient is σ_t² δ with
 *   δ = s (ε̂_ψ(x̂_t, c) − ε̂_ψ(x̂_t, ∅)) + [t < 200] ε̂_ψ(x̂_t, ∅) (no negative prompts here, so the t ≥ 200 part of
 *   their δ_D is taken as 0), applied as the surrogate sg(σ_t² δ)·x̂, whose value is not a distance but whose
 *   gradient is that. Needs the empty caption's embedding (`empty_tokens`, `empty_pooled`).
 *
 * `guidance` s > 1 gives the teacher classifier-free guidance in the target, as the public ADD and LCM trainers do:
 * its output is o_∅ + s (o_c − o_∅) from the conditional and the empty caption's passes. Every parameterisation's
 * x̂_ψ is affine in the output with coefficients set by x̂_t, α_t and σ_t alone, so guiding the output guides ε̂, v̂
 * and x̂_ψ alike. (NFSD has its own scale and ignores this one.)
 *
 * λ (2.5 in the paper) is applied where the losses are summed (the `sum` stage).
 *
 * @module
 */
import { z } from "zod";
import { add, mean, mul, square, sub } from "../../engine/math.ts";
import { cast, reshape, stopGradient } from "../../engine/ops.ts";
import { less } from "../../engine/math.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../../models/diffusers/schedule_param.ts";
import { epsFromV, levelsAt, noiseTraced, toX0Traced } from "../../models/diffusion/traced.ts";
import { isDenoiser, notADenoiser } from "../../models/denoiser.ts";
import { expectPort, type StageDef, StageTypeError } from "../../pipeline/stage.ts";

const Params = z.strictObject({
  /** The declared frozen teacher: a denoiser (`unet`, `diffusers_unet`, …). */
  model: z.string(),
  weighting: z.enum(["exponential", "sds", "nfsd"]).default("exponential"),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  /** The teacher's output parameterisation. */
  prediction: z.enum(["eps", "v"]).default("v"),
  /** Teacher timesteps are drawn uniformly from [t_min, t_max]. */
  t_min: z.number().int().min(0).default(20),
  t_max: z.number().int().min(0).default(980),
  /** NFSD's guidance scale s. */
  nfsd_scale: z.number().positive().default(7.5),
  /** Classifier-free guidance of the teacher's target (1: none); above 1 it needs `empty_tokens`/`empty_pooled`. */
  guidance: z.number().min(1).default(1),
});
type P = z.output<typeof Params>;

/** The add_distill stage. */
export const addDistill: StageDef<P> = {
  kind: "add_distill",
  doc: "ADD distillation: re-noise x̂, teacher target with stop-gradient, weighted by c(t) (exponential/sds/nfsd)",
  role: "traced",
  params: Params,
  inputs: ["x0_hat", "tokens?", "pooled?", "empty_tokens?", "empty_pooled?"],
  models: (p) => [p.model],
  types: ({ params, inputs, models }) => {
    if (!isDenoiser(models[params.model])) {
      throw new StageTypeError(notADenoiser(params.model, models[params.model]), ["params", "model"]);
    }
    expectPort(inputs, "x0_hat", { dtype: "f32", rank: 4 });
    const T = params.schedule.T;
    if (!(params.t_min <= params.t_max && params.t_max < T)) {
      throw new StageTypeError(`need t_min ≤ t_max < T = ${T}`, ["params", "t_max"]);
    }
    const needsEmpty = params.weighting === "nfsd" ? "weighting nfsd" : params.guidance > 1 ? "guidance > 1" : null;
    if (needsEmpty && (!inputs.empty_tokens && !inputs.empty_pooled)) {
      throw new StageTypeError(`${needsEmpty} needs the empty caption's embedding (empty_tokens/empty_pooled)`, [
        "inputs",
      ]);
    }
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, { x0_hat: x, tokens, pooled, empty_tokens, empty_pooled }) => {
    const s = makeSchedule(p.schedule), b = x.shape[0];
    const span = p.t_max - p.t_min + 1;
    const ti = cast(add(mul(ctx.uniform("t", [b]), span), p.t_min), "i32");
    const { alpha, sigma } = levelsAt(s.alphasCumprod, ti);
    const eps = ctx.normal("eps", [...x.shape]);
    const xt = noiseTraced(x, eps, alpha, sigma);
    const t = cast(ti, "f32");
    const cond = (tok?: Tensor, pool?: Tensor) => ({
      ...(tok ? { tokens: tok } : {}),
      ...(pool ? { pooled: pool } : {}),
    });
    // The teacher is frozen and its target is a constant for the student: no gradient flows through it.
    const out = stopGradient(ctx.apply(p.model, { x: xt, t, ...cond(tokens, pooled) }).out);
    const perExample = (d: Tensor) => mean(d, [1, 2, 3]); // [B]
    if (p.weighting !== "nfsd") {
      const guided = p.guidance > 1
        ? guide(out, ctx.apply(p.model, { x: xt, t, ...cond(empty_tokens, empty_pooled) }).out, p.guidance)
        : out;
      // The whole estimate is a constant, not only the network's output: converting it to x̂_ψ goes through x̂_t,
      // which depends on x̂ (for ε-prediction x̂ − x̂_ψ would not depend on x̂ at all).
      const target = stopGradient(toX0Traced(p.prediction, guided, xt, alpha, sigma));
      const c = p.weighting === "exponential" ? alpha : mul(mul(alpha, sigma), 0.5);
      return { loss: mean(mul(reshape(c, [b]), perExample(square(sub(x, target))))) };
    }
    const uncond = stopGradient(ctx.apply(p.model, { x: xt, t, ...cond(empty_tokens, empty_pooled) }).out);
    const epsOf = (o: Tensor) => (p.prediction === "v" ? epsFromV(xt, o, alpha, sigma) : o);
    const ec = epsOf(out), eu = epsOf(uncond);
    const low = reshape(cast(less(ti, 200), "f32"), [b, 1, 1, 1]);
    const delta = add(mul(sub(ec, eu), p.nfsd_scale), mul(eu, low));
    const g = stopGradient(mul(square(sigma), delta));
    // Same scale as the distance forms: d/dx̂ of the mean is σ_t² δ / (number of elements).
    return { loss: mean(mul(g, x)) };
  },
};

/** Classifier-free guidance of a teacher output: o_∅ + s (o_c − o_∅), a constant for the student. */
function guide(conditional: Tensor, unconditional: Tensor, scale: number): Tensor {
  const u = stopGradient(unconditional);
  return stopGradient(add(u, mul(sub(conditional, u), scale)));
}
