/**
 * `deno task diffusers export`: a run's `diffusers_unet` student as a folder diffusers' `from_pretrained` loads —
 * `unet/` (the source folder's config.json and the trained weights under diffusers' keys, fp32 or the `.fp16.`
 * variant), `scheduler/scheduler_config.json` (the run's schedule; export_scheduler.ts), the text encoder and
 * tokenizer folders when the run encoded captions with a diffusers pipeline's, a `vae/` when the config names an
 * AutoencoderKL, `model_index.json` when the parts make a diffusers pipeline, and a model card `README.md`. With
 * `--fp16` every model's weights are float16 in its `fp16` variant's file, as `save_pretrained(variant="fp16")`
 * lays a pipeline out.
 *
 * Everything is read and checked first; the files are then written into a temporary folder beside `--out` and renamed
 * onto it, so bad input or a failed write leaves nothing behind.
 *
 * @module
 */
import { basename, dirname, join, resolve } from "node:path";
import { encodeSafetensors, type TensorInput } from "../../engine/safetensors.ts";
import { spacedTimesteps, type Spacing } from "../diffusion/schedules.ts";
import { shownPath } from "../../ship/source.ts";
import { decodeSafetensors, toFloat32 } from "../../engine/safetensors.ts";
import { type DiffusersExportSource, type ExtraPart, readDiffusersSource } from "./export_source.ts";
import { schedulerConfig, studentSpacing } from "./export_scheduler.ts";
import { TRANSFORMERS_WEIGHTS, type WeightMap, weightMap, weightNames } from "./folder.ts";
import { textWeights } from "./clip_text_folder.ts";

/** Options of `exportDiffusers`. */
export interface DiffusersExportOptions {
  /** Write the UNet's, VAE's and text encoder's weights as float16, in the `fp16` variant's file names. */
  fp16?: boolean;
  /** Use the EMA weights when the checkpoint kept them (default true). */
  ema?: boolean;
  /** The model of the config to export (default: the student). */
  model?: string;
}

/** What an export wrote. */
export interface DiffusersExportResult {
  out: string;
  /** The files written, relative to `out`. */
  files: string[];
  bytes: number;
  source: DiffusersExportSource;
  spacing: Spacing;
}

/** A file to write: its bytes, or a file to copy. */
type Entry = Uint8Array | string | { copy: string };

const DIFFUSERS_VERSION = "0.31.0";
const FP16_MAX = 65504;
const FLOATS: readonly string[] = ["F64", "F32", "F16", "BF16"];

/** Safetensors bytes of `tensors` with the values of `weights`, float32 or float16; keys without one stay as given. */
function encodeWith(
  tensors: Record<string, TensorInput>,
  weights: Record<string, Float32Array>,
  fp16: boolean,
  source: string,
): Uint8Array {
  for (const k of Object.keys(tensors)) {
    if (!weights[k]) continue;
    if (fp16) {
      const big = weights[k].findIndex((v) => !(Math.abs(v) <= FP16_MAX));
      if (big >= 0) {
        throw new Error(`${source}: ${k}[${big}] = ${weights[k][big]} does not fit float16; export without --fp16`);
      }
    }
    tensors[k] = { ...tensors[k], data: weights[k], dtype: fp16 ? "F16" : "F32" };
  }
  // diffusers' own files carry this; transformers refuses safetensors without it.
  return encodeSafetensors(tensors, { format: "pt" });
}

function unetWeights(src: DiffusersExportSource, fp16: boolean): Uint8Array {
  const tensors: Record<string, TensorInput> = {};
  for (const k of Object.keys(src.shapes).sort()) tensors[k] = { data: src.weights[k], shape: src.shapes[k] };
  return encodeWith(tensors, src.weights, fp16, src.weightsFile);
}

/** The source folder's config.json, naming its class and the diffusers version the files follow. */
function unetConfigJson(src: DiffusersExportSource): string {
  const { _class_name: _c, _diffusers_version: v, _name_or_path: _n, ...rest } = src.folder.json;
  const json = { _class_name: src.folder.className, _diffusers_version: v ?? DIFFUSERS_VERSION, ...rest };
  return JSON.stringify(json, null, 2) + "\n";
}

