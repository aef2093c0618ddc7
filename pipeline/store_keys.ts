/**
 * Names of the resident tensors a run keeps on its executor, shared by the scheduler (which holds them), checkpoints
 * (which save them under these names) and resumes (which look them up).
 *
 * @module
 */

/** Store keys of a model's state. */
export const storeKey = {
  model: (m: string): string => `model.${m}`,
  ema: (m: string): string => `ema.${m}`,
  /** An optimizer stage's state slot for a model (AdamW's `m` and `v`). */
  moment: (opt: string, m: string, slot: string): string => `opt.${opt}.${m}.${slot}`,
};
