/**
 * diffusers' `AutoencoderKL`, the Stable Diffusion VAE (Encoder of DownEncoderBlock2D, Decoder of UpDecoderBlock2D,
 * UNetMidBlock2D with one single-head self-attention, the 1×1 quant convs and the diagonal Gaussian posterior), built
 * from its `config.json` in the engine's primitives, so its gradients come from the engine's rule table. Parameters
 * are named by diffusers' own state-dict keys; `renameOldVaeKeys` maps the attention names of early VAE files onto
 * them.
 *
 * @module
 */
import { add, div, maximum, minimum, mul, sub } from "../../engine/math.ts";
import { attention, conv, groupNorm, linear, silu, upsampleNearest } from "../../engine/nn.ts";
import { pad, reshape, sliceAxis, transpose } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { DiffusersConfigError } from "./scheduler_config.ts";
import { type VaeBlock, type VaeConfig, vaePlan } from "./autoencoder_kl_config.ts";

type P = Record<string, Tensor>;
type Shapes = Record<string, number[]>;

// diffusers builds every VAE norm (resnets, mid attention, conv_norm_out) with eps 1e-6, not GroupNorm's 1e-5.
const EPS = 1e-6;

function convShape(s: Shapes, at: string, cout: number, cin: number, k: number) {
  s[`${at}.weight`] = [cout, cin, k, k];
  s[`${at}.bias`] = [cout];
}

function normShape(s: Shapes, at: string, c: number) {
  s[`${at}.weight`] = s[`${at}.bias`] = [c];
}

function resnetShapes(s: Shapes, at: string, cin: number, cout: number) {
  normShape(s, `${at}.norm1`, cin);
  convShape(s, `${at}.conv1`, cout, cin, 3);
  normShape(s, `${at}.norm2`, cout);
  convShape(s, `${at}.conv2`, cout, cout, 3);
  if (cin !== cout) convShape(s, `${at}.conv_shortcut`, cout, cin, 1);
}

function midShapes(s: Shapes, at: string, c: number, withAttention: boolean) {
  resnetShapes(s, `${at}.resnets.0`, c, c);
  resnetShapes(s, `${at}.resnets.1`, c, c);
  if (!withAttention) return;
  const a = `${at}.attentions.0`;
  normShape(s, `${a}.group_norm`, c);
  for (const k of ["to_q", "to_k", "to_v", "to_out.0"]) {
    s[`${a}.${k}.weight`] = [c, c];
    s[`${a}.${k}.bias`] = [c];
  }
}

function blockShapes(s: Shapes, blocks: VaeBlock[]) {
  for (const b of blocks) {
    for (const r of b.resnets) resnetShapes(s, r.at, r.cin, r.cout);
    if (b.resample) convShape(s, b.resample.at, b.resample.c, b.resample.c, 3);
  }
}

/** Every parameter's shape under its diffusers state-dict key. */
export function vaeShapes(cfg: VaeConfig): Shapes {
  const plan = vaePlan(cfg), s: Shapes = {}, c0 = cfg.block_out_channels[0], lat = cfg.latent_channels;
  convShape(s, "encoder.conv_in", c0, cfg.in_channels, 3);
  blockShapes(s, plan.down);
  midShapes(s, "encoder.mid_block", plan.mid, cfg.mid_block_add_attention);
  normShape(s, "encoder.conv_norm_out", plan.mid);
  convShape(s, "encoder.conv_out", 2 * lat, plan.mid, 3);
  if (cfg.use_quant_conv) convShape(s, "quant_conv", 2 * lat, 2 * lat, 1);
  if (cfg.use_post_quant_conv) convShape(s, "post_quant_conv", lat, lat, 1);
  convShape(s, "decoder.conv_in", plan.mid, lat, 3);
  midShapes(s, "decoder.mid_block", plan.mid, cfg.mid_block_add_attention);
  blockShapes(s, plan.up);
  normShape(s, "decoder.conv_norm_out", c0);
  convShape(s, "decoder.conv_out", cfg.out_channels, c0, 3);
  return s;
}

