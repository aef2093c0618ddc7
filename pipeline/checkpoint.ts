/**
 * Checkpoint folders: `<out>/checkpoints/step-00000100/` holding safetensors and JSON files. A folder is written
 * whole under a temporary name, its files flushed to disk, and then renamed, so a run killed mid-write leaves only a
 * stray temporary folder (ignored, and removed by the next write) and the previous checkpoints intact. Old
 * checkpoints are likewise renamed away before they are deleted, so a half-deleted folder is never taken for a
 * complete one.
 *
 * What a checkpoint holds is one tree, the run's `RunSnapshot`: the step, the seed and root generator, the latest
 * metrics, every resident tensor that training changes (trained models, EMAs, optimizer state), every stage's state,
 * and the resolved config. `checkpointFiles` lays it out: `state.safetensors` (the store and stage state, which a
 * resume reads), `state.json`, `config.yaml`, and each trained model (and its EMA) as safetensors a user can load.
 *
 * @module
 */
import { stringify } from "yaml";
import { chunkNames, type Layout } from "../engine/pack.ts";
import { encodeSafetensors, type TensorInput } from "../engine/safetensors.ts";
import { storeKey } from "./store_keys.ts";
import type { StateArray } from "./stage_state.ts";

/** What a checkpoint's `state.json` holds. */
export interface CheckpointState {
  /** Steps completed when it was taken; a resume continues with step + 1. */
  step: number;
  /** The run's seed; a resume with another one warns. */
  seed: number;
  /** Name of the executor that trained it (`cpu`, `wasm`, `webgpu`, `reference`); a resume on another one warns. */
  executor: string;
  /** The root generator; every stream is derived from it by name and step (see pipeline/run.ts). */
  rng: { seed: string; counter: string };
  /** Latest value of every logged scalar, restored on resume so metrics rows continue unchanged. */
  metrics: Record<string, number>;
}

/** The whole training state of a run after a step: what a checkpoint saves. */
export interface RunSnapshot extends CheckpointState {
  /** Resident tensors that training changes, by store key (frozen models are rebuilt from their init instead). */
  store: Record<string, Float32Array>;
  /** Stage state by its checkpoint key (`stage.<stage>.<key>`). */
  stageState: [string, StateArray][];
  /** Layouts of the trained models, each also written as a file of its own. */
  trained: Record<string, Layout>;
  /**
   * The buffers of trained models split into several by the executor's limit (engine/pack.ts `chunkLayout`), whose
   * store entries are `<key>.0`, `<key>.1`, …; a model absent here is one buffer under its key.
   */
  chunks?: Record<string, Layout[]>;
  /** The config with every default filled in. */
  config: unknown;
}

/** The files of a checkpoint of `s`. */
export function checkpointFiles(s: RunSnapshot): Record<string, Uint8Array | string> {
  const files: Record<string, Uint8Array | string> = {};
  const state: Record<string, TensorInput> = {};
  for (const [key, data] of Object.entries(s.store)) state[key] = { data, shape: [data.length] };
  for (const [key, data] of s.stageState) state[key] = { data, shape: [data.length] };
  files["state.safetensors"] = encodeSafetensors(state, { step: String(s.step), format: "add-scheduler-store/1" });
  // A model's own file holds its weights by name, whatever buffers they were packed in.
  const asFile = (m: string, flats: Float32Array[]) => {
    const tensors = Object.fromEntries(
      (s.chunks?.[m] ?? [s.trained[m]]).flatMap((c, i) =>
        c.entries.map((e) => [e.path, { data: flats[i].subarray(e.offset, e.offset + e.size), shape: e.shape }])
      ),
    );
    return encodeSafetensors(tensors, { step: String(s.step), model: m });
  };
  const buffers = (m: string, key: string) => chunkNames(key, s.chunks?.[m]?.length ?? 1).map((k) => s.store[k]);
  for (const m of Object.keys(s.trained)) {
    files[`${m}.safetensors`] = asFile(m, buffers(m, storeKey.model(m)));
    const e = buffers(m, storeKey.ema(m));
    if (e.every((b) => b)) files[`${m}.ema.safetensors`] = asFile(m, e);
  }
  const info: CheckpointState = { step: s.step, seed: s.seed, executor: s.executor, rng: s.rng, metrics: s.metrics };
  files["state.json"] = JSON.stringify(info, null, 2) + "\n";
  files["config.yaml"] = stringify(s.config);
  return files;
}