/**
 * Every tensor of a part's weights (one file or its shards) in one file of the export's dtype, keys sorted. Integer
 * tensors (an old text encoder's position_ids) keep theirs, as transformers' save_pretrained keeps them.
 */
function reencoded(w: WeightMap, fp16: boolean): Uint8Array {
  const weights: Record<string, Float32Array> = {}, tensors: Record<string, TensorInput> = {};
  for (const file of new Set(Object.values(w.files))) {
    const t = decodeSafetensors(Deno.readFileSync(file), file).tensors;
    for (const [k, f] of Object.entries(w.files)) {
      if (f !== file) continue;
      tensors[k] = { data: t[k].data, shape: t[k].shape, dtype: t[k].dtype };
      if (FLOATS.includes(t[k].dtype)) weights[k] = toFloat32(t[k]);
    }
  }
  const sorted = Object.fromEntries(Object.keys(tensors).sort().map((k) => [k, tensors[k]]));
  return encodeWith(sorted, weights, fp16, w.source);
}

/** A diffusers part (the VAE): its config.json and its weights re-encoded in the export's dtype. */
function diffusersPart(part: ExtraPart, fp16: boolean): Record<string, Entry> {
  return {
    [`${part.name}/config.json`]: { copy: `${part.dir}/config.json` },
    [`${part.name}/${weightNames(fp16 ? "fp16" : undefined).single}`]: reencoded(
      weightMap(part.dir, part.variant),
      fp16,
    ),
  };
}

/** A transformers model's weights in any variant or format: `model[.v].safetensors`, a shard, an index, a pickle. */
const MODEL_FILE = /^(model|pytorch_model|tf_model|flax_model)[.-]/;
/** Weight files transformers' from_pretrained loads with no variant given. */
const PLAIN_MODEL = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

/**
 * A transformers part: the tokenizer, and the text encoder, whose files are copied as they are unless the export is
 * fp16 or the folder has a variant's weights only. Those get what transformers' `save_pretrained(variant=…)` writes:
 * one `model[.fp16].safetensors` in the export's dtype and config.json's `torch_dtype` to match, since diffusers
 * passes `variant="fp16"` on only to the parts whose folder has a file of that variant and would silently load an
 * fp32 text encoder beside the fp16 UNet (or find no weights at all without a variant).
 */
async function transformersPart(part: ExtraPart, fp16: boolean): Promise<Record<string, Entry>> {
  const rels = await filesUnder(part.dir), out: Record<string, Entry> = {};
  const weights = rels.filter((r) => MODEL_FILE.test(r));
  const asIs = !weights.length || (!fp16 && weights.some((r) => PLAIN_MODEL.includes(r)));
  for (const rel of rels) {
    if (asIs || !(MODEL_FILE.test(rel) || rel === "config.json")) {
      out[`${part.name}/${rel}`] = { copy: `${part.dir}/${rel}` };
    }
  }
  if (asIs) return out;
  let w: WeightMap;
  try {
    w = textWeights(part.dir, part.variant);
  } catch {
    throw new Error(
      `${part.dir}: the text encoder's weights are not safetensors (${weights.join(", ")}), so they cannot be ` +
        "written as float16; export without --fp16",
    );
  }
  const config = JSON.parse(await Deno.readTextFile(`${part.dir}/config.json`));
  out[`${part.name}/config.json`] = JSON.stringify({ ...config, torch_dtype: fp16 ? "float16" : "float32" }, null, 2) +
    "\n";
  out[`${part.name}/${weightNames(fp16 ? "fp16" : undefined, TRANSFORMERS_WEIGHTS).single}`] = reencoded(w, fp16);
  return out;
}

/** Every plain file under `dir`, relative to it (a link is refused rather than followed out of the tree). */
async function filesUnder(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await filesUnder(dir, rel));
    else if (e.isFile) out.push(rel);
    else throw new Error(`${join(dir, rel)}: a link; a part's folder must hold plain files`);
  }
  return out.sort();
}

