/**
 * diffusers' `UNet2DConditionModel` in the Stable Diffusion 1.x/2.x family (CrossAttnDownBlock2D, DownBlock2D,
 * UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D; Transformer2DModel with one BasicTransformerBlock of
 * self-attention, cross-attention and a GEGLU feed-forward), built from its `config.json` and written in the engine's
 * primitives, so its gradients come from the engine's rule table. Parameters are named by diffusers' own state-dict
 * keys, so `diffusion_pytorch_model.safetensors` loads as it is.
 *
 * @module
 */
import { add, cos, mul, sin } from "../../engine/math.ts";
import { attention, conv, gelu, groupNorm, layerNorm, linear, silu, upsampleNearest } from "../../engine/nn.ts";
import { concat, reshape, sliceAxis, transpose } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { type UNetConfig, type UNetPlan, unetPlan } from "./unet2d_condition_config.ts";

type P = Record<string, Tensor>;
type Shapes = Record<string, number[]>;

function resnetShapes(s: Shapes, at: string, cin: number, cout: number, temb: number) {
  s[`${at}.norm1.weight`] = s[`${at}.norm1.bias`] = [cin];
  s[`${at}.conv1.weight`] = [cout, cin, 3, 3];
  s[`${at}.conv1.bias`] = [cout];
  s[`${at}.time_emb_proj.weight`] = [cout, temb];
  s[`${at}.time_emb_proj.bias`] = [cout];
  s[`${at}.norm2.weight`] = s[`${at}.norm2.bias`] = [cout];
  s[`${at}.conv2.weight`] = [cout, cout, 3, 3];
  s[`${at}.conv2.bias`] = [cout];
  if (cin !== cout) {
    s[`${at}.conv_shortcut.weight`] = [cout, cin, 1, 1];
    s[`${at}.conv_shortcut.bias`] = [cout];
  }
}

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
  const plan = unetPlan(cfg), s: Shapes = {}, c0 = cfg.block_out_channels[0], T = plan.timeDim;
  s["time_embedding.linear_1.weight"] = [T, c0];
  s["time_embedding.linear_1.bias"] = [T];
  s["time_embedding.linear_2.weight"] = [T, T];
  s["time_embedding.linear_2.bias"] = [T];
  s["conv_in.weight"] = [c0, cfg.in_channels, 3, 3];
  s["conv_in.bias"] = [c0];
  for (const b of [...plan.down, plan.mid, ...plan.up]) {
    for (const r of b.resnets) resnetShapes(s, r.at, r.cin, r.cout, T);
    for (const a of b.attentions) transformerShapes(s, a.at, a.c, cfg.cross_attention_dim, cfg.use_linear_projection);
    if (b.resample) {
      s[`${b.resample.at}.weight`] = [b.resample.c, b.resample.c, 3, 3];
      s[`${b.resample.at}.bias`] = [b.resample.c];
    }
  }
  s["conv_norm_out.weight"] = s["conv_norm_out.bias"] = [c0];
  s["conv_out.weight"] = [cfg.out_channels, c0, 3, 3];
  s["conv_out.bias"] = [cfg.out_channels];
  return s;
}

/** diffusers' `get_timestep_embedding` with `flip_sin_to_cos` and `freq_shift`: [B] → [B, dim]. */
function timestepEmbedding(t: Tensor, dim: number, flip: boolean, shift: number): Tensor {
  const half = dim / 2;
  const freqs = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / (half - shift)));
  const arg = mul(reshape(t, [-1, 1]), t.trace.constant(freqs, [1, half]));
  return concat(flip ? [cos(arg), sin(arg)] : [sin(arg), cos(arg)], 1);
}

function resnet(p: P, at: string, x: Tensor, temb: Tensor, groups: number, eps: number): Tensor {
  let h = silu(groupNorm(x, groups, p[`${at}.norm1.weight`], p[`${at}.norm1.bias`], eps));
  h = conv(h, p[`${at}.conv1.weight`], p[`${at}.conv1.bias`], { pad: 1 });
  const t = linear(silu(temb), p[`${at}.time_emb_proj.weight`], p[`${at}.time_emb_proj.bias`]);
  h = add(h, reshape(t, [t.shape[0], -1, 1, 1]));
  h = silu(groupNorm(h, groups, p[`${at}.norm2.weight`], p[`${at}.norm2.bias`], eps));
  h = conv(h, p[`${at}.conv2.weight`], p[`${at}.conv2.bias`], { pad: 1 });
  const skip = p[`${at}.conv_shortcut.weight`]
    ? conv(x, p[`${at}.conv_shortcut.weight`], p[`${at}.conv_shortcut.bias`])
    : x;
  return add(skip, h);
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

function block(p: P, b: UNetPlan["mid"], h: Tensor, temb: Tensor, ctx: Tensor, cfg: UNetConfig, skips?: Tensor[]) {
  const outs: Tensor[] = [];
  b.resnets.forEach((r, j) => {
    if (skips) h = concat([h, skips.pop()!], 1);
    h = resnet(p, r.at, h, temb, cfg.norm_num_groups, cfg.norm_eps);
    const a = b.attentions[j];
    if (a) h = transformer(p, a.at, h, ctx, a.heads, cfg);
    outs.push(h);
  });
  return { h, outs };
}

/** The forward pass: `sample` [B, C, H, W], `timestep` [B], `encoder_hidden_states` [B, L, D] → [B, C_out, H, W]. */
export function unet2dConditionForward(cfg: UNetConfig, p: P, sample: Tensor, timestep: Tensor, ctx: Tensor): Tensor {
  const plan = unetPlan(cfg);
  let temb = timestepEmbedding(timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
  temb = linear(temb, p["time_embedding.linear_1.weight"], p["time_embedding.linear_1.bias"]);
  temb = linear(silu(temb), p["time_embedding.linear_2.weight"], p["time_embedding.linear_2.bias"]);
  let h = conv(sample, p["conv_in.weight"], p["conv_in.bias"], { pad: 1 });
  const skips = [h];
  for (const b of plan.down) {
    const r = block(p, b, h, temb, ctx, cfg);
    h = r.h;
    skips.push(...r.outs);
    if (b.resample) {
      h = conv(h, p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { stride: 2, pad: 1 });
      skips.push(h);
    }
  }
  h = resnet(p, plan.mid.resnets[0].at, h, temb, cfg.norm_num_groups, cfg.norm_eps);
  h = transformer(p, plan.mid.attentions[0].at, h, ctx, plan.mid.attentions[0].heads, cfg);
  h = resnet(p, plan.mid.resnets[1].at, h, temb, cfg.norm_num_groups, cfg.norm_eps);
  for (const b of plan.up) {
    h = block(p, b, h, temb, ctx, cfg, skips).h;
    if (b.resample) {
      h = conv(upsampleNearest(h, 2), p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { pad: 1 });
    }
  }
  h = silu(groupNorm(h, cfg.norm_num_groups, p["conv_norm_out.weight"], p["conv_norm_out.bias"], cfg.norm_eps));
  return conv(h, p["conv_out.weight"], p["conv_out.bias"], { pad: 1 });
}
