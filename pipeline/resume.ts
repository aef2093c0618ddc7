/**
 * What a resume reads back: a checkpoint's state, checked against the plan (every key present, every size right),
 * and the metrics file cut back to the checkpoint's step.
 *
 * @module
 */
import { layoutOf } from "../engine/pack.ts";
import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import type { CheckpointRef, CheckpointState } from "./checkpoint.ts";
import { RunError } from "./errors.ts";
import { type Plan, storedShapes } from "./plan.ts";
import { packedKeys } from "./trace_phase.ts";
import { storeKey } from "./store_keys.ts";
import { RunMemory, type StateArray } from "./stage_state.ts";

/** A checkpoint read for a resume. */
export interface ResumeState {
  state: CheckpointState;
  /**
   * Packed store entries by key (`packedKeys`), each as the checkpoint holds it: one buffer, or the chunks of a model
   * that was split into several (`<key>.0`, `<key>.1`, …) by the limit of the executor that trained it.
   */
  tensors: Record<string, Float32Array[]>;
  /** Stage state by its checkpoint key. */
  stageState: [string, StateArray][];
}

/** Reads a checkpoint's state for a resume and checks it against the plan: every key present, every size right. */
export async function readResumeState(
  ref: CheckpointRef,
  plan: Plan,
  seed: number,
  executor: string,
  warn: (l: string) => void,
): Promise<ResumeState> {
  const file = `${ref.dir}/state.safetensors`, json = `${ref.dir}/state.json`;
  let state: CheckpointState;
  try {
    state = JSON.parse(await Deno.readTextFile(json));
  } catch (e) {
    throw new RunError(`${json}: cannot read the checkpoint's state (${(e as Error).message.split("\n")[0]})`);
  }
  if (state.step !== ref.step) {
    throw new RunError(`${json}: step ${state.step}, but the folder is for step ${ref.step}`);
  }
  const { tensors } = await readSafetensors(file);
  const need = new Map<string, number>(), optional = new Map<string, number>();
  const trained = new Set(plan.phases.flatMap((p) => p.updates));
  for (const [key, m] of packedKeys(plan)) {
    const n = layoutOf(storedShapes(plan.models[m])).total;
    // Frozen models are not saved (they come from their init); an older checkpoint's copy is accepted and ignored.
    const required = key === storeKey.model(m) ? trained.has(m) : key !== storeKey.ema(m);
    (required ? need : optional).set(key, n);
  }
  const out: Record<string, Float32Array[]> = {}, used = new Set<string>();
  for (const [key, n] of [...need, ...optional]) {
    const names = savedNames(tensors, key);
    if (!names.length) {
      if (!need.has(key)) continue;
      throw new RunError(
        `${file}: no "${key}" (${n} values) in the checkpoint; the config's models or optimizers changed since it ` +
          `was written (see ${ref.dir}/config.yaml)`,
      );
    }
    const got = names.reduce((a, k) => a + tensors[k].shape.reduce((x, y) => x * y, 1), 0);
    if (got !== n) {
      throw new RunError(
        `${file}: "${key}" has ${got} values, the config needs ${n}; the model's shape changed since the ` +
          `checkpoint was written (see ${ref.dir}/config.yaml)`,
      );
    }
    out[key] = names.map((k) => toFloat32(tensors[k]));
    for (const k of names) used.add(k);
  }
  const stageState: [string, StateArray][] = [];
  for (const [key, t] of Object.entries(tensors)) {
    if (!RunMemory.isStateKey(key)) continue;
    if (!(t.data instanceof Float32Array || t.data instanceof Int32Array)) {
      throw new RunError(`${file}: stage state "${key}" is ${t.dtype}, expected F32 or I32`);
    }
    stageState.push([key, t.data]);
  }
  const unused = Object.keys(tensors).filter((k) => !used.has(k) && !RunMemory.isStateKey(k));
  if (unused.length) warn(`${file}: warning: ignoring ${unused.join(", ")} (not in this config)`);
  if (state.seed !== seed) {
    warn(
      `${json}: warning: the checkpoint was trained with seed ${state.seed}, this run has seed ${seed}; ` +
        `it will not reproduce an uninterrupted run`,
    );
  }
  if (state.executor !== executor && executor !== "auto") {
    warn(`${json}: warning: the checkpoint was trained on ${state.executor}, this run uses ${executor}`);
  }
  return { state, tensors: out, stageState };
}

/** The names `key` is saved under: itself, or its chunks `key.0`, `key.1`, … in order; none when absent. */
function savedNames(tensors: Record<string, unknown>, key: string): string[] {
  if (key in tensors) return [key];
  const names: string[] = [];
  while (`${key}.${names.length}` in tensors) names.push(`${key}.${names.length}`);
  // One buffer saved as "<key>.0" alone is not a split (chunking names a single buffer by its key).
  return names.length > 1 ? names : [];
}

/** Keeps the rows of `metrics.jsonl` up to `step` (a resume rewrites what came after its checkpoint). */
export async function truncateMetrics(file: string, step: number): Promise<void> {
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return;
  }
  const keep = text.split("\n").filter((l) => {
    try {
      return l.trim() !== "" && JSON.parse(l).step <= step;
    } catch {
      return false; // a row cut short by a kill
    }
  });
  const tmp = `${file}.tmp`;
  await Deno.writeTextFile(tmp, keep.map((l) => l + "\n").join(""));
  await Deno.rename(tmp, file);
}
