/**
 * The CLIP text encoder of a diffusers pipeline on the hub (`org/name`, such as
 * `stable-diffusion-v1-5/stable-diffusion-v1-5`), downloaded once into the hub cache that UNets use (`HUB_CACHE`,
 * `<cache>/<org>/<name>/`): the pipeline's model_index.json, `<subfolder>/` (config.json and the weights: single,
 * a variant's, or an index and its shards) and the matching tokenizer folder (vocab.json, merges.txt, and where the hub
 * has them tokenizer_config.json, special_tokens_map.json, tokenizer.json). The download folder is then read exactly
 * as a local pipeline folder (`clip_text_folder.ts`).
 *
 * @module
 */
import { tokenizerSubfolder } from "./clip_text_folder.ts";
import {
  DiffusersFolderError,
  downloadHubFile,
  downloadHubFolder,
  hubCacheDir,
  type HubOptions,
  hubUrl,
  isHubId,
  TRANSFORMERS_WEIGHTS,
  weightNames,
} from "./folder.ts";

/** What a hub text encoder is read with: the hub options (fetcher, cache, token) and which encoder. */
export type HubTextOptions = Omit<HubOptions, "stem">;

const TOKENIZER_REQUIRED = ["vocab.json", "merges.txt"];
const TOKENIZER_OPTIONAL = ["tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"];
// Downloaded last, so that its presence means everything before it is there (each file lands whole or not at all).
const LAST = TOKENIZER_REQUIRED[TOKENIZER_REQUIRED.length - 1];

const isFile = (p: string) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
};

/** The download folder of hub id `id`: the pipeline's root, which holds `text_encoder/`, `tokenizer/`, … */
export function hubTextRoot(id: string, cacheRoot?: string): string {
  return hubCacheDir(id, undefined, cacheRoot);
}

/**
 * Whether `subfolder` (default text_encoder) of hub id `id` and its tokenizer are downloaded completely; with a
 * `variant`, its weights too (a download of the default weights does not hold them, and the run would fetch them).
 */
export function hubTextDownloaded(
  id: string,
  subfolder = "text_encoder",
  cacheRoot?: string,
  variant?: string,
): boolean {
  const root = hubTextRoot(id, cacheRoot), dir = `${root}/${subfolder}`;
  const done = isFile(`${dir}/config.json`) && isFile(`${root}/${tokenizerSubfolder(subfolder)}/${LAST}`);
  if (!done || variant === undefined) return done;
  const { single, index } = weightNames(variant, TRANSFORMERS_WEIGHTS);
  return isFile(`${dir}/${single}`) || isFile(`${dir}/${index}`);
}

/** Whether this process may reach the hub without Deno asking for the permission (which would stop a run to wait). */
function netGranted(): boolean {
  try {
    return Deno.permissions.querySync({ name: "net", host: "huggingface.co" }).state === "granted";
  } catch {
    return false;
  }
}

/** Whether the download folder of `id` is a diffusers pipeline's (its model_index.json was downloaded). */
export function hubPipelineCached(id: string, cacheRoot?: string): boolean {
  return isFile(`${hubTextRoot(id, cacheRoot)}/model_index.json`);
}

/**
 * Whether hub id `id` reads as a diffusers pipeline without asking the hub: a diffusers-only key is given (`subfolder`,
 * `variant`, a `layer` other than the last), or its download (model_index.json, or the text encoder) is cached.
 */
export function readsAsHubPipeline(
  id: string,
  c: { subfolder?: string; variant?: string; layer?: string },
  cacheRoot?: string,
): boolean {
  if (c.subfolder !== undefined || c.variant !== undefined || (c.layer ?? "last") !== "last") return true;
  return hubPipelineCached(id, cacheRoot) || hubTextDownloaded(id, undefined, cacheRoot);
}

/**
 * Whether hub id `id` is a diffusers pipeline: it has model_index.json (kept in the cache, so this asks the hub once
 * per id that is one). Online, unless cached; false where the hub cannot be reached.
 */
export async function isHubPipeline(id: string, o: HubTextOptions = {}): Promise<boolean> {
  if (hubPipelineCached(id, o.cacheRoot)) return true;
  // Without the permission (deno task run has none) the id goes to transformers.js, as before, whose cache may hold it.
  if (!o.fetch && !netGranted()) return false;
  try {
    return await downloadHubFile(id, { ...o, subfolder: undefined }, "model_index.json");
  } catch (e) {
    // The hub's own refusal (401/403 of a gated pipeline, a 5xx) is told as it is; only an unreachable hub is unknown.
    if (e instanceof DiffusersFolderError && e.status !== undefined) throw e;
    return false;
  }
}

/**
 * Downloads the text encoder `o.subfolder` (default text_encoder) of hub pipeline `id` and its tokenizer into the hub
 * cache, files already there kept; returns the pipeline's download folder. One line naming the id for what the hub
 * does not have.
 */
export async function downloadHubTextEncoder(id: string, o: HubTextOptions = {}): Promise<string> {
  if (!isHubId(id)) throw new DiffusersFolderError(`hub id "${id}"`, "expected org/name");
  const sub = o.subfolder ?? "text_encoder", tok = tokenizerSubfolder(sub);
  // Optional: a repo of the text encoder alone is still read, and the file marks a pipeline for later runs.
  await downloadHubFile(id, { ...o, subfolder: undefined }, "model_index.json");
  await downloadHubFolder(id, { ...o, subfolder: sub, stem: TRANSFORMERS_WEIGHTS });
  const at = { ...o, subfolder: tok };
  for (const file of TOKENIZER_OPTIONAL) await downloadHubFile(id, at, file);
  for (const file of TOKENIZER_REQUIRED) {
    if (!await downloadHubFile(id, at, file)) {
      throw new DiffusersFolderError(`hub id "${id}"`, `no tokenizer file ${hubUrl(id, tok, file)}`);
    }
  }
  return hubTextRoot(id, o.cacheRoot);
}
