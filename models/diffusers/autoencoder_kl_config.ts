/**
 * A diffusers `AutoencoderKL` `config.json` (the Stable Diffusion VAE family), validated before anything is allocated:
 * what the project does not support is one error line naming the key and the value.
 *
 * @module
 */
import { DiffusersConfigError } from "./scheduler_config.ts";

/** The settings the project's AutoencoderKL reads. */
export interface VaeConfig {
  in_channels: number;
  out_channels: number;
  block_out_channels: number[];
  layers_per_block: number;
  latent_channels: number;
  norm_num_groups: number;
  /** The first side when the file gives `[h, w]`; only diffusers' tiling reads it. */
  sample_size: number;
  scaling_factor: number;
  /** 0 where the file has `null`: SD 1.x/2.x/XL latents are not shifted, SD3/FLUX ones are. */
  shift_factor: number;
  force_upcast: boolean;
  mid_block_add_attention: boolean;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
}

type Check = [(v: unknown) => boolean, string];
const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
const bool: Check = [(v) => typeof v === "boolean", "true or false"];
const is = (...xs: unknown[]): Check => [(v) => xs.includes(v), xs.map((x) => JSON.stringify(x)).join(" or ")];
const listOf = (name: string): Check => [
  (v) => Array.isArray(v) && v.length > 0 && v.every((x) => x === name),
  `a list of ${name}`,
];
const finite = (v: unknown) => typeof v === "number" && Number.isFinite(v);

// Keys understood, with the values supported; a key not here is refused.
const KEYS: Record<string, Check> = {
  in_channels: [posInt, "a positive integer"],
  out_channels: [posInt, "a positive integer"],
  down_block_types: listOf("DownEncoderBlock2D"),
  up_block_types: listOf("UpDecoderBlock2D"),
  block_out_channels: [(v) => Array.isArray(v) && v.length > 0 && v.every(posInt), "a list of positive integers"],
  layers_per_block: [posInt, "a positive integer"],
  act_fn: is("silu"),
  latent_channels: [posInt, "a positive integer"],
  norm_num_groups: [posInt, "a positive integer"],
  sample_size: [
    (v) => posInt(v) || (Array.isArray(v) && v.length === 2 && v.every(posInt)),
    "a positive integer or [height, width]",
  ],
  scaling_factor: [(v) => finite(v) && (v as number) > 0, "a positive number"],
  shift_factor: [(v) => v === null || finite(v), "null or a number"],
  // Per-channel latent statistics (a few pipelines' alternative to scaling_factor) are not applied by the helpers here.
  latents_mean: is(null),
  latents_std: is(null),
  // Asks for float32 in half-precision pipelines; the engine always computes in float32.
  force_upcast: bool,
  mid_block_add_attention: bool,
  use_quant_conv: bool,
  use_post_quant_conv: bool,
};

const show = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v);

/** Validates a parsed `config.json` (diffusers' defaults for missing keys); throws one line for what is unsupported. */
export function vaeConfig(json: unknown, source = "config.json"): VaeConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new DiffusersConfigError(source, `expected a JSON object, got ${show(json)}`);
  }
  const j = json as Record<string, unknown>;
  if (j._class_name !== undefined && j._class_name !== "AutoencoderKL") {
    throw new DiffusersConfigError(source, `_class_name ${show(j._class_name)} is not AutoencoderKL`);
  }
  for (const [k, v] of Object.entries(j)) {
    if (k.startsWith("_")) continue;
    if (!Object.hasOwn(KEYS, k)) throw new DiffusersConfigError(source, `${k}: unknown key (value ${show(v)})`);
    if (!KEYS[k][0](v)) {
      throw new DiffusersConfigError(source, `${k} ${show(v)} is not supported (expected ${KEYS[k][1]})`);
    }
  }
  const c = {
    in_channels: 3,
    out_channels: 3,
    down_block_types: ["DownEncoderBlock2D"],
    up_block_types: ["UpDecoderBlock2D"],
    block_out_channels: [64],
    layers_per_block: 1,
    latent_channels: 4,
    norm_num_groups: 32,
    sample_size: 32,
    scaling_factor: 0.18215,
    shift_factor: null,
    force_upcast: true,
    mid_block_add_attention: true,
    use_quant_conv: true,
    use_post_quant_conv: true,
    ...j,
  } as Record<string, unknown> & Omit<VaeConfig, "sample_size" | "shift_factor"> & {
    sample_size: number | number[];
    shift_factor: number | null;
    down_block_types: string[];
    up_block_types: string[];
  };
  const n = c.block_out_channels.length;
  for (const k of ["down_block_types", "up_block_types"] as const) {
    if (c[k].length !== n) {
      throw new DiffusersConfigError(source, `${k} has ${c[k].length} blocks but block_out_channels has ${n}`);
    }
  }
  for (const ch of c.block_out_channels) {
    if (ch % c.norm_num_groups) {
      throw new DiffusersConfigError(
        source,
        `norm_num_groups ${c.norm_num_groups} does not divide block_out_channels ${ch}`,
      );
    }
  }
  return {
    in_channels: c.in_channels,
    out_channels: c.out_channels,
    block_out_channels: c.block_out_channels,
    layers_per_block: c.layers_per_block,
    latent_channels: c.latent_channels,
    norm_num_groups: c.norm_num_groups,
    sample_size: Array.isArray(c.sample_size) ? c.sample_size[0] : c.sample_size,
    scaling_factor: c.scaling_factor,
    shift_factor: c.shift_factor ?? 0,
    force_upcast: c.force_upcast,
    mid_block_add_attention: c.mid_block_add_attention,
    use_quant_conv: c.use_quant_conv,
    use_post_quant_conv: c.use_post_quant_conv,
  };
}

/** One resnet of the encoder or decoder, by its key prefix. */
export interface VaeResnet {
  at: string;
  cin: number;
  cout: number;
}

/** A down (encoder) or up (decoder) block: its resnets and the resampling conv that ends it, if any. */
export interface VaeBlock {
  resnets: VaeResnet[];
  resample?: { at: string; c: number };
}

/** The encoder and decoder blocks, as diffusers' `Encoder`/`Decoder` constructors lay them out. */
export interface VaePlan {
  down: VaeBlock[];
  up: VaeBlock[];
  /** The channel width of both mid blocks: the last of block_out_channels. */
  mid: number;
}

/** The block structure: the decoder mirrors the encoder with one more resnet per block. */
export function vaePlan(cfg: VaeConfig): VaePlan {
  const ch = cfg.block_out_channels, n = ch.length, L = cfg.layers_per_block;
  const down: VaeBlock[] = [], up: VaeBlock[] = [];
  let c = ch[0];
  ch.forEach((co, i) => {
    const b: VaeBlock = { resnets: [] };
    for (let j = 0; j < L; j++, c = co) {
      b.resnets.push({ at: `encoder.down_blocks.${i}.resnets.${j}`, cin: c, cout: co });
    }
    if (i < n - 1) b.resample = { at: `encoder.down_blocks.${i}.downsamplers.0.conv`, c: co };
    down.push(b);
  });
  c = ch[n - 1];
  for (let i = 0; i < n; i++) {
    const co = ch[n - 1 - i], b: VaeBlock = { resnets: [] };
    for (let j = 0; j <= L; j++, c = co) {
      b.resnets.push({ at: `decoder.up_blocks.${i}.resnets.${j}`, cin: c, cout: co });
    }
    if (i < n - 1) b.resample = { at: `decoder.up_blocks.${i}.upsamplers.0.conv`, c: co };
    up.push(b);
  }
  return { down, up, mid: ch[n - 1] };
}
