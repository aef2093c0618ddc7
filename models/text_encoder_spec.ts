/**
 * Which text encoder a stage encodes captions or prompts with, as one params piece: `text_encode` takes its keys at
 * the top level (`model`, `subfolder`, `variant`, `layer`), every other stage that encodes text (`sample`,
 * `teacher_pairs`, `eval_report`, `fashion_report`) as `text_encoder`, either the model alone (`text_encoder:
 * models/text_encoder`, as before) or the same mapping (`text_encoder: { model: sd, layer: penultimate }`), so a run
 * that trains on an SD 2 encoder's penultimate states samples and evaluates on them too.
 *
 * Planning knows an encoder's sizes without loading it where it can (`plannedEncoderDims`): a folder's config, the
 * `use-lite` constants, a diffusers hub id's download; a hub id that is not downloaded is known only when it loads.
 *
 * @module
 */
import { z } from "zod";
import { StageTypeError } from "../pipeline/stage.ts";
import {
  type CaptionEncoder,
  diffusersTextDims,
  type EncoderDims,
  folderDims,
  loadCaptionEncoder,
  localModelFolder,
} from "./caption_encoder.ts";
import { isDiffusersTextRoot } from "./diffusers/clip_text_folder.ts";
import { hubTextDownloaded, hubTextRoot, readsAsHubPipeline } from "./diffusers/clip_text_hub.ts";
import { isHubId } from "./diffusers/folder.ts";
import { USE_LITE_MODEL, useLiteDims } from "./use_lite/build.ts";

/** The per-token states a diffusers text encoder gives: last layer (SD 1.x), penultimate raw (SDXL) or normed. */
export const TEXT_LAYERS = ["last", "penultimate", "penultimate_normed"] as const;

/** The keys that choose a text encoder (text_encode's own, and the mapping form of a stage's `text_encoder`). */
export const TextEncoderKeys = {
  /**
   * A folder (relative to the project root, or absolute), `use-lite` (Universal Sentence Encoder lite, built on first
   * use), or a hub model id: a transformers.js model, or a diffusers pipeline's (see `subfolder`). Default: the
   * committed tiny CLIP.
   */
  model: z.string().default("models/text_encoder"),
  /**
   * For a diffusers pipeline (a folder, or a hub id, which this marks as one): the text encoder's subfolder, e.g.
   * `text_encoder_2`; its tokenizer is the matching `tokenizer*`. Default: `text_encoder`.
   */
  subfolder: z.string().optional(),
  /** For a diffusers pipeline: the weights' variant, e.g. `fp16` for model.fp16.safetensors. */
  variant: z.string().regex(/^[\w-]+$/, "a variant name such as fp16").optional(),
  /**
   * For a diffusers pipeline: the per-token states of the last layer (SD 1.x), of the penultimate layer as they are
   * (SD 2.x and SDXL), or of the penultimate through the final layer norm (diffusers' `clip_skip: 1`).
   */
  layer: z.enum(TEXT_LAYERS).default("last"),
};

/**
 * A stage's `text_encoder`: a model (folder, `use-lite` or hub id) or a mapping of `TextEncoderKeys`, read as the
 * mapping either way.
 */
export const TextEncoderSpec = z.preprocess(
  (v) => v === undefined ? {} : typeof v === "string" ? { model: v } : v,
  z.strictObject(TextEncoderKeys),
);

/** A text encoder as `TextEncoderSpec` reads it. */
export type TextEncoderChoice = z.output<typeof TextEncoderSpec>;

/** The encoder a text_encode stage's params (as written in a run's config) choose. */
export function choiceOf(params: Record<string, unknown>): TextEncoderChoice {
  const keys = Object.keys(TextEncoderKeys).filter((k) => params[k] !== undefined);
  return TextEncoderSpec.parse(Object.fromEntries(keys.map((k) => [k, params[k]])));
}

/** Loads (once per process) the encoder `c` names; `cache` is the run's cache folder, where conversions go. */
export function loadTextEncoder(c: TextEncoderChoice, cache?: string): Promise<CaptionEncoder> {
  return loadCaptionEncoder(c.model, undefined, cache, c);
}

const isDefault = (c: TextEncoderChoice, key: "subfolder" | "variant" | "layer") =>
  key === "layer" ? c.layer === "last" : c[key] === undefined;
