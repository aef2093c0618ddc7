/**
 * The CLIP text encoder of a Stable Diffusion diffusers folder (`text_encoder/`: transformers' `CLIPTextModel` or
 * `CLIPTextModelWithProjection`, config.json + model[.variant].safetensors or its shards, F32/F16/BF16; and its
 * `tokenizer/`) as a folder transformers.js loads offline: config.json, tokenizer.json (`clip_tokenizer.ts`), and
 * onnx/text_model.onnx traced by the engine (`models/clip_text.ts`) with the folder's weights inside.
 *
 * The ONNX takes `input_ids` int64 [1, 77] and gives `last_hidden_state`, `pooler_output`, the penultimate layer's
 * states as they are (`penultimate_hidden_state`, what SDXL conditions on) and through the final layer norm
 * (`penultimate_hidden_state_normed`, diffusers' `clip_skip=1`), and `text_embeds` for the WithProjection class.
 *
 * Converted folders are cached under `<cache>/diffusers_text/`, keyed by the source files' contents and sizes, so a
 * folder converts once.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { lowerToOnnx } from "../../engine/onnx/lower.ts";
import { type ClipTextConfig, type ClipTextOutput, clipTextShapes, traceClipText } from "../clip_text.ts";
import { ClipFolderError, clipTokenizerJson, readClipTokenizer } from "./clip_tokenizer.ts";
import { loadWeights, TRANSFORMERS_WEIGHTS, type WeightMap, weightMap, weightNames } from "./folder.ts";

export { ClipFolderError };

/** Which per-token states a caller wants: the last layer's (SD 1.x), or the penultimate's raw or normed. */
export type TextLayer = "last" | "penultimate" | "penultimate_normed";

/** The ONNX output that holds each `TextLayer`. */
export const LAYER_OUTPUT: Record<TextLayer, ClipTextOutput> = {
  last: "last_hidden_state",
  penultimate: "penultimate_hidden_state",
  penultimate_normed: "penultimate_hidden_state_normed",
};

/** Bumped when the converted files change, so old cache entries are not reused. */
const CONVERTER_VERSION = "1";
const CLASSES = ["CLIPTextModel", "CLIPTextModelWithProjection"];
const IGNORED_KEYS = ["text_model.embeddings.position_ids"];

/** A diffusers text encoder as read from its folder. */
export interface ClipTextFolder {
  /** The `text_encoder/` folder. */
  dir: string;
  /** Its sibling tokenizer folder. */
  tokenizerDir: string;
  className: string;
  config: ClipTextConfig;
  /** Ids per prompt (the model's positions). */
  length: number;
  /** Width of the pooled output: projection_dim with a projection, else hidden_size. */
  pooledWidth: number;
  /** The weights: which file holds each key (one file, or the shards of an index). */
  weights: WeightMap;
}

/** `text_encoder` → `tokenizer`, `text_encoder_2` → `tokenizer_2`, as diffusers names SDXL's pair. */
export function tokenizerSubfolder(subfolder: string): string {
  const m = /^text_encoder(.*)$/.exec(subfolder);
  return m ? `tokenizer${m[1]}` : "tokenizer";
}

