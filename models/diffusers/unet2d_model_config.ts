/**
 * A diffusers `UNet2DModel` (the unconditional UNet of the DDPM ports) `config.json`, validated before anything is
 * allocated (one error line naming the key and the value the project does not support), and its block structure.
 *
 * @module
 */
import { layoutBlocks, type UNetPlan } from "./blocks.ts";
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

/** The settings the project's UNet2DModel reads. */
export interface UNet2DModelConfig {
  in_channels: number;
  out_channels: number;
  sample_size: number | [number, number] | null;
  block_out_channels: number[];
  down_block_types: string[];
  up_block_types: string[];
  layers_per_block: number;
  norm_num_groups: number;
  /** The group count of the mid block's attention norm (diffusers' `attn_norm_num_groups`, else norm_num_groups). */
  attn_norm_num_groups: number;
  norm_eps: number;
  /** Channels per head (in this model diffusers' `attention_head_dim` is what it says); null: one head. */
  attention_head_dim: number | null;
  add_attention: boolean;
  downsample_padding: 0 | 1;
  flip_sin_to_cos: boolean;
  freq_shift: number;
}

const DOWN = ["DownBlock2D", "AttnDownBlock2D"], UP = ["UpBlock2D", "AttnUpBlock2D"];
const orNull = (c: Check): Check => [(v) => v === null || c[0](v), `${c[1]} or null`];
const sizeCheck: Check = [
  (v) => v === null || posInt(v) || (Array.isArray(v) && v.length === 2 && v.every(posInt)),
  "a positive integer, a [height, width] pair or null",
];

// Keys understood, with the values supported; a key not here is refused.
const KEYS: Record<string, Check> = {
  sample_size: sizeCheck,
  in_channels: positiveInt,
  out_channels: positiveInt,
  center_input_sample: is(false),
  time_embedding_type: is("positional"),
  freq_shift: nonNegativeInt,
  flip_sin_to_cos: bool,
  down_block_types: listOf(...DOWN),
  up_block_types: listOf(...UP),
  block_out_channels: intList,
  layers_per_block: positiveInt,
  mid_block_scale_factor: is(1),
  downsample_padding: is(0, 1),
  downsample_type: is("conv"),
  upsample_type: is("conv"),
  dropout: is(0), // training with dropout is not reproduced; at inference diffusers ignores it too
  act_fn: is("silu"),
  attention_head_dim: orNull(positiveInt),
  norm_num_groups: positiveInt,
  attn_norm_num_groups: orNull(positiveInt),
  norm_eps: positive,
  resnet_time_scale_shift: is("default"),
  add_attention: bool,
  class_embed_type: is(null),
  num_class_embeds: is(null),
  // Read by diffusers only for the "learned" time embedding, which is refused above.
  num_train_timesteps: orNull(positiveInt),
};

/** Validates a parsed `config.json` (diffusers' defaults for missing keys); throws one line for what is unsupported. */
export function unet2dModelConfig(json: unknown, source = "config.json"): UNet2DModelConfig {
  const j = checkKeys(json, source, "UNet2DModel", KEYS);
  const c = {
    sample_size: null,
    in_channels: 3,
    out_channels: 3,
    freq_shift: 0,
    flip_sin_to_cos: true,
    down_block_types: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    block_out_channels: [224, 448, 672, 896],
    layers_per_block: 2,
    downsample_padding: 1,
    attention_head_dim: 8,
    norm_num_groups: 32,
    attn_norm_num_groups: null,
    norm_eps: 1e-5,
    add_attention: true,
    ...j,
  } as Omit<UNet2DModelConfig, "attn_norm_num_groups"> & { attn_norm_num_groups: number | null };
  const n = c.block_out_channels.length;
  for (const k of ["down_block_types", "up_block_types"] as const) {
    if (c[k].length !== n) {
      throw new DiffusersConfigError(source, `${k} has ${c[k].length} blocks but block_out_channels has ${n}`);
    }
  }
  const attnGroups = c.attn_norm_num_groups ?? c.norm_num_groups;
  const hasAttn = (i: number) =>
    c.down_block_types[i] === "AttnDownBlock2D" || c.up_block_types[n - 1 - i] === "AttnUpBlock2D" ||
    (i === n - 1 && c.add_attention);
  c.block_out_channels.forEach((ch, i) => {
    if (ch % c.norm_num_groups) {
      throw new DiffusersConfigError(
        source,
        `norm_num_groups ${c.norm_num_groups} does not divide block_out_channels ${ch}`,
      );
    }
    if (hasAttn(i) && c.attention_head_dim !== null && ch % c.attention_head_dim) {
      throw new DiffusersConfigError(
        source,
        `attention_head_dim ${c.attention_head_dim} does not divide block_out_channels ${ch}`,
      );
    }
  });
  const last = c.block_out_channels[n - 1];
  if (c.add_attention && last % attnGroups) {
    throw new DiffusersConfigError(source, `attn_norm_num_groups ${show(attnGroups)} does not divide ${last}`);
  }
  return { ...c, attn_norm_num_groups: attnGroups };
}

/** The block structure, with each attention layer's head count. */
export function unet2dModelPlan(cfg: UNet2DModelConfig): UNetPlan {
  const ch = cfg.block_out_channels, n = ch.length;
  const heads = (c: number) => cfg.attention_head_dim === null ? 1 : c / cfg.attention_head_dim;
  const down = cfg.down_block_types.map((t, i) => t === "AttnDownBlock2D" ? heads(ch[i]) : null);
  const up = cfg.up_block_types.map((t, i) => t === "AttnUpBlock2D" ? heads(ch[n - 1 - i]) : null);
  return layoutBlocks(ch, cfg.layers_per_block, down, up, cfg.add_attention ? heads(ch[n - 1]) : null);
}