const isPlain = (c: TextEncoderChoice) => (["subfolder", "variant", "layer"] as const).every((k) => isDefault(c, k));

/** The encoder as messages name it: the model, and what else was chosen. */
export function textEncoderName(c: TextEncoderChoice): string {
  const more = [c.subfolder, c.variant && `variant ${c.variant}`, c.layer !== "last" && `${c.layer} layer`]
    .filter(Boolean);
  return more.length ? `${c.model} (${more.join(", ")})` : c.model;
}

/** What cache keys hold of the encoder: the model alone when nothing else was chosen, so older keys still match. */
export function textEncoderKey(c: TextEncoderChoice): string | Record<string, string> {
  if (isPlain(c)) return c.model;
  return Object.fromEntries(Object.entries(c).filter(([, v]) => v !== undefined)) as Record<string, string>;
}

/** A config path below a stage, as StageTypeError takes it. */
type Path = (string | number)[];

/** Where a planning error about each key of the choice is told: text_encode's `["params", key]`, and so on. */
export type ChoiceKeys = (key: keyof TextEncoderChoice) => Path;

/**
 * The encoder's sizes as planning knows them, or null for a hub id that is not downloaded (known when it loads).
 * Throws a StageTypeError at the key at fault: a folder or download that cannot be read, or a diffusers-only key for
 * an encoder that is not a diffusers pipeline's. `cacheRoot`: the hub cache (tests).
 */
export function plannedEncoderDims(c: TextEncoderChoice, at: ChoiceKeys, cacheRoot?: string): EncoderDims | null {
  const read = (f: () => EncoderDims) => {
    try {
      return f();
    } catch (e) {
      throw new StageTypeError((e as Error).message.split("\n")[0], at("model"));
    }
  };
  const folder = c.model === USE_LITE_MODEL ? null : localModelFolder(c.model);
  const hub = !folder && c.model !== USE_LITE_MODEL && isHubId(c.model);
  const pipeline = folder
    ? c.subfolder !== undefined || isDiffusersTextRoot(folder)
    : hub && readsAsHubPipeline(c.model, c, cacheRoot);
  const key = pipeline ? undefined : (["subfolder", "variant", "layer"] as const).find((k) => !isDefault(c, k));
  if (key) {
    const why = folder ? " (no model_index.json or text_encoder/config.json)" : "";
    throw new StageTypeError(
      `${key} "${c[key]}" is only for a diffusers folder's text encoder; "${c.model}" is none${why}`,
      at(key),
    );
  }
  if (c.model === USE_LITE_MODEL) return useLiteDims();
  if (folder) return read(() => pipeline ? diffusersTextDims(folder, c.subfolder, c.variant) : folderDims(folder));
  if (!pipeline || !hubTextDownloaded(c.model, c.subfolder, cacheRoot, c.variant)) return null;
  return read(() => diffusersTextDims(hubTextRoot(c.model, cacheRoot), c.subfolder, c.variant));
}

/**
 * For a stage that conditions `model` (a UNet's text widths) on the encoder `c`: a StageTypeError at `at` when the
 * widths differ (for instance a teacher trained on `use-lite` previewed with the default encoder), checked at planning
 * so that a run does not fail at its first preview; an encoder that cannot be read is told at its own key under
 * `params.text_encoder`.
 */
export function checkTextWidths(
  name: string,
  u: { context_dim: number; pooled_dim: number },
  c: TextEncoderChoice,
  at: Path = ["params", "text_encoder"],
): void {
  const d = plannedEncoderDims(c, stageKeys);
  if (d && ((u.context_dim && u.context_dim !== d.width) || (u.pooled_dim && u.pooled_dim !== d.projection))) {
    throw new StageTypeError(
      `model "${name}" takes text of width ${u.context_dim}/${u.pooled_dim}; the text encoder ` +
        `"${textEncoderName(c)}" gives ${d.width}/${d.projection}`,
      at,
    );
  }
}

/** The keys of a stage's `text_encoder`: the model at `text_encoder` itself, which may have been written alone. */
export const stageKeys: ChoiceKeys = (key) =>
  key === "model" ? ["params", "text_encoder"] : ["params", "text_encoder", key];
