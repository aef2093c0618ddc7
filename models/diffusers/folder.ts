/**
 * A diffusers model folder as `save_pretrained` writes it: `config.json` (its `_class_name` names the model) and the
 * weights, `diffusion_pytorch_model[.<variant>].safetensors` or, sharded, the shards a
 * `diffusion_pytorch_model.safetensors.index[.<variant>].json` maps each key to. Weights are F32, F16 or BF16 on disk
 * and float32 once read. A hub id (`org/name`, with an optional `subfolder` such as `unet`) is a folder downloaded
 * once into a cache (`downloadHubFolder`, online) and read from there afterwards (`locateFolder`, offline).
 *
 * Everything but the download is synchronous: a model kind's `shapes` and `init` are, and planning checks the folder
 * (config and every key and shape of the weights, from the headers alone) before anything is allocated.
 *
 * @module
 */
import { decodeSafetensors, type SafetensorsDType, toFloat32 } from "../../engine/safetensors.ts";

/** One line naming the file or hub id and what is wrong with it. */
export class DiffusersFolderError extends Error {
  /** An error about `source` (a path or a hub id); `status`: the hub's HTTP status when it answered with an error. */
  constructor(source: string, problem: string, readonly status?: number) {
    super(`${source}: ${problem}`);
    this.name = "DiffusersFolderError";
  }
}

const WEIGHTS = "diffusion_pytorch_model";
/** Where downloads go unless told otherwise; `.cache/` is git-ignored. */
export const HUB_CACHE = ".cache/hub";
const FLOATS: readonly string[] = ["F32", "F16", "BF16", "F64"];

/** The weight files' stem of transformers' models (a pipeline's `text_encoder/`), where diffusers' is `WEIGHTS`. */
export const TRANSFORMERS_WEIGHTS = "model";

/**
 * The weight file names for `variant`, as diffusers spells them: the variant goes before the last extension
 * (`diffusion_pytorch_model.fp16.safetensors`, `diffusion_pytorch_model.safetensors.index.fp16.json`). `stem` is
 * `model` for a transformers model such as a text encoder.
 */
export function weightNames(variant?: string, stem = WEIGHTS): { single: string; index: string } {
  const v = variant ? `.${variant}` : "";
  return { single: `${stem}${v}.safetensors`, index: `${stem}.safetensors.index${v}.json` };
}

/** `org/name`: what the hub's ids look like (a local folder of that name wins; see `locateFolder`). */
export function isHubId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(s) && !s.split("/").some((p) => p === "." || p === "..");
}

function checkSubfolder(subfolder: string | undefined): string {
  if (!subfolder) return "";
  if (!/^[\w.-]+(\/[\w.-]+)*$/.test(subfolder) || subfolder.split("/").some((p) => p === "." || p === "..")) {
    throw new DiffusersFolderError(`subfolder "${subfolder}"`, "expected a relative path such as unet");
  }
  return subfolder;
}

/** The download address of `file` of hub model `id` (main branch). */
export function hubUrl(id: string, subfolder: string | undefined, file: string): string {
  const sub = checkSubfolder(subfolder);
  return `https://huggingface.co/${id}/resolve/main/${sub ? `${sub}/` : ""}${file}`;
}

/** The folder a hub model's files are cached in. */
export function hubCacheDir(id: string, subfolder?: string, cacheRoot = HUB_CACHE): string {
  const sub = checkSubfolder(subfolder);
  return `${cacheRoot.replace(/\/+$/, "")}/${id}${sub ? `/${sub}` : ""}`;
}

const isDir = (p: string) => {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
};
const isFile = (p: string) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
};

/** Where a folder or hub id is read from, and the hub id when it is one. */
export interface Located {
  /** The folder holding config.json. */
  dir: string;
  /** The hub id, when the path was one. */
  hubId?: string;
}

/**
 * The folder that `path` (a folder, relative to the working directory, or a hub id) and `subfolder` name. A hub id must
 * have been downloaded into `cacheRoot` already: this never goes online.
 */
