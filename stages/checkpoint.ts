/**
 * `checkpoint`: writes the run's whole training state — every trained model's weights and EMA as safetensors, the
 * optimizers' state, every stage's state and the step in a state file, the resolved config — every N steps, at the
 * end, and when the run is interrupted, atomically, keeping the newest `keep`.
 *
 * @module
 */
import { z } from "zod";
import { latestCheckpoint, saveSnapshot } from "../pipeline/checkpoint.ts";
import type { EffectContext, StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** How many checkpoints to keep (oldest removed first). */
  keep: z.number().int().positive().default(3),
});
type P = z.output<typeof Params>;

const save = async (ctx: EffectContext, p: P) => {
  await saveSnapshot(ctx.out, await ctx.snapshot(), p.keep);
};

/** The checkpoint stage. */
export const checkpoint: StageDef<P> = {
  kind: "checkpoint",
  doc: "atomic checkpoint of weights, EMA, optimizer and stage state and config; keeps the last K",
  role: "effect",
  params: Params,
  inputs: [],
  cadence: { always: ["end"] },
  types: () => ({}),
  effect: save,
  // An interrupt right after this stage fired has nothing new to save.
  interrupted: async (ctx, p) => {
    if ((await latestCheckpoint(ctx.out))?.step !== ctx.step) await save(ctx, p);
  },
};
