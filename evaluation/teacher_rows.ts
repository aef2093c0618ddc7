/**
 * Stored evaluation rows of a frozen teacher. A teacher's rows depend only on its weights and the report's settings,
 * so reports reuse them by key (a SHA-256 of both, `weightsKey`). Two places hold them:
 *
 * - the shipped file a config names (`teacher_cache`, such as models/teacher/eval_cache.json), which runs only
 *   read: the source tree is never written at run time;
 * - the run's cache folder (`<run.cache>/teacher_rows/<key>.json`), where a run stores rows it had to compute.
 *
 * `deno task ship:teacher-rows <config>` (ship_teacher_rows.ts) copies the cached rows of the config's teacher into
 * the shipped file, so a clone gets them without computing them.
 *
 * @module
 */
import { join } from "node:path";
import { writeAtomic } from "../models/png_grid.ts";

/** Rows stored under one key. */
export interface StoredRows<R> {
  date: string;
  executor: string;
  rows: R[];
}

/** A cache folder's entry: the rows, their key, the shipped file they are for, and the teacher's weights hash. */
export interface CachedRows<R> extends StoredRows<R> {
  key: string;
  for: string;
  /** `weightsKey({}, weights)` of the teacher, so the ship task copies only the rows of the config's teacher. */
  teacher: string;
}

/** The file of a key in a cache folder. */
export const cachedRowsFile = (dir: string, key: string): string =>
  join(dir, "teacher_rows", `${key.slice(0, 32)}.json`);

/**
 * Reads a shipped file: `{ key: { date, executor, rows } }`, or the older forms `{ key, date, executor, rows }` (one
 * key) and `{ key: { date, executor, row } }` (one row a key). Absent or unreadable: empty.
 */
export async function readShipped<R>(file: string): Promise<Record<string, StoredRows<R>>> {
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(file));
  } catch {
    return {};
  }
  if (!json || typeof json !== "object") return {};
  const o = json as Record<string, unknown>;
  if (typeof o.key === "string" && Array.isArray(o.rows)) {
    return { [o.key]: { date: String(o.date), executor: String(o.executor), rows: o.rows as R[] } };
  }
  const out: Record<string, StoredRows<R>> = {};
  for (const [k, v] of Object.entries(o)) {
    const e = v as { date?: unknown; executor?: unknown; rows?: unknown; row?: unknown };
    const rows = Array.isArray(e?.rows) ? e.rows : e?.row !== undefined ? [e.row] : null;
    if (rows) out[k] = { date: String(e.date), executor: String(e.executor), rows: rows as R[] };
  }
  return out;
}

/** The rows stored under `key`: the shipped file's first, then the cache folder's; with where they came from. */
export async function findRows<R>(
  key: string,
  shipped: string | null,
  cacheDir: string | null,
): Promise<(StoredRows<R> & { from: string }) | null> {
  if (shipped) {
    const hit = (await readShipped<R>(shipped))[key];
    if (hit) return { ...hit, from: shipped };
  }
  if (cacheDir) {
    const file = cachedRowsFile(cacheDir, key);
    try {
      const c = JSON.parse(await Deno.readTextFile(file)) as CachedRows<R>;
      if (c.key === key && Array.isArray(c.rows)) {
        return { date: c.date, executor: c.executor, rows: c.rows, from: file };
      }
    } catch {
      // not cached yet, or unreadable: computed again
    }
  }
  return null;
}

/** Stores rows in the cache folder; the file written, or an error message where the folder cannot be written. */
export async function storeRows<R>(
  cacheDir: string,
  entry: CachedRows<R>,
): Promise<{ file: string } | { error: string }> {
  const file = cachedRowsFile(cacheDir, entry.key);
  try {
    await Deno.mkdir(join(cacheDir, "teacher_rows"), { recursive: true });
    await writeAtomic(file, JSON.stringify(entry, null, 2) + "\n");
    return { file };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/** Every cache-folder entry meant for `shipped` whose teacher hash is `teacher`. */
export async function cachedFor<R>(cacheDir: string, shipped: string, teacher: string): Promise<CachedRows<R>[]> {
  const out: CachedRows<R>[] = [];
  try {
    for await (const e of Deno.readDir(join(cacheDir, "teacher_rows"))) {
      if (!e.isFile || !e.name.endsWith(".json")) continue;
      try {
        const c = JSON.parse(await Deno.readTextFile(join(cacheDir, "teacher_rows", e.name))) as CachedRows<R>;
        if (c.for === shipped && c.teacher === teacher && Array.isArray(c.rows)) out.push(c);
      } catch {
        // a stray or half-written file is skipped
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => a.key.localeCompare(b.key));
}

/** Adds `entries` to the shipped file (its other keys kept), in the one-file-many-keys form; the keys added. */
export async function shipRows<R>(shipped: string, entries: CachedRows<R>[]): Promise<string[]> {
  const all = await readShipped<R>(shipped);
  for (const e of entries) all[e.key] = { date: e.date, executor: e.executor, rows: e.rows };
  await writeAtomic(shipped, JSON.stringify(all, null, 2) + "\n");
  return entries.map((e) => e.key);
}
