/**
 * `optimizer`: closes an update phase. Differentiates its scalar `loss` and updates the named models with AdamW
 * (decoupled weight decay; β1 = 0 allowed, as ADD's discriminator uses), optionally clipping by global norm, with an
 * optional warm-up and linear or cosine learning-rate decay (engine/optim.ts `lrFactor`).
 * Its cadence (`every`) is the phase's.
 *
 * @module
 */
import { z } from "zod";
import { mul } from "../engine/math.ts";
import { adamw, clipByGlobalNorm, lrFactor } from "../engine/optim.ts";
import { expectPort, type OptimizerRule, type StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** Models whose parameters this optimizer updates. */
  models: z.array(z.string()).min(1),
  lr: z.number().positive().default(1e-3),
  beta1: z.number().min(0).max(1).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.999),
  eps: z.number().positive().default(1e-8),
  weight_decay: z.number().min(0).default(0),
  /** Clip gradients to this global L2 norm (off when absent). */
  clip_norm: z.number().positive().optional(),
  /**
   * Learning-rate schedule over this optimizer's updates: `constant`, or `linear`/`cosine` decay to
   * `lr · final_lr_fraction` at update `decay_steps` (default: the run's steps, divided by the cadence), after
   * `warmup` updates of linear warm-up. The rate in use is logged as `<stage>.lr`.
   */
  schedule: z.enum(["constant", "linear", "cosine"]).default("constant"),
  warmup: z.number().int().min(0).default(0),
  decay_steps: z.number().int().positive().optional(),
  final_lr_fraction: z.number().min(0).max(1).default(0),
});

type P = z.output<typeof Params>;

/** AdamW with optional clipping and schedule; its state per model is the two moments, `m` and `v`, from zero. */
const rule: OptimizerRule<P> = {
  init: (_p, size) => ({ m: new Float32Array(size), v: new Float32Array(size) }),
  update: (ctx, op, models) => {
    let gs = models.map((s) => s.grad);
    if (op.clip_norm !== undefined) {
      const c = clipByGlobalNorm(gs, op.clip_norm);
      gs = c.grads;
      ctx.metric("grad_norm", c.norm);
    }
    const factor = lrFactor(ctx.count, {
      kind: op.schedule,
      warmup: op.warmup,
      decaySteps: op.schedule === "constant" ? undefined : op.decay_steps ?? ctx.runUpdates,
      finalFraction: op.final_lr_fraction,
    });
    const lr = typeof factor === "number" ? op.lr * factor : mul(factor, op.lr);
    if (typeof lr !== "number") ctx.metric("lr", lr);
    return models.map((s, i) => {
      const r = adamw(s.param, gs[i], s.state.m, s.state.v, ctx.count, {
        lr,
        beta1: op.beta1,
        beta2: op.beta2,
        eps: op.eps,
        weightDecay: op.weight_decay,
      });
      return { param: r.p, state: { m: r.m, v: r.v } };
    });
  },
};

/** The optimizer stage. */
export const optimizer: StageDef<P> = {
  kind: "optimizer",
  doc: "AdamW update of its models from the gradient of its loss; one compiled graph per optimizer",
  role: "optimizer",
  params: Params,
  inputs: ["loss"],
  models: (p) => p.models,
  optimizer: rule,
  types: ({ inputs }) => {
    expectPort(inputs, "loss", { dtype: "f32", shape: [] });
    return {};
  },
};
