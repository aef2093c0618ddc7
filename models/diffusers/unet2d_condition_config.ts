/**
 * A diffusers `UNet2DConditionModel` `config.json`, validated before anything is allocated (one error line naming the
 * key and the value the project does not support), and the block structure it implies under diffusers' key names.
 *
 * @module
 */
import { DiffusersConfigError } from "./scheduler_config.ts";

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

type Check = [(v: unknown) => boolean, string];
const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
const is = (...xs: unknown[]): Check => [(v) => xs.includes(v), xs.map((x) => JSON.stringify(x)).join(" or ")];
const intList: Check = [(v) => Array.isArray(v) && v.length > 0 && v.every(posInt), "a list of positive integers"];
const intOrList: Check = [(v) => posInt(v) || intList[0](v), "a positive integer or a list of them"];
const DOWN = ["CrossAttnDownBlock2D", "DownBlock2D"], UP = ["CrossAttnUpBlock2D", "UpBlock2D"];

// Keys understood, with the values supported; a key not here is refused.
const KEYS: Record<string, Check> = {
  in_channels: [posInt, "a positive integer"],
  out_channels: [posInt, "a positive integer"],
  sample_size: [(v) => v === null || posInt(v), "a positive integer"],
  block_out_channels: intList,
  down_block_types: [(v) => Array.isArray(v) && v.every((x) => DOWN.includes(x)), `a list of ${DOWN.join(", ")}`],
  up_block_types: [(v) => Array.isArray(v) && v.every((x) => UP.includes(x)), `a list of ${UP.join(", ")}`],
  mid_block_type: is("UNetMidBlock2DCrossAttn"),
  layers_per_block: [posInt, "a positive integer"],
  cross_attention_dim: [posInt, "a positive integer"],
  norm_num_groups: [posInt, "a positive integer"],
  norm_eps: [(v) => typeof v === "number" && v > 0, "a positive number"],
  attention_head_dim: intOrList,
  // diffusers v0.31.0 itself refuses any other value here (its attention_head_dim is the head count).
  num_attention_heads: is(null),
  use_linear_projection: [(v) => typeof v === "boolean", "true or false"],
  // Casts attention to float32, which the engine always computes in.
  upcast_attention: [(v) => typeof v === "boolean", "true or false"],
  flip_sin_to_cos: [(v) => typeof v === "boolean", "true or false"],
  freq_shift: [(v) => Number.isInteger(v) && (v as number) >= 0, "a non-negative integer"],
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

const show = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v);

/** Validates a parsed `config.json` (diffusers' defaults for missing keys); throws one line for what is unsupported. */
export function unetConfig(json: unknown, source = "config.json"): UNetConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new DiffusersConfigError(source, `expected a JSON object, got ${show(json)}`);
  }
  const j = json as Record<string, unknown>;
  if (j._class_name !== undefined && j._class_name !== "UNet2DConditionModel") {
    throw new DiffusersConfigError(source, `_class_name ${show(j._class_name)} is not UNet2DConditionModel`);
  }
  for (const [k, v] of Object.entries(j)) {
    if (k.startsWith("_")) continue;
    if (!Object.hasOwn(KEYS, k)) throw new DiffusersConfigError(source, `${k}: unknown key (value ${show(v)})`);
    if (!KEYS[k][0](v)) {
      throw new DiffusersConfigError(source, `${k} ${show(v)} is not supported (expected ${KEYS[k][1]})`);
    }
  }
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

/** One resnet, transformer or resampler of a block, by its key prefix. */
export interface BlockPlan {
  resnets: { at: string; cin: number; cout: number }[];
  attentions: { at: string; c: number; heads: number }[];
  resample?: { at: string; c: number };
}

/** The blocks of the network, as diffusers' constructor lays them out. */
export interface UNetPlan {
  timeDim: number;
  down: BlockPlan[];
  mid: BlockPlan;
  up: BlockPlan[];
}

/** The block structure; channel counts follow the skip connections as diffusers' `get_up_block` arguments do. */
export function unetPlan(cfg: UNetConfig): UNetPlan {
  const ch = cfg.block_out_channels, n = ch.length, L = cfg.layers_per_block;
  const skips = [ch[0]], down: BlockPlan[] = [], up: BlockPlan[] = [];
  let c = ch[0];
  ch.forEach((co, i) => {
    const b: BlockPlan = { resnets: [], attentions: [] }, cross = cfg.down_block_types[i] === "CrossAttnDownBlock2D";
    for (let j = 0; j < L; j++) {
      b.resnets.push({ at: `down_blocks.${i}.resnets.${j}`, cin: c, cout: co });
      if (cross) b.attentions.push({ at: `down_blocks.${i}.attentions.${j}`, c: co, heads: cfg.heads[i] });
      c = co;
      skips.push(c);
    }
    if (i < n - 1) {
      b.resample = { at: `down_blocks.${i}.downsamplers.0.conv`, c };
      skips.push(c);
    }
    down.push(b);
  });
  const mid: BlockPlan = {
    resnets: [0, 1].map((j) => ({ at: `mid_block.resnets.${j}`, cin: c, cout: c })),
    attentions: [{ at: "mid_block.attentions.0", c, heads: cfg.heads[n - 1] }],
  };
  for (let i = 0; i < n; i++) {
    const co = ch[n - 1 - i], b: BlockPlan = { resnets: [], attentions: [] };
    const cross = cfg.up_block_types[i] === "CrossAttnUpBlock2D";
    for (let j = 0; j <= L; j++) {
      b.resnets.push({ at: `up_blocks.${i}.resnets.${j}`, cin: c + skips.pop()!, cout: co });
      if (cross) b.attentions.push({ at: `up_blocks.${i}.attentions.${j}`, c: co, heads: cfg.heads[n - 1 - i] });
      c = co;
    }
    if (i < n - 1) b.resample = { at: `up_blocks.${i}.upsamplers.0.conv`, c };
    up.push(b);
  }
  return { timeDim: 4 * ch[0], down, mid, up };
}
