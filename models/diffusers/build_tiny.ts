/**
 * `deno task build:tiny-diffusers [DIR]`: a tiny Stable-Diffusion-layout pipeline folder with random but seeded
 * weights (default `.cache/tiny_diffusers/`, git-ignored), so that `configs/add_diffusers.yaml` runs offline here:
 * `model_index.json`, `unet/` (UNet2DConditionModel on 4×4×4 latents, 64-wide cross-attention, the width of the
 * committed text encoder), `vae/` (AutoencoderKL, f = 8: 32² pixels ↔ 4×4 latents) and `scheduler/`
 * (scheduler_config.json: v-prediction, zero terminal SNR, as ADD's pure-noise input needs), `text_encoder/` (a
 * transformers CLIPTextModel, 64 wide, 77 positions, as SD 1.x's) and `tokenizer/` (a CLIPTokenizer's vocab.json and
 * merges.txt: byte-level BPE learned from the project's captions, so every caption tokenizes, most words to a few
 * tokens). The same keys, shapes and config files as a real hub pipeline such as stabilityai/sd-turbo, only
 * narrower: what runs on this folder runs on that one.
 *
 * Its weights are random, so the teacher draws nothing: the folder exercises the latent-space pipeline, it is not a
 * model. Rerunning writes the same bytes.
 *
 * @module
 */
import { encodeSafetensors } from "../../engine/safetensors.ts";
import { Rng } from "../../engine/rng.ts";
import { vaeShapes } from "./autoencoder_kl.ts";
import { vaeConfig } from "./autoencoder_kl_config.ts";
import { unetShapes } from "./unet2d_condition.ts";
import { unetConfig } from "./unet2d_condition_config.ts";
import { BOS_TOKEN, EOS_TOKEN, learnBpe } from "../bpe_tokenizer.ts";
import { clipTextShapes, initClipText } from "../clip_text.ts";
import { textEncoderCaptions } from "../text_encoder_build.ts";
import { clipTextConfigFromJson } from "./clip_text_folder.ts";

const VERSION = "0.31.0";

/** The UNet's config.json: SD 1.x's layout, two levels, narrow. */
export const TINY_UNET_CONFIG = {
  _class_name: "UNet2DConditionModel",
  _diffusers_version: VERSION,
  act_fn: "silu",
  attention_head_dim: 4,
  block_out_channels: [32, 64],
  center_input_sample: false,
  cross_attention_dim: 64,
  down_block_types: ["CrossAttnDownBlock2D", "DownBlock2D"],
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 1,
  mid_block_scale_factor: 1,
  mid_block_type: "UNetMidBlock2DCrossAttn",
  norm_eps: 1e-5,
  norm_num_groups: 8,
  out_channels: 4,
  sample_size: 4,
  up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D"],
  use_linear_projection: false,
};

/** The VAE's config.json: four levels (f = 8) as the SD VAE, 8–32 channels instead of 128–512. */
export const TINY_VAE_CONFIG = {
  _class_name: "AutoencoderKL",
  _diffusers_version: VERSION,
  act_fn: "silu",
  block_out_channels: [8, 16, 32, 32],
  down_block_types: ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  force_upcast: true,
  in_channels: 3,
  latent_channels: 4,
  latents_mean: null,
  latents_std: null,
  layers_per_block: 1,
  mid_block_add_attention: true,
  norm_num_groups: 8,
  out_channels: 3,
  sample_size: 32,
  scaling_factor: 0.18215,
  shift_factor: null,
  up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  use_post_quant_conv: true,
  use_quant_conv: true,
};

/** scheduler_config.json, which configs/add_diffusers.yaml's stages read as their `schedule`. */
export const TINY_SCHEDULER_CONFIG = {
  _class_name: "DDIMScheduler",
  _diffusers_version: VERSION,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  beta_start: 0.00085,
  clip_sample: false,
  num_train_timesteps: 1000,
  prediction_type: "v_prediction",
  rescale_betas_zero_snr: true,
  set_alpha_to_one: false,
  steps_offset: 1,
  timestep_spacing: "trailing",
};

/** Seeded weights under `shapes`' keys: norms at 1, biases at 0, the rest normal with a 1/√fan-in scale. */
function seeded(shapes: Record<string, number[]>, seed: string): Uint8Array {
  const rng = new Rng(0).fold(seed), tensors: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const [k, s] of Object.entries(shapes)) {
    const n = s.reduce((a, b) => a * b, 1), fanIn = s.slice(1).reduce((a, b) => a * b, 1);
    const data = s.length === 1
      ? new Float32Array(n).fill(/norm.*\.weight$/.test(k) ? 1 : 0)
      : rng.fold(k).normal(n).map((v) => v / Math.sqrt(fanIn));
    tensors[k] = { data, shape: s };
  }
  return encodeSafetensors(tensors);
}

const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n";

/** Tokens of the tiny tokenizer: the 512 byte tokens, 510 merges, `<|startoftext|>` and `<|endoftext|>`. */
export const TINY_VOCAB_SIZE = 1024;