/**
 * model_index.json for the pipelines the parts make: DDIMPipeline (an unconditional UNet2DModel and its scheduler)
 * and StableDiffusionPipeline (a text-conditioned UNet with a VAE, a text encoder and a tokenizer). Other sets (a
 * pixel-space text-conditioned UNet) have no diffusers pipeline, so they get none and are loaded part by part.
 */
export function modelIndex(unetClass: string, parts: ExtraPart[]): Record<string, unknown> | null {
  const by = Object.fromEntries(parts.map((p) => [p.name, [p.library, p.className]]));
  const head = { _diffusers_version: DIFFUSERS_VERSION };
  const unet = ["diffusers", unetClass], scheduler = ["diffusers", "DDIMScheduler"];
  if (unetClass === "UNet2DModel" && parts.length === 0) {
    return { _class_name: "DDIMPipeline", ...head, scheduler, unet };
  }
  if (unetClass === "UNet2DConditionModel" && by.vae && by.text_encoder && by.tokenizer) {
    const none = [null, null];
    return {
      _class_name: "StableDiffusionPipeline",
      ...head,
      feature_extractor: none,
      image_encoder: none,
      requires_safety_checker: false,
      safety_checker: none,
      scheduler,
      text_encoder: by.text_encoder,
      tokenizer: by.tokenizer,
      unet,
      vae: by.vae,
    };
  }
  return null;
}

/** The model card. */
function modelCard(src: DiffusersExportSource, spacing: Spacing, files: string[], index: boolean, fp16: boolean) {
  const T = src.schedule.T, add = src.trainedTimesteps !== null;
  const steps = [1, 2, 4].map((n) => `${n}: [${Array.from(spacedTimesteps(T, n, spacing)).join(", ")}]`).join("; ");
  const at = src.step === null ? "" : ` at step ${src.step}${src.runSteps ? ` of ${src.runSteps}` : ""}`;
  const weights = src.weightsFile.endsWith(".ema.safetensors") ? "EMA weights" : "weights (no EMA kept or used)";
  const variant = fp16 ? `, variant="fp16", torch_dtype=torch.float16` : "";
  const text = src.extras.find((p) => p.library === "transformers");
  const lines = [
    `# ${src.model}: a ${src.folder.className} ${add ? "distilled with ADD" : "trained"} by the add project`,
    "",
    `Exported by \`deno task diffusers export\` from ${shownPath(src.checkpoint)}${at} (${weights}).`,
    "",
    `- Initial weights and config: ${src.folder.hubId ?? shownPath(src.folder.dir)}.`,
    add ? `- Teacher: ${src.teacher ?? "none named"}; student timesteps [${src.trainedTimesteps!.join(", ")}].` : null,
    `- Schedule: ${src.schedule.kind}, T = ${T}${src.schedule.zeroTerminalSnr ? ", zero terminal SNR" : ""}; ` +
    `prediction ${src.prediction}; \`scheduler/\` is a DDIMScheduler with "${spacing}" spacing (timesteps for ` +
    `${steps}).`,
    add
      ? "- Sampling: 1–4 steps, no classifier-free guidance. One step returns the clean estimate at T−1; for more " +
        "steps the project's ADD sampler re-noises that estimate with fresh noise, while DDIM reuses the predicted " +
        "noise, so multi-step samples differ from `deno task sample --sampler add`."
      : null,
    `- Text encoder: ${
      text
        ? `${shownPath(text.dir)} (copied${fp16 ? ", its weights as float16" : ""})`
        : src.textEncoder
        ? `the run used ${src.textEncoder}, which is not a transformers folder, so it is not included`
        : "none (unconditional)"
    }.`,
    fp16
      ? "- Weights: float16, in the `fp16` variant's files only (the layout of diffusers' " +
        '`save_pretrained(variant="fp16")`): `from_pretrained` finds them only when given `variant="fp16"`, and ' +
        "loads them into float32 unless also given `torch_dtype=torch.float16`."
      : null,
    "",
    "Files: " + files.map((f) => `\`${f}\``).join(", ") + ".",
    "",
    "```python",
    ...(fp16 ? ["import torch", ""] : []),
    index
      ? `pipe = DiffusionPipeline.from_pretrained("<this folder>"${variant})`
      : `unet = ${src.folder.className}.from_pretrained("<this folder>", subfolder="unet"${variant})\n` +
        `scheduler = DDIMScheduler.from_pretrained("<this folder>", subfolder="scheduler")`,
    "```",
    "",
    "Licence: these weights derive from the initial weights above and from the run's training data " +
    `(${Object.values(src.config.data ?? {}).map((d) => d.kind).join(", ") || "none named"}); their licences ` +
    "apply to this folder. See the source's model card and the project's NOTICE.",
    "",
  ];
  // A bullet that does not apply is dropped: a blank line in its place would break the list.
  return lines.filter((l) => l !== null).join("\n");
}

