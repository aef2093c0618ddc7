/**
 * diffusers' `UNet2DConditionModel` in the Stable Diffusion 1.x/2.x family (CrossAttnDownBlock2D, DownBlock2D,
 * UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D; Transformer2DModel with one BasicTransformerBlock of
 * self-attention, cross-attention and a GEGLU feed-forward), built from its `config.json` and written in the engine's
 * primitives, so its gradients come from the engine's rule table. Parameters are named by diffusers' own state-dict
 * keys, so `diffusion_pytorch_model.safetensors` loads as it is.
 *
 * @module
 */
import { add, mul } from "../../engine/math.ts";
import { attention, conv, gelu, groupNorm, layerNorm, linear } from "../../engine/nn.ts";
import { reshape, sliceAxis, transpose } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { type Params as P, type Shapes, timeEmbedding, unetShapesWith, walkUNet } from "./blocks.ts";
import { type UNetConfig, unetPlan } from "./unet2d_condition_config.ts";

function transformerShapes(s: Shapes, at: string, c: number, ctx: number, linearProj: boolean) {
  s[`${at}.norm.weight`] = s[`${at}.norm.bias`] = [c];
  for (const k of ["proj_in", "proj_out"]) {
    s[`${at}.${k}.weight`] = linearProj ? [c, c] : [c, c, 1, 1];
    s[`${at}.${k}.bias`] = [c];
  }
  const tb = `${at}.transformer_blocks.0`;
  for (const n of ["norm1", "norm2", "norm3"]) s[`${tb}.${n}.weight`] = s[`${tb}.${n}.bias`] = [c];
  for (const [a, kv] of [["attn1", c], ["attn2", ctx]] as const) {
    s[`${tb}.${a}.to_q.weight`] = [c, c];
    s[`${tb}.${a}.to_k.weight`] = [c, kv];
    s[`${tb}.${a}.to_v.weight`] = [c, kv];
    s[`${tb}.${a}.to_out.0.weight`] = [c, c];
    s[`${tb}.${a}.to_out.0.bias`] = [c];
  }
  s[`${tb}.ff.net.0.proj.weight`] = [8 * c, c];
  s[`${tb}.ff.net.0.proj.bias`] = [8 * c];
  s[`${tb}.ff.net.2.weight`] = [c, 4 * c];
  s[`${tb}.ff.net.2.bias`] = [c];
}

/** Every parameter's shape under its diffusers state-dict key. */
export function unetShapes(cfg: UNetConfig): Shapes {
  return unetShapesWith(
    unetPlan(cfg),
    cfg.in_channels,
    cfg.out_channels,
    (s, a) => transformerShapes(s, a.at, a.c, cfg.cross_attention_dim, cfg.use_linear_projection),
  );
}

function attn(p: P, at: string, x: Tensor, ctx: Tensor, heads: number): Tensor {
  const o = attention(
    linear(x, p[`${at}.to_q.weight`]),
    linear(ctx, p[`${at}.to_k.weight`]),
    linear(ctx, p[`${at}.to_v.weight`]),
    heads,
  );
  return linear(o, p[`${at}.to_out.0.weight`], p[`${at}.to_out.0.bias`]);
}

function basicBlock(p: P, at: string, x: Tensor, ctx: Tensor, heads: number): Tensor {
  const n = (k: string, v: Tensor) => layerNorm(v, p[`${at}.${k}.weight`], p[`${at}.${k}.bias`]);
  let h = n("norm1", x);
  x = add(x, attn(p, `${at}.attn1`, h, h, heads));
  x = add(x, attn(p, `${at}.attn2`, n("norm2", x), ctx, heads));
  // GEGLU (Shazeer 2020): the projection's first half gated by the GELU of its second half.
  const g = linear(n("norm3", x), p[`${at}.ff.net.0.proj.weight`], p[`${at}.ff.net.0.proj.bias`]);
  const inner = g.shape[g.ndim - 1] / 2;
  h = mul(sliceAxis(g, -1, 0, inner), gelu(sliceAxis(g, -1, inner, 2 * inner)));
  return add(x, linear(h, p[`${at}.ff.net.2.weight`], p[`${at}.ff.net.2.bias`]));
}

function transformer(p: P, at: string, x: Tensor, ctx: Tensor, heads: number, cfg: UNetConfig): Tensor {
  const [b, c, hh, ww] = x.shape;
  const toTokens = (t: Tensor) => transpose(reshape(t, [b, c, hh * ww]), [0, 2, 1]);
  const fromTokens = (t: Tensor) => reshape(transpose(t, [0, 2, 1]), [b, c, hh, ww]);
  // Transformer2DModel's group norm has eps 1e-6, not the config's norm_eps.
  const n = groupNorm(x, cfg.norm_num_groups, p[`${at}.norm.weight`], p[`${at}.norm.bias`], 1e-6);
  const pin = [p[`${at}.proj_in.weight`], p[`${at}.proj_in.bias`]] as const;
  const pout = [p[`${at}.proj_out.weight`], p[`${at}.proj_out.bias`]] as const;
  let tok = cfg.use_linear_projection ? linear(toTokens(n), ...pin) : toTokens(conv(n, ...pin));
  tok = basicBlock(p, `${at}.transformer_blocks.0`, tok, ctx, heads);
  const out = cfg.use_linear_projection ? fromTokens(linear(tok, ...pout)) : conv(fromTokens(tok), ...pout);
  return add(out, x);
}

/** The forward pass: `sample` [B, C, H, W], `timestep` [B], `encoder_hidden_states` [B, L, D] → [B, C_out, H, W]. */
export function unet2dConditionForward(cfg: UNetConfig, p: P, sample: Tensor, timestep: Tensor, ctx: Tensor): Tensor {
  const temb = timeEmbedding(p, timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
  return walkUNet(p, unetPlan(cfg), sample, temb, {
    groups: cfg.norm_num_groups,
    eps: cfg.norm_eps,
    downsamplePadding: 1,
    attend: (a, h) => transformer(p, a.at, h, ctx, a.heads, cfg),
  });
}
