/**
 * Stable Diffusion 1.5's UNet and VAE `config.json`s, written from the values of runwayml/stable-diffusion-v1-5's
 * `unet/config.json` and `vae/config.json` (no hub is reachable here, so the benchmark builds the real shapes from
 * them with random weights). bench/sd15.ts measures them; tests/bench/sd15_config_test.ts checks their parameter
 * counts against the published model's.
 *
 * @module
 */

/** SD 1.5's UNet2DConditionModel (859,520,964 parameters). */
export const SD15_UNET_CONFIG = {
  _class_name: "UNet2DConditionModel",
  _diffusers_version: "0.31.0",
  act_fn: "silu",
  attention_head_dim: 8,
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  cross_attention_dim: 768,
  down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  sample_size: 64,
  up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
};

/** SD 1.x's AutoencoderKL (83,653,863 parameters; f = 8). */
export const SD15_VAE_CONFIG = {
  _class_name: "AutoencoderKL",
  _diffusers_version: "0.31.0",
  act_fn: "silu",
  block_out_channels: [128, 256, 512, 512],
  down_block_types: ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  in_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  out_channels: 3,
  sample_size: 512,
  scaling_factor: 0.18215,
  up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
};

/** The published parameter counts, which the shapes these configs give must reproduce. */
export const SD15_UNET_PARAMS = 859_520_964;
/** See `SD15_UNET_PARAMS`. */
export const SD15_VAE_PARAMS = 83_653_863;