/** Writes `s` as the checkpoint of its step, keeping the newest `keep`; returns its folder. */
export function saveSnapshot(out: string, s: RunSnapshot, keep: number): Promise<string> {
  return writeCheckpoint(out, s.step, checkpointFiles(s), keep);
}

/** A complete checkpoint on disk. */
export interface CheckpointRef {
  /** Its folder, `<out>/checkpoints/step-NNNNNNNN`. */
  dir: string;
  /** The step its folder is named after. */
  step: number;
}

const PATTERN = /^step-(\d{8})$/;
/** Prefix of folders being written or deleted; never listed as checkpoints. */
const TMP = ".tmp-";

/** The folder that holds a run's checkpoints. */
export const checkpointRoot = (out: string): string => `${out}/checkpoints`;

const rand = () => crypto.randomUUID().slice(0, 8);

/** Writes a file and flushes it, so that the rename that publishes the folder never precedes its data. */
async function writeDurable(path: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const f = await Deno.open(path, { write: true, createNew: true });
  try {
    for (let off = 0; off < bytes.length;) off += await f.write(bytes.subarray(off));
    await f.syncData();
  } finally {
    f.close();
  }
}

/**
 * Writes `files` as a new checkpoint for `step` atomically and keeps only the newest `keep` checkpoints. Returns the
 * checkpoint's folder.
 */
export async function writeCheckpoint(
  out: string,
  step: number,
  files: Record<string, Uint8Array | string>,
  keep: number,
): Promise<string> {
  const root = checkpointRoot(out);
  await Deno.mkdir(root, { recursive: true });
  const name = `step-${String(step).padStart(8, "0")}`;
  const tmp = `${root}/${TMP}${name}-${rand()}`;
  const final = `${root}/${name}`;
  await Deno.mkdir(tmp);
  try {
    for (const [file, data] of Object.entries(files)) await writeDurable(`${tmp}/${file}`, data);
    // The marker is written last: a folder without it was never finished.
    await writeDurable(`${tmp}/COMPLETE`, `${step}\n`);
    // A folder for this step exists only when the same step is saved twice in one session (an interrupt right after
    // the checkpoint stage fired); move it aside rather than delete it in place.
    const aside = `${root}/${TMP}replaced-${name}-${rand()}`;
    const replaced = await Deno.rename(final, aside).then(() => true, () => false);
    await Deno.rename(tmp, final);
    if (replaced) await Deno.remove(aside, { recursive: true });
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  await prune(out, keep);
  return final;
}

/** Complete checkpoints, oldest first. */
export async function listCheckpoints(out: string): Promise<CheckpointRef[]> {
  const root = checkpointRoot(out);
  const refs: CheckpointRef[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      const m = e.isDirectory ? e.name.match(PATTERN) : null;
      if (!m) continue;
      try {
        await Deno.stat(`${root}/${e.name}/COMPLETE`);
        refs.push({ dir: `${root}/${e.name}`, step: Number(m[1]) });
      } catch {
        // incomplete: skipped
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return refs.sort((a, b) => a.step - b.step);
}

/** The newest complete checkpoint, or null. */
export async function latestCheckpoint(out: string): Promise<CheckpointRef | null> {
  const all = await listCheckpoints(out);
  return all.length ? all[all.length - 1] : null;
}

async function prune(out: string, keep: number): Promise<void> {
  const root = checkpointRoot(out);
  const all = await listCheckpoints(out);
  for (const ref of all.slice(0, Math.max(0, all.length - keep))) {
    // Renamed first: a kill during the recursive delete must not leave a "complete" folder with files missing.
    const doomed = `${root}/${TMP}pruned-${ref.dir.replace(/^.*\//, "")}-${rand()}`;
    await Deno.rename(ref.dir, doomed);
  }
  for await (const e of Deno.readDir(root)) {
    // Pruned folders and leftovers of killed writes (never the one being written: it was renamed before pruning).
    if (e.name.startsWith(TMP)) await Deno.remove(`${root}/${e.name}`, { recursive: true }).catch(() => {});
  }
}