/** Whether `dir` looks like a diffusers pipeline folder (model_index.json) or has the text encoder subfolder. */
export function isDiffusersTextRoot(dir: string, subfolder = "text_encoder"): boolean {
  return isFile(join(dir, "model_index.json")) || isFile(join(dir, subfolder, "config.json"));
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function int(cfg: Record<string, unknown>, file: string, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1) {
    throw new ClipFolderError(file, `${key} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v as number;
}

/** The model's config from transformers' CLIPTextConfig keys; one line naming the file for what is unsupported. */
export function clipTextConfigFromJson(json: Record<string, unknown>, file: string): {
  className: string;
  config: ClipTextConfig;
} {
  const className = Array.isArray(json.architectures) ? String(json.architectures[0]) : String(json._class_name);
  if (!CLASSES.includes(className)) {
    throw new ClipFolderError(file, `architectures ${JSON.stringify(json.architectures)} is not one of ${CLASSES}`);
  }
  if (json.model_type !== undefined && json.model_type !== "clip_text_model") {
    throw new ClipFolderError(file, `model_type ${JSON.stringify(json.model_type)} is not "clip_text_model"`);
  }
  const act = json.hidden_act ?? "quick_gelu";
  if (act !== "quick_gelu" && act !== "gelu") {
    throw new ClipFolderError(file, `hidden_act ${JSON.stringify(act)} is not supported (quick_gelu, gelu)`);
  }
  const eps = json.layer_norm_eps ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) throw new ClipFolderError(file, `layer_norm_eps ${eps} must be > 0`);
  const projection = className === "CLIPTextModelWithProjection";
  const width = int(json, file, "hidden_size", 512);
  const config: ClipTextConfig = {
    vocabSize: int(json, file, "vocab_size", 49408),
    width,
    layers: int(json, file, "num_hidden_layers", 12),
    heads: int(json, file, "num_attention_heads", 8),
    intermediate: int(json, file, "intermediate_size", 2048),
    maxLength: int(json, file, "max_position_embeddings", 77),
    projectionDim: projection ? int(json, file, "projection_dim", 512) : width,
    layerNormEps: eps,
    hiddenAct: act,
    projection,
  };
  // transformers pools at argmax(ids) for the legacy eos_token_id 2 of early configs, else at the first eos id.
  const eos = json.eos_token_id ?? 49407;
  if (eos !== 2) {
    if (!Number.isInteger(eos) || (eos as number) < 0 || (eos as number) >= config.vocabSize) {
      throw new ClipFolderError(file, `eos_token_id ${eos} is not an id below vocab_size ${config.vocabSize}`);
    }
    config.eosTokenId = eos as number;
  }
  if (width % config.heads) {
    throw new ClipFolderError(file, `hidden_size ${width} does not split into ${config.heads} heads`);
  }
  return { className, config };
}

/**
 * The weights of `dir`: model[.variant].safetensors, or sharded, the shards model.safetensors.index[.variant].json
 * maps each key to (as large CLIP and OpenCLIP encoders ship); without a variant, the fp16 or bf16 files where the
 * full-precision ones are absent.
 */
export function textWeights(dir: string, variant?: string): WeightMap {
  const tried = variant ? [variant] : [undefined, "fp16", "bf16"];
  const at = tried.findIndex((v) => {
    const { single, index } = weightNames(v, TRANSFORMERS_WEIGHTS);
    return isFile(join(dir, single)) || isFile(join(dir, index));
  });
  if (at >= 0) return weightMap(dir, tried[at], TRANSFORMERS_WEIGHTS);
  const names = tried.map((v) => weightNames(v, TRANSFORMERS_WEIGHTS));
  const list = (k: "single" | "index") => names.map((n) => n[k]).join(" or ");
  throw new ClipFolderError(dir, `has no ${list("single")}, nor the sharded ${list("index")}`);
}

/** Reads and checks `root/subfolder` and its tokenizer folder (config and files; weights are read on conversion). */
export function openClipTextFolder(root: string, subfolder = "text_encoder", variant?: string): ClipTextFolder {
  const dir = join(root, subfolder);
  const file = join(dir, "config.json");
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(Deno.readTextFileSync(file));
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message.split("\n")[0];
    throw new ClipFolderError(file, `cannot read the text encoder's config (${why})`);
  }
  const { className, config } = clipTextConfigFromJson(json, file);
  const tokenizerDir = join(root, tokenizerSubfolder(basename(dir)));
  const tok = readClipTokenizer(tokenizerDir);
  if (tok.maxLength !== null && tok.maxLength !== config.maxLength && tok.maxLength < 1e6) {
    throw new ClipFolderError(
      join(tokenizerDir, "tokenizer_config.json"),
      `model_max_length ${tok.maxLength} differs from the model's max_position_embeddings ${config.maxLength}`,
    );
  }
  return {
    dir,
    tokenizerDir,
    className,
    config,
    length: config.maxLength,
    pooledWidth: config.projectionDim,
    weights: textWeights(dir, variant),
  };
}

/** The ONNX outputs a converted folder has. */
export function convertedOutputs(f: ClipTextFolder): ClipTextOutput[] {
  const out: ClipTextOutput[] = [
    "last_hidden_state",
    "pooler_output",
    "penultimate_hidden_state",
    "penultimate_hidden_state_normed",
  ];
  return f.config.projection ? [...out, "text_embeds"] : out;
}

/** Reads the weights as float32 under the model's names, one line naming the file for a missing or mis-shaped key. */
export function loadClipTextWeights(f: ClipTextFolder): Record<string, Float32Array> {
  // transformers saves position_ids (a buffer, not a weight) in older files; it is the same arange in every model.
  const kept = <T>(o: Record<string, T>) =>
    Object.fromEntries(Object.entries(o).filter(([k]) => !IGNORED_KEYS.includes(k)));
  const w = { ...f.weights, files: kept(f.weights.files), entries: kept(f.weights.entries) };
  return loadWeights(w, clipTextShapes(f.config));
}

/** The converted folder's files (relative path → bytes). */
export function convertClipTextFiles(f: ClipTextFolder): Record<string, Uint8Array> {
  const weights = loadClipTextWeights(f);
  const graph = traceClipText(f.config, weights, 1, convertedOutputs(f));
  const onnx = lowerToOnnx(graph, "cpu", { int64Inputs: ["input_ids"] });
  const source = JSON.parse(Deno.readTextFileSync(join(f.dir, "config.json")));
  const config = { ...source, architectures: [f.className], model_type: "clip_text_model", torch_dtype: "float32" };
  const enc = new TextEncoder();
  const files: Record<string, Uint8Array> = {
    "config.json": enc.encode(JSON.stringify(config, null, 2) + "\n"),
    "onnx/text_model.onnx": onnx,
  };
  for (const [name, text] of Object.entries(clipTokenizerJson(readClipTokenizer(f.tokenizerDir), f.length))) {
    files[name] = enc.encode(text);
  }
  return files;
}

/** The cache key: the converter's version and every source file's name, size and (but for the weights) contents. */
function cacheKey(f: ClipTextFolder): string {
  const h = createHash("sha256").update(CONVERTER_VERSION);
  const add = (file: string, contents: boolean) => {
    let data: Uint8Array | string = "";
    try {
      const st = Deno.statSync(file);
      data = contents ? Deno.readFileSync(file) : `${st.size}:${st.mtime?.getTime()}`;
    } catch {
      // an optional file that is absent
    }
    h.update(`\0${file}\0`).update(data);
  };
  add(join(f.dir, "config.json"), true);
  // An index is read whole (it names the shards); the weights by size and time, which a new download changes.
  if (f.weights.source.endsWith(".json")) add(f.weights.source, true);
  for (const file of new Set(Object.values(f.weights.files))) add(file, false);
  for (const n of ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]) {
    add(join(f.tokenizerDir, n), true);
  }
  return h.digest("hex").slice(0, 16);
}

/**
 * The converted folder for `f` under `cacheRoot`, converting it first if it is not there (written into a temporary
 * folder and renamed, so a half-written one is never read).
 */
export function ensureClipTextFolder(f: ClipTextFolder, cacheRoot: string): string {
  const out = join(cacheRoot, "diffusers_text", `${basename(join(f.dir, ".."))}-${basename(f.dir)}-${cacheKey(f)}`);
  if (isFile(join(out, "onnx", "text_model.onnx"))) return out;
  const files = convertClipTextFiles(f);
  Deno.mkdirSync(join(cacheRoot, "diffusers_text"), { recursive: true });
  const tmp = Deno.makeTempDirSync({ dir: join(cacheRoot, "diffusers_text"), prefix: ".tmp-" });
  for (const [rel, bytes] of Object.entries(files)) {
    Deno.mkdirSync(join(tmp, rel, ".."), { recursive: true });
    Deno.writeFileSync(join(tmp, rel), bytes);
  }
  try {
    Deno.renameSync(tmp, out);
  } catch (e) {
    Deno.removeSync(tmp, { recursive: true });
    // Another process converted the same folder meanwhile: its copy is as good.
    if (!isFile(join(out, "onnx", "text_model.onnx"))) throw e;
  }
  return out;
}