/**
 * Checks a loaded state dict against the config's shapes: one line naming the first missing, unexpected or misshapen
 * key, so a wrong file fails before a graph is built.
 */
export function checkVaeWeights(cfg: VaeConfig, tensors: Record<string, { shape: number[] }>, source: string): void {
  const want = vaeShapes(cfg);
  const missing = Object.keys(want).filter((k) => !tensors[k]);
  const extra = Object.keys(tensors).filter((k) => !want[k]);
  if (missing.length) {
    throw new DiffusersConfigError(source, `missing ${missing.length} weights, e.g. ${missing.slice(0, 3).join(", ")}`);
  }
  if (extra.length) {
    throw new DiffusersConfigError(source, `${extra.length} unexpected weights, e.g. ${extra.slice(0, 3).join(", ")}`);
  }
  for (const [k, s] of Object.entries(want)) {
    const got = tensors[k].shape;
    if (got.join() !== s.join()) throw new DiffusersConfigError(source, `${k} has shape [${got}], expected [${s}]`);
  }
}

const OLD_ATTN: Record<string, string> = { query: "to_q", key: "to_k", value: "to_v", proj_attn: "to_out.0" };
const ATTN_KEY = /^(.*\.attentions\.\d+)\.(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/;

/**
 * Maps the attention names of VAE files written before diffusers' attention refactor (`query`, `key`, `value`,
 * `proj_attn`) onto the current ones, and squeezes attention weights stored conv-shaped ([C, C, 1, 1] or [C, C, 1])
 * to [C, C]: the 1×1 conv and the linear layer are the same map, and the trailing ones leave the data's order as it
 * is. Other keys pass through; a file already in the current names comes back unchanged.
 */
export function renameOldVaeKeys<T extends { shape: number[] }>(tensors: Record<string, T>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const [k, t] of Object.entries(tensors)) {
    const m = ATTN_KEY.exec(k);
    if (!m) {
      out[k] = t;
      continue;
    }
    const name = `${m[1]}.${OLD_ATTN[m[2]] ?? m[2]}.${m[3]}`;
    const squeeze = m[3] === "weight" && t.shape.length > 2 && t.shape.slice(2).every((d) => d === 1);
    out[name] = squeeze ? { ...t, shape: t.shape.slice(0, 2) } : t;
  }
  return out;
}

function resnet(p: P, at: string, x: Tensor, groups: number): Tensor {
  let h = silu(groupNorm(x, groups, p[`${at}.norm1.weight`], p[`${at}.norm1.bias`], EPS));
  h = conv(h, p[`${at}.conv1.weight`], p[`${at}.conv1.bias`], { pad: 1 });
  h = silu(groupNorm(h, groups, p[`${at}.norm2.weight`], p[`${at}.norm2.bias`], EPS));
  h = conv(h, p[`${at}.conv2.weight`], p[`${at}.conv2.bias`], { pad: 1 });
  const skip = p[`${at}.conv_shortcut.weight`]
    ? conv(x, p[`${at}.conv_shortcut.weight`], p[`${at}.conv_shortcut.bias`])
    : x;
  return add(skip, h);
}

/** The mid block's self-attention over the H·W pixels: one head as wide as the channels, with a residual. */
function midAttention(p: P, at: string, x: Tensor, groups: number): Tensor {
  const [b, c, hh, ww] = x.shape;
  const n = groupNorm(x, groups, p[`${at}.group_norm.weight`], p[`${at}.group_norm.bias`], EPS);
  const tok = transpose(reshape(n, [b, c, hh * ww]), [0, 2, 1]);
  const proj = (k: string, t: Tensor) => linear(t, p[`${at}.${k}.weight`], p[`${at}.${k}.bias`]);
  const o = proj("to_out.0", attention(proj("to_q", tok), proj("to_k", tok), proj("to_v", tok), 1));
  return add(reshape(transpose(o, [0, 2, 1]), [b, c, hh, ww]), x);
}