/** The text encoder's config.json: CLIPTextModel (no projection; SD 1.x's class), the UNet's 64-wide context. */
export const TINY_TEXT_CONFIG = {
  architectures: ["CLIPTextModel"],
  attention_dropout: 0,
  bos_token_id: TINY_VOCAB_SIZE - 2,
  eos_token_id: TINY_VOCAB_SIZE - 1,
  hidden_act: "quick_gelu",
  hidden_size: 64,
  initializer_factor: 1,
  initializer_range: 0.02,
  intermediate_size: 128,
  layer_norm_eps: 1e-5,
  max_position_embeddings: 77,
  model_type: "clip_text_model",
  num_attention_heads: 4,
  num_hidden_layers: 2,
  pad_token_id: 1,
  projection_dim: 64,
  torch_dtype: "float32",
  transformers_version: "4.41.0",
  vocab_size: TINY_VOCAB_SIZE,
};

/** `text_encoder/` and `tokenizer/`'s files: a CLIPTextModel with CLIP's seeded initialisation, a CLIPTokenizer. */
function textFiles(textConfig: Record<string, unknown>): Record<string, string | Uint8Array> {
  const { config } = clipTextConfigFromJson(textConfig, "text_encoder/config.json");
  const weights = initClipText(config, new Rng(0).fold("text_encoder"));
  const shapes = clipTextShapes(config);
  const bpe = learnBpe(textEncoderCaptions(), TINY_VOCAB_SIZE);
  const special = (content: string) => ({
    content,
    lstrip: false,
    normalized: true,
    rstrip: false,
    single_word: false,
  });
  const ids = (t: string) => bpe.vocab.indexOf(t);
  const tokenizerConfig = {
    added_tokens_decoder: Object.fromEntries(
      [BOS_TOKEN, EOS_TOKEN].map((t) => [String(ids(t)), { ...special(t), special: true }]),
    ),
    bos_token: BOS_TOKEN,
    clean_up_tokenization_spaces: true,
    eos_token: EOS_TOKEN,
    errors: "replace",
    model_max_length: 77,
    pad_token: EOS_TOKEN,
    tokenizer_class: "CLIPTokenizer",
    unk_token: EOS_TOKEN,
  };
  return {
    "text_encoder/config.json": json(textConfig),
    "text_encoder/model.safetensors": encodeSafetensors(
      Object.fromEntries(Object.entries(weights).map(([k, data]) => [k, { data, shape: shapes[k] }])),
      // transformers refuses a safetensors file whose metadata does not name its format.
      { format: "pt" },
    ),
    "tokenizer/vocab.json": json(Object.fromEntries(bpe.vocab.map((t, i) => [t, i]))),
    "tokenizer/merges.txt": ["#version: 0.2", ...bpe.merges.map(([a, b]) => `${a} ${b}`)].join("\n") + "\n",
    "tokenizer/special_tokens_map.json": json({
      bos_token: special(BOS_TOKEN),
      eos_token: special(EOS_TOKEN),
      pad_token: EOS_TOKEN,
      unk_token: special(EOS_TOKEN),
    }),
    "tokenizer/tokenizer_config.json": json(tokenizerConfig),
  };
}

/**
 * Config values that replace the tiny folder's own, per part: a still smaller pipeline for a committed fixture (the
 * UNet's `cross_attention_dim` must then stay the text encoder's `hidden_size`).
 */
export interface TinyOverrides {
  unet?: Record<string, unknown>;
  vae?: Record<string, unknown>;
  text_encoder?: Record<string, unknown>;
}

/** Writes the folder into `dir`. */
export async function buildTinyDiffusers(dir: string, overrides: TinyOverrides = {}): Promise<void> {
  const unetJson = { ...TINY_UNET_CONFIG, ...overrides.unet }, vaeJson = { ...TINY_VAE_CONFIG, ...overrides.vae };
  for (const sub of ["unet", "vae", "scheduler", "text_encoder", "tokenizer"]) {
    await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  }
  // As diffusers' save_pretrained writes it for a pipeline without a safety checker.
  const none = [null, null];
  const modelIndex = {
    _class_name: "StableDiffusionPipeline",
    _diffusers_version: VERSION,
    feature_extractor: none,
    image_encoder: none,
    requires_safety_checker: false,
    safety_checker: none,
    scheduler: ["diffusers", "DDIMScheduler"],
    text_encoder: ["transformers", "CLIPTextModel"],
    tokenizer: ["transformers", "CLIPTokenizer"],
    unet: ["diffusers", "UNet2DConditionModel"],
    vae: ["diffusers", "AutoencoderKL"],
  };
  await Deno.writeTextFile(`${dir}/model_index.json`, json(modelIndex));
  await Deno.writeTextFile(`${dir}/unet/config.json`, json(unetJson));
  await Deno.writeFile(
    `${dir}/unet/diffusion_pytorch_model.safetensors`,
    seeded(unetShapes(unetConfig(unetJson)), "unet"),
  );
  await Deno.writeTextFile(`${dir}/vae/config.json`, json(vaeJson));
  await Deno.writeFile(`${dir}/vae/diffusion_pytorch_model.safetensors`, seeded(vaeShapes(vaeConfig(vaeJson)), "vae"));
  await Deno.writeTextFile(`${dir}/scheduler/scheduler_config.json`, json(TINY_SCHEDULER_CONFIG));
  for (const [rel, data] of Object.entries(textFiles({ ...TINY_TEXT_CONFIG, ...overrides.text_encoder }))) {
    if (typeof data === "string") await Deno.writeTextFile(`${dir}/${rel}`, data);
    else await Deno.writeFile(`${dir}/${rel}`, data);
  }
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? ".cache/tiny_diffusers";
  await buildTinyDiffusers(dir);
  console.log(`wrote a tiny diffusers pipeline folder (random seeded weights) into ${dir}/`);
}