export function locateFolder(path: string, opts: { subfolder?: string; cacheRoot?: string } = {}): Located {
  const sub = checkSubfolder(opts.subfolder);
  if (isDir(path)) {
    const dir = sub ? `${path.replace(/\/+$/, "")}/${sub}` : path;
    if (!isDir(dir)) throw new DiffusersFolderError(path, `no subfolder "${sub}"`);
    if (!isFile(`${dir}/config.json`)) {
      throw new DiffusersFolderError(dir, "no config.json: not a diffusers model folder");
    }
    return { dir };
  }
  if (!isHubId(path)) throw new DiffusersFolderError(path, "no such folder");
  const dir = hubCacheDir(path, sub, opts.cacheRoot);
  if (!isFile(`${dir}/config.json`)) {
    const flag = sub ? ` --subfolder ${sub}` : "";
    throw new DiffusersFolderError(
      `hub id "${path}"`,
      `not downloaded (no ${dir}/config.json, and no such local folder); while online run: deno task diffusers fetch ${path}${flag}`,
    );
  }
  return { dir, hubId: path };
}

/** A folder's `config.json` and the class it names. */
export function readFolderConfig(dir: string): { className: string; json: Record<string, unknown>; file: string } {
  const file = `${dir}/config.json`;
  let json: unknown;
  try {
    json = JSON.parse(Deno.readTextFileSync(file));
  } catch (e) {
    throw new DiffusersFolderError(file, `cannot read it (${(e as Error).message.split("\n")[0]})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new DiffusersFolderError(file, "expected a JSON object");
  }
  const className = (json as Record<string, unknown>)._class_name;
  if (typeof className !== "string") throw new DiffusersFolderError(file, "no _class_name");
  return { className, json: json as Record<string, unknown>, file };
}

/** The weights of a folder: which file holds each key, and the file (or index) that errors name. */
export interface WeightMap {
  /** The single weight file, or the index of a sharded one. */
  source: string;
  /** Key → the file that holds it. */
  files: Record<string, string>;
  /** Key → dtype and shape, from the headers. */
  entries: Record<string, { dtype: SafetensorsDType; shape: number[] }>;
}

function readFull(f: Deno.FsFile, buf: Uint8Array, file: string) {
  for (let at = 0; at < buf.length;) {
    const n = f.readSync(buf.subarray(at));
    if (n === null) throw new DiffusersFolderError(file, "truncated safetensors header");
    at += n;
  }
}

/** A safetensors file's header (dtype and shape of each key) without reading its data. */
export function readHeader(file: string): Record<string, { dtype: SafetensorsDType; shape: number[] }> {
  const f = Deno.openSync(file);
  try {
    const len = new Uint8Array(8);
    readFull(f, len, file);
    const n = new DataView(len.buffer).getBigUint64(0, true);
    // diffusers' largest headers are a few hundred kB; anything near this is not a safetensors file.
    if (n > 100_000_000n) throw new DiffusersFolderError(file, `header length ${n} is not plausible`);
    const buf = new Uint8Array(Number(n));
    readFull(f, buf, file);
    const header = JSON.parse(new TextDecoder().decode(buf)) as Record<
      string,
      { dtype: SafetensorsDType; shape: number[] }
    >;
    delete header.__metadata__;
    return header;
  } catch (e) {
    if (e instanceof DiffusersFolderError) throw e;
    throw new DiffusersFolderError(file, `cannot read the safetensors header (${(e as Error).message.split("\n")[0]})`);
  } finally {
    f.close();
  }
}

function variantsIn(dir: string, stem: string): string[] {
  const found = new Set<string>();
  const name = new RegExp(`^${stem}\\.(?:safetensors\\.index\\.)?([\\w-]+)\\.(?:safetensors|json)$`);
  for (const e of Deno.readDirSync(dir)) {
    const m = name.exec(e.name);
    // A shard of a variant is named `<variant>-00001-of-00002`.
    if (m && m[1] !== "safetensors") found.add(m[1].replace(/-\d+-of-\d+$/, ""));
  }
  return [...found].sort();
}

function shardMap(dir: string, index: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(Deno.readTextFileSync(index));
  } catch (e) {
    throw new DiffusersFolderError(index, `cannot read it (${(e as Error).message.split("\n")[0]})`);
  }
  const map = (json as { weight_map?: unknown })?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new DiffusersFolderError(index, "no weight_map object");
  }
  const files: Record<string, string> = {};
  for (const [k, v] of Object.entries(map)) {
    if (typeof v !== "string" || !/^[\w.-]+$/.test(v)) {
      throw new DiffusersFolderError(index, `weight_map "${k}": ${JSON.stringify(v)} is not a file name`);
    }
    files[k] = `${dir}/${v}`;
  }
  return files;
}

/**
 * Which files hold the weights of the folder (for `variant`; `stem` as in `weightNames`), and every key's dtype and
 * shape.
 */
export function weightMap(dir: string, variant?: string, stem = WEIGHTS): WeightMap {
  const { single, index } = weightNames(variant, stem);
  if (isFile(`${dir}/${single}`)) {
    const source = `${dir}/${single}`, entries = readHeader(source);
    return { source, entries, files: Object.fromEntries(Object.keys(entries).map((k) => [k, source])) };
  }
  if (isFile(`${dir}/${index}`)) {
    const source = `${dir}/${index}`, files = shardMap(dir, source);
    const entries: WeightMap["entries"] = {};
    for (const shard of new Set(Object.values(files))) {
      if (!isFile(shard)) throw new DiffusersFolderError(source, `names the shard ${shard}, which is not there`);
      const h = readHeader(shard);
      for (const [k, f] of Object.entries(files)) {
        if (f !== shard) continue;
        if (!h[k]) throw new DiffusersFolderError(source, `maps "${k}" to ${shard}, which does not hold it`);
        entries[k] = h[k];
      }
    }
    return { source, entries, files };
  }
  const others = variantsIn(dir, stem).filter((v) => v !== variant);
  const hint = others.length ? `; the folder has the variant${others.length > 1 ? "s" : ""} ${others.join(", ")}` : "";
  throw new DiffusersFolderError(dir, `no ${single} or ${index}${hint}`);
}

const list = (xs: string[]) => xs.slice(0, 3).join(", ") + (xs.length > 3 ? ` and ${xs.length - 3} more` : "");

/**
 * Checks the weights' keys, shapes and dtypes against `shapes`: one line naming the file (or index) with every missing,
 * unexpected and mis-shaped key (the first few of each, and how many).
 */
export function checkWeights(w: WeightMap, shapes: Record<string, number[]>): void {
  const missing = Object.keys(shapes).filter((k) => !w.entries[k]);
  const extra = Object.keys(w.entries).filter((k) => !shapes[k]);
  const bad: string[] = [];
  for (const [k, want] of Object.entries(shapes)) {
    const e = w.entries[k];
    if (!e) continue;
    if (!Array.isArray(e.shape) || e.shape.join(",") !== want.join(",")) {
      bad.push(`${k} is [${e.shape}], expected [${want}]`);
    } else if (!FLOATS.includes(e.dtype)) bad.push(`${k} is ${e.dtype}, expected F32, F16 or BF16`);
  }
  const parts = [
    missing.length ? `${missing.length} missing (${list(missing)})` : "",
    extra.length ? `${extra.length} unexpected (${list(extra)})` : "",
    bad.length ? `${bad.length} mis-shaped (${list(bad)})` : "",
  ].filter((p) => p);
  if (parts.length) throw new DiffusersFolderError(w.source, `keys do not fit the model: ${parts.join("; ")}`);
}

/** Reads the weights `shapes` names, as float32, after `checkWeights`. */
export function loadWeights(w: WeightMap, shapes: Record<string, number[]>): Record<string, Float32Array> {
  checkWeights(w, shapes);
  const out: Record<string, Float32Array> = {};
  for (const file of new Set(Object.values(w.files))) {
    const { tensors } = decodeSafetensors(Deno.readFileSync(file), file);
    for (const [k, f] of Object.entries(w.files)) if (f === file && shapes[k]) out[k] = toFloat32(tensors[k]);
  }
  return out;
}

/** A folder's location and config (weights are read after the config is checked: `weightMap`). */
export interface DiffusersFolder extends Located {
  /** `_class_name` of config.json. */
  className: string;
  /** config.json as parsed. */
  json: Record<string, unknown>;
  /** Path of config.json, for errors. */
  configFile: string;
}

/** Opens a folder or downloaded hub id: where it is and its config.json. */
export function openFolder(path: string, opts: { subfolder?: string; cacheRoot?: string } = {}): DiffusersFolder {
  const at = locateFolder(path, opts);
  const { className, json, file } = readFolderConfig(at.dir);
  return { ...at, className, json, configFile: file };
}

/** How `downloadHubFolder` reaches the hub; tests give a fake. */
export type Fetcher = (url: string, init?: RequestInit) => Promise<Response>;

/** What `downloadHubFolder` needs beside the id. */
export interface HubOptions {
  subfolder?: string;
  variant?: string;
  cacheRoot?: string;
  /** Default: the global fetch. */
  fetch?: Fetcher;
  /** Sent as a bearer token (gated or private models); default: the HF_TOKEN variable when readable. */
  token?: string;
  /** The weight files' stem (`weightNames`): `model` for a transformers model such as a text encoder. */
  stem?: string;
}

function envToken(): string | undefined {
  try {
    return Deno.env.get("HF_TOKEN") || undefined;
  } catch {
    return undefined; // no --allow-env: public models only
  }
}

/**
 * Downloads `file` of `o.subfolder` into its cache folder unless it is there, written whole or not at all; false when
 * the hub has no such file (HTTP 404).
 */
export function downloadHubFile(id: string, o: HubOptions, file: string): Promise<boolean> {
  return fetchFile(id, o, hubCacheDir(id, o.subfolder, o.cacheRoot), file);
}

async function fetchFile(id: string, o: HubOptions, dir: string, file: string): Promise<boolean> {
  const dest = `${dir}/${file}`;
  if (isFile(dest)) return true;
  const url = hubUrl(id, o.subfolder, file), token = o.token ?? envToken();
  let res: Response;
  try {
    res = await (o.fetch ?? fetch)(url, token ? { headers: { authorization: `Bearer ${token}` } } : undefined);
  } catch (e) {
    const why = (e as Error).message.split("\n")[0];
    const denied = e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied;
    const problem = denied
      ? `no network permission to download ${url} (${why})`
      : `cannot download ${url} (offline? ${why})`;
    throw new DiffusersFolderError(`hub id "${id}"`, problem);
  }
  if (res.status === 404) {
    await res.body?.cancel();
    return false;
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel();
    const gated = res.status === 401 || res.status === 403 ? "; a gated or private model needs HF_TOKEN" : "";
    throw new DiffusersFolderError(`hub id "${id}"`, `HTTP ${res.status} for ${url}${gated}`, res.status);
  }
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${dest}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const f = await Deno.open(tmp, { write: true, createNew: true });
    await res.body.pipeTo(f.writable);
    await Deno.rename(tmp, dest);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    const why = (e as Error).message.split("\n")[0];
    throw new DiffusersFolderError(`hub id "${id}"`, `download of ${url} failed (${why})`);
  }
  return true;
}

/**
 * Downloads a hub model's config.json and weights (single file, else the index and its shards) into the cache, each
 * file written whole or not at all; files already cached are not fetched again. Returns the folder.
 */
export async function downloadHubFolder(id: string, o: HubOptions = {}): Promise<string> {
  if (!isHubId(id)) throw new DiffusersFolderError(`hub id "${id}"`, "expected org/name");
  const dir = hubCacheDir(id, o.subfolder, o.cacheRoot);
  const { single, index } = weightNames(o.variant, o.stem);
  const where = `${id}${o.subfolder ? ` (subfolder ${o.subfolder})` : ""}`;
  if (!await fetchFile(id, o, dir, "config.json")) {
    throw new DiffusersFolderError(`hub id "${id}"`, `no config.json at ${hubUrl(id, o.subfolder, "config.json")}`);
  }
  if (await fetchFile(id, o, dir, single)) return dir;
  if (!await fetchFile(id, o, dir, index)) {
    throw new DiffusersFolderError(`hub id "${id}"`, `${where} has neither ${single} nor ${index}`);
  }
  for (const shard of new Set(Object.values(shardMap(dir, `${dir}/${index}`)))) {
    const name = shard.slice(dir.length + 1);
    if (!await fetchFile(id, o, dir, name)) {
      throw new DiffusersFolderError(`hub id "${id}"`, `the index names ${name}, which the hub does not have`);
    }
  }
  return dir;
}
