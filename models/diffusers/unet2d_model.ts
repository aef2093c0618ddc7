/**
 * diffusers' `UNet2DModel`, the unconditional UNet of the DDPM family (DownBlock2D, AttnDownBlock2D, UNetMidBlock2D,
 * UpBlock2D, AttnUpBlock2D), built from its `config.json` in the engine's primitives under diffusers' own state-dict
 * keys, so `diffusion_pytorch_model.safetensors` loads as it is. Its resnets, time embedding and U-shaped walk are
 * UNet2DConditionModel's (blocks.ts); its attention is the single-layer spatial self-attention with its own group norm.
 *
 * @module
 */
import { add } from "../../engine/math.ts";
import { attention, groupNorm, linear } from "../../engine/nn.ts";
import { reshape, transpose } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { type AttnPlan, type Params, type Shapes, timeEmbedding, unetShapesWith, walkUNet } from "./blocks.ts";
import { type UNet2DModelConfig, unet2dModelPlan } from "./unet2d_model_config.ts";

function attnShapes(s: Shapes, a: AttnPlan) {
  s[`${a.at}.group_norm.weight`] = s[`${a.at}.group_norm.bias`] = [a.c];
  for (const k of ["to_q", "to_k", "to_v", "to_out.0"]) {
    s[`${a.at}.${k}.weight`] = [a.c, a.c];
    s[`${a.at}.${k}.bias`] = [a.c];
  }
}

/** Every parameter's shape under its diffusers state-dict key. */
export function unet2dModelShapes(cfg: UNet2DModelConfig): Shapes {
  return unetShapesWith(unet2dModelPlan(cfg), cfg.in_channels, cfg.out_channels, attnShapes);
}

/**
 * Self-attention over the H·W positions of a group-normed input, added back to the input (the norm is the
 * attention's own, diffusers' `group_norm`, so the residual is the un-normed feature map).
 */
function spatialAttention(p: Params, a: AttnPlan, x: Tensor, groups: number, eps: number): Tensor {
  const [b, c, h, w] = x.shape, at = a.at;
  const n = groupNorm(x, groups, p[`${at}.group_norm.weight`], p[`${at}.group_norm.bias`], eps);
  const tok = transpose(reshape(n, [b, c, h * w]), [0, 2, 1]);
  const proj = (k: string, t: Tensor) => linear(t, p[`${at}.${k}.weight`], p[`${at}.${k}.bias`]);
  const o = proj("to_out.0", attention(proj("to_q", tok), proj("to_k", tok), proj("to_v", tok), a.heads));
  return add(reshape(transpose(o, [0, 2, 1]), [b, c, h, w]), x);
}

/** The forward pass: `sample` [B, C, H, W], `timestep` [B] → [B, C_out, H, W]. */
export function unet2dModelForward(cfg: UNet2DModelConfig, p: Params, sample: Tensor, timestep: Tensor): Tensor {
  const temb = timeEmbedding(p, timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
  return walkUNet(p, unet2dModelPlan(cfg), sample, temb, {
    groups: cfg.norm_num_groups,
    eps: cfg.norm_eps,
    downsamplePadding: cfg.downsample_padding,
    attend: (a, h) =>
      spatialAttention(
        p,
        a,
        h,
        a.at.startsWith("mid_block") ? cfg.attn_norm_num_groups : cfg.norm_num_groups,
        cfg.norm_eps,
      ),
  });
}
