/**
 * `checkpoint`: writes a checkpoint every N steps and at the end — every model's weights and EMA as safetensors,
 * optimizer moments and the step in a state file, the resolved config — atomically, keeping the newest `keep`.
 *
 * @module
 */
import { z } from "zod";
import type { StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** How many checkpoints to keep (oldest removed first). */
  keep: z.number().int().positive().default(3),
});

/** The checkpoint stage. */
export const checkpoint: StageDef<z.output<typeof Params>> = {
  kind: "checkpoint",
  doc: "atomic checkpoint of weights, EMA, optimizer state and config; keeps the last K",
  role: "effect",
  params: Params,
  inputs: [],
  alsoLast: true,
  types: () => ({}),
  effect: async (ctx, p) => {
    await ctx.saveCheckpoint(p.keep);
  },
};