/** `--out` must be absent, an empty folder, or an earlier export (which is replaced). */
async function checkOut(out: string): Promise<void> {
  const st = await Deno.stat(out).catch(() => null);
  if (!st) return;
  if (!st.isDirectory) throw new Error(`--out ${out}: a file; choose a folder`);
  const names: string[] = [];
  for await (const e of Deno.readDir(out)) names.push(e.name);
  const earlier = names.includes("unet") && names.includes("scheduler");
  if (names.length && !earlier) {
    throw new Error(`--out ${out}: a folder with other files in it (not an earlier export); choose another`);
  }
}

/** Writes `files` into a temporary folder beside `out`, then renames it onto `out`. */
async function writeTree(out: string, files: Record<string, Entry>): Promise<number> {
  const tmp = `${dirname(out)}/.${basename(out)}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const made: string[] = [];
  for (let d = dirname(out); !(await Deno.stat(d).then(() => true, () => false)); d = dirname(d)) made.unshift(d);
  let bytes = 0;
  try {
    for (const d of made) await Deno.mkdir(d);
    await Deno.mkdir(tmp);
    for (const [rel, data] of Object.entries(files)) {
      const path = `${tmp}/${rel}`;
      await Deno.mkdir(dirname(path), { recursive: true });
      if (typeof data === "string") await Deno.writeTextFile(path, data);
      else if (data instanceof Uint8Array) await Deno.writeFile(path, data);
      else await Deno.copyFile(data.copy, path);
      bytes += (await Deno.stat(path)).size;
    }
    const aside = `${tmp}-old`;
    const replaced = await Deno.rename(out, aside).then(() => true, () => false);
    await Deno.rename(tmp, out);
    if (replaced) await Deno.remove(aside, { recursive: true });
    return bytes;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    for (const d of made.reverse()) await Deno.remove(d).catch(() => {});
    throw new Error(`--out ${out}: cannot write the export (${(e as Error).message.split("\n")[0]})`);
  }
}

/** Exports the diffusers_unet student of the run or checkpoint folder `dir` into `out`. */
export async function exportDiffusers(
  dir: string,
  out: string,
  opts: DiffusersExportOptions = {},
): Promise<DiffusersExportResult> {
  out = resolve(out.replace(/\/+$/, ""));
  await checkOut(out);
  const src = await readDiffusersSource(dir, { ema: opts.ema, model: opts.model });
  const fp16 = opts.fp16 ?? false, spacing = studentSpacing(src.schedule.T, src.trainedTimesteps);
  const files: Record<string, Entry> = {
    "unet/config.json": unetConfigJson(src),
    [`unet/${weightNames(fp16 ? "fp16" : undefined).single}`]: unetWeights(src, fp16),
    "scheduler/scheduler_config.json": JSON.stringify(schedulerConfig(src.schedule, src.prediction, spacing), null, 2) +
      "\n",
  };
  for (const part of src.extras) {
    Object.assign(files, part.library === "diffusers" ? diffusersPart(part, fp16) : await transformersPart(part, fp16));
  }
  const index = modelIndex(src.folder.className, src.extras);
  if (index) files["model_index.json"] = JSON.stringify(index, null, 2) + "\n";
  const names = [...Object.keys(files), "README.md"].sort();
  files["README.md"] = modelCard(src, spacing, names, index !== null, fp16);
  const bytes = await writeTree(out, files);
  return { out, files: names, bytes, source: src, spacing };
}
