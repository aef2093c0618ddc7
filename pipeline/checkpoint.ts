/**
 * Checkpoint folders: `<out>/checkpoints/step-00000100/` holding safetensors and JSON files. A folder is written
 * whole under a temporary name and then renamed, so a run killed mid-write leaves only a stray temporary folder
 * (ignored and cleaned up later) and the previous checkpoint intact.
 *
 * @module
 */

/** A complete checkpoint on disk. */
export interface CheckpointRef {
  dir: string;
  step: number;
}

const PATTERN = /^step-(\d{8})$/;

/** The folder that holds a run's checkpoints. */
export const checkpointRoot = (out: string): string => `${out}/checkpoints`;

/** Writes `files` as a new checkpoint for `step` atomically and keeps only the newest `keep` checkpoints. */
export async function writeCheckpoint(
  out: string,
  step: number,
  files: Record<string, Uint8Array | string>,
  keep: number,
): Promise<string> {
  const root = checkpointRoot(out);
  await Deno.mkdir(root, { recursive: true });
  const name = `step-${String(step).padStart(8, "0")}`;
  const tmp = `${root}/.tmp-${name}-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp);
  try {
    for (const [file, data] of Object.entries(files)) {
      if (typeof data === "string") await Deno.writeTextFile(`${tmp}/${file}`, data);
      else await Deno.writeFile(`${tmp}/${file}`, data);
    }
    // The marker is written last: a folder without it was never finished.
    await Deno.writeTextFile(`${tmp}/COMPLETE`, `${step}\n`);
    const final = `${root}/${name}`;
    await Deno.remove(final, { recursive: true }).catch(() => {});
    await Deno.rename(tmp, final);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  await prune(root, keep);
  return `${root}/${name}`;
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

async function prune(root: string, keep: number): Promise<void> {
  const all = await listCheckpoints(root.replace(/\/checkpoints$/, ""));
  for (const ref of all.slice(0, Math.max(0, all.length - keep))) await Deno.remove(ref.dir, { recursive: true });
  for await (const e of Deno.readDir(root)) {
    // Leftovers of a killed write (never the one being written: that one is renamed before pruning).
    if (e.name.startsWith(".tmp-")) await Deno.remove(`${root}/${e.name}`, { recursive: true }).catch(() => {});
  }
}
