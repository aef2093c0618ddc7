/**
 * A diffusers `UNet2DConditionModel` `config.json`, validated before anything is allocated (one error line naming the
 * key and the value the project does not support), and the block structure it implies under diffusers' key names.
 *
 * @module
 */
import { type BlockPlan, layoutBlocks, type UNetPlan } from "./blocks.ts";
import {
  bool,
  type Check,
  checkKeys,
  intList,
  is,
  listOf,
  nonNegativeInt,
  posInt,
  positive,
  positiveInt,
  show,
} from "./config_keys.ts";
import { DiffusersConfigError } from "./scheduler_config.ts";

export type { BlockPlan, UNetPlan };

/** The settings the project's UNet2DConditionModel reads. */
export interface UNetConfig {
  in_channels: number;
  out_channels: number;
  sample_size: number;
  block_out_channels: number[];
  down_block_types: string[];
  up_block_types: string[];
  layers_per_block: number;
  cross_attention_dim: number;
  norm_num_groups: number;
  norm_eps: number;
  /** Heads per block (diffusers' `attention_head_dim` is a head count in this family: its own naming slip). */
  heads: number[];
  use_linear_projection: boolean;
  flip_sin_to_cos: boolean;
  freq_shift: number;
}

const intOrList: Check = [(v) => posInt(v) || intList[0](v), "a positive integer or a list of them"];
const DOWN = ["CrossAttnDownBlock2D", "DownBlock2D"], UP = ["CrossAttnUpBlock2D", "UpBlock2D"];

// Keys understood, with the values supported; a key not here is refused.
const KEYS: Record<string, Check> = {
  in_channels: positiveInt,
  out_channels: positiveInt,
  sample_size: [(v) => v === null || posInt(v), "a positive integer"],
  block_out_channels: intList,
  down_block_types: listOf(...DOWN),
  up_block_types: listOf(...UP),
  mid_block_type: is("UNetMidBlock2DCrossAttn"),
  layers_per_block: positiveInt,
  cross_attention_dim: positiveInt,
  norm_num_groups: positiveInt,
  norm_eps: positive,
  attention_head_dim: intOrList,
  // diffusers v0.31.0 itself refuses any other value here (its attention_head_dim is the head count).
  num_attention_heads: is(null),
  use_linear_projection: bool,
  // Casts attention to float32, which the engine always computes in.
  upcast_attention: bool,
  flip_sin_to_cos: bool,
  freq_shift: nonNegativeInt,
  transformer_layers_per_block: is(1),
  act_fn: is("silu"),
  center_input_sample: is(false),
  downsample_padding: is(1),
  mid_block_scale_factor: is(1),
  resnet_out_scale_factor: is(1),
  dropout: is(0), // training with dropout is not reproduced; at inference diffusers ignores it too
  only_cross_attention: is(false),
  dual_cross_attention: is(false),
  mid_block_only_cross_attention: is(null, false),
  cross_attention_norm: is(null),
  attention_type: is("default"),
  resnet_time_scale_shift: is("default"),
  resnet_skip_time_act: is(false),
  time_embedding_type: is("positional"),
  time_embedding_dim: is(null),
  time_embedding_act_fn: is(null),
  timestep_post_act: is(null),
  time_cond_proj_dim: is(null),
  conv_in_kernel: is(3),
  conv_out_kernel: is(3),
  class_embed_type: is(null),
  num_class_embeds: is(null),
  class_embeddings_concat: is(false),
  addition_embed_type: is(null),
  addition_time_embed_dim: is(null),
  addition_embed_type_num_heads: [() => true, ""], // read only with addition_embed_type
  projection_class_embeddings_input_dim: is(null),
  encoder_hid_dim: is(null),
  encoder_hid_dim_type: is(null),
  reverse_transformer_layers_per_block: is(null),
};

/** Validates a parsed `config.json` (diffusers' defaults for missing keys); throws one line for what is unsupported. */
export function unetConfig(json: unknown, source = "config.json"): UNetConfig {
  const j = checkKeys(json, source, "UNet2DConditionModel", KEYS);
  const c = {
    in_channels: 4,
    out_channels: 4,
    sample_size: 64,
    block_out_channels: [320, 640, 1280, 1280],
    down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block: 2,
    cross_attention_dim: 1280,
    norm_num_groups: 32,
    norm_eps: 1e-5,
    attention_head_dim: 8,
    use_linear_projection: false,
    flip_sin_to_cos: true,
    freq_shift: 0,
    ...j,
  } as Record<string, unknown> & Omit<UNetConfig, "heads"> & { attention_head_dim: number | number[] };
  const n = c.block_out_channels.length;
  for (const k of ["down_block_types", "up_block_types"] as const) {
    if (c[k].length !== n) {
      throw new DiffusersConfigError(source, `${k} has ${c[k].length} blocks but block_out_channels has ${n}`);
    }
  }
  const heads = typeof c.attention_head_dim === "number"
    ? c.block_out_channels.map(() => c.attention_head_dim as number)
    : c.attention_head_dim;
  if (heads.length !== n) throw new DiffusersConfigError(source, `attention_head_dim ${show(heads)} needs ${n} values`);
  c.block_out_channels.forEach((ch, i) => {
    if (ch % c.norm_num_groups) {
      throw new DiffusersConfigError(
        source,
        `norm_num_groups ${c.norm_num_groups} does not divide block_out_channels ${ch}`,
      );
    }
    if (ch % heads[i]) {
      throw new DiffusersConfigError(source, `attention_head_dim ${heads[i]} does not divide block_out_channels ${ch}`);
    }
  });
  return { ...c, heads, sample_size: c.sample_size ?? 64 };
}

/** The block structure; channel counts follow the skip connections as diffusers' `get_up_block` arguments do. */
export function unetPlan(cfg: UNetConfig): UNetPlan {
  const n = cfg.block_out_channels.length;
  const down = cfg.down_block_types.map((t, i) => t === "CrossAttnDownBlock2D" ? cfg.heads[i] : null);
  const up = cfg.up_block_types.map((t, i) => t === "CrossAttnUpBlock2D" ? cfg.heads[n - 1 - i] : null);
  return layoutBlocks(cfg.block_out_channels, cfg.layers_per_block, down, up, cfg.heads[n - 1]);
}