function midBlock(cfg: VaeConfig, p: P, at: string, h: Tensor): Tensor {
  const g = cfg.norm_num_groups;
  h = resnet(p, `${at}.resnets.0`, h, g);
  if (cfg.mid_block_add_attention) h = midAttention(p, `${at}.attentions.0`, h, g);
  return resnet(p, `${at}.resnets.1`, h, g);
}

function head(p: P, at: string, h: Tensor, groups: number): Tensor {
  h = silu(groupNorm(h, groups, p[`${at}.conv_norm_out.weight`], p[`${at}.conv_norm_out.bias`], EPS));
  return conv(h, p[`${at}.conv_out.weight`], p[`${at}.conv_out.bias`], { pad: 1 });
}

/** The encoder and `quant_conv`: image [B, C, H, W] → the posterior's moments [B, 2·latent, H/f, W/f]. */
export function vaeMoments(cfg: VaeConfig, p: P, x: Tensor): Tensor {
  const plan = vaePlan(cfg);
  let h = conv(x, p["encoder.conv_in.weight"], p["encoder.conv_in.bias"], { pad: 1 });
  for (const b of plan.down) {
    for (const r of b.resnets) h = resnet(p, r.at, h, cfg.norm_num_groups);
    if (b.resample) {
      // The encoder's downsampler pads one zero row and column at the bottom and right only (not one on every side,
      // as the UNet's does), then takes a 3×3 stride-2 conv without padding.
      h = pad(h, [0, 0, 0, 0], [0, 0, 1, 1]);
      h = conv(h, p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { stride: 2 });
    }
  }
  h = head(p, "encoder", midBlock(cfg, p, "encoder.mid_block", h), cfg.norm_num_groups);
  return cfg.use_quant_conv ? conv(h, p["quant_conv.weight"], p["quant_conv.bias"]) : h;
}

/** The diagonal Gaussian posterior of an image: its mean and its log-variance (clamped to [−30, 20] as diffusers). */
export function vaeEncode(cfg: VaeConfig, p: P, x: Tensor): { mean: Tensor; logvar: Tensor } {
  const m = vaeMoments(cfg, p, x), c = cfg.latent_channels;
  return { mean: sliceAxis(m, 1, 0, c), logvar: minimum(maximum(sliceAxis(m, 1, c, 2 * c), -30), 20) };
}

/** `post_quant_conv` and the decoder: VAE latent [B, latent, h, w] (unscaled) → image [B, C_out, h·f, w·f]. */
export function vaeDecode(cfg: VaeConfig, p: P, z: Tensor): Tensor {
  const plan = vaePlan(cfg);
  let h = cfg.use_post_quant_conv ? conv(z, p["post_quant_conv.weight"], p["post_quant_conv.bias"]) : z;
  h = conv(h, p["decoder.conv_in.weight"], p["decoder.conv_in.bias"], { pad: 1 });
  h = midBlock(cfg, p, "decoder.mid_block", h);
  for (const b of plan.up) {
    for (const r of b.resnets) h = resnet(p, r.at, h, cfg.norm_num_groups);
    if (b.resample) {
      h = conv(upsampleNearest(h, 2), p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { pad: 1 });
    }
  }
  return head(p, "decoder", h, cfg.norm_num_groups);
}

/** A VAE latent to the diffusion model's latent space: (z − shift_factor) · scaling_factor. */
export function vaeToLatent(cfg: VaeConfig, z: Tensor): Tensor {
  return mul(cfg.shift_factor ? sub(z, cfg.shift_factor) : z, cfg.scaling_factor);
}

/** The diffusion model's latent back to the VAE's: z / scaling_factor + shift_factor. */
export function vaeFromLatent(cfg: VaeConfig, z: Tensor): Tensor {
  const u = div(z, cfg.scaling_factor);
  return cfg.shift_factor ? add(u, cfg.shift_factor) : u;
}
