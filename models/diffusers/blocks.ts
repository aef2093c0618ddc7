/**
 * What diffusers' UNet2DModel and UNet2DConditionModel share, in engine primitives under diffusers' key names: the
 * ResnetBlock2D, the sinusoidal timestep embedding and its MLP, the conv resamplers, and the U-shaped walk over down
 * blocks, the mid block and up blocks with their skip connections. The two models differ only in their attention,
 * which the walk takes as a callback.
 *
 * @module
 */
import { add, cos, mul, sin } from "../../engine/math.ts";
import { conv, groupNorm, linear, silu, upsampleNearest } from "../../engine/nn.ts";
import { concat, reshape } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";

export type Params = Record<string, Tensor>;
export type Shapes = Record<string, number[]>;

/** One attention layer of a block: its key prefix, channels and head count. */
export interface AttnPlan {
  at: string;
  c: number;
  heads: number;
}

/** One down, mid or up block: its resnets, the attention after each (when it has them), its resampler. */
export interface BlockPlan {
  resnets: { at: string; cin: number; cout: number }[];
  attentions: AttnPlan[];
  resample?: { at: string; c: number };
}

/** The blocks of the network, as diffusers' constructors lay them out. */
export interface UNetPlan {
  timeDim: number;
  down: BlockPlan[];
  mid: BlockPlan;
  up: BlockPlan[];
}

/**
 * The block structure. `downHeads[i]` / `upHeads[i]` are the head counts of down block i / up block i (counted from
 * the bottom), null for a block without attention; `midHeads` null for a mid block without one. Channel counts follow
 * the skip connections, which is what diffusers' per-block in/prev-output/out channel arguments amount to.
 */
export function layoutBlocks(
  ch: number[],
  layers: number,
  downHeads: (number | null)[],
  upHeads: (number | null)[],
  midHeads: number | null,
): UNetPlan {
  const n = ch.length, skips = [ch[0]], down: BlockPlan[] = [], up: BlockPlan[] = [];
  let c = ch[0];
  ch.forEach((co, i) => {
    const b: BlockPlan = { resnets: [], attentions: [] }, heads = downHeads[i];
    for (let j = 0; j < layers; j++) {
      b.resnets.push({ at: `down_blocks.${i}.resnets.${j}`, cin: c, cout: co });
      if (heads !== null) b.attentions.push({ at: `down_blocks.${i}.attentions.${j}`, c: co, heads });
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
    attentions: midHeads === null ? [] : [{ at: "mid_block.attentions.0", c, heads: midHeads }],
  };
  for (let i = 0; i < n; i++) {
    const co = ch[n - 1 - i], b: BlockPlan = { resnets: [], attentions: [] }, heads = upHeads[i];
    for (let j = 0; j <= layers; j++) {
      b.resnets.push({ at: `up_blocks.${i}.resnets.${j}`, cin: c + skips.pop()!, cout: co });
      if (heads !== null) b.attentions.push({ at: `up_blocks.${i}.attentions.${j}`, c: co, heads });
      c = co;
    }
    if (i < n - 1) b.resample = { at: `up_blocks.${i}.upsamplers.0.conv`, c };
    up.push(b);
  }
  return { timeDim: 4 * ch[0], down, mid, up };
}

function convShape(s: Shapes, at: string, cout: number, cin: number, k: number) {
  s[`${at}.weight`] = [cout, cin, k, k];
  s[`${at}.bias`] = [cout];
}

function resnetShapes(s: Shapes, at: string, cin: number, cout: number, temb: number) {
  s[`${at}.norm1.weight`] = s[`${at}.norm1.bias`] = [cin];
  convShape(s, `${at}.conv1`, cout, cin, 3);
  s[`${at}.time_emb_proj.weight`] = [cout, temb];
  s[`${at}.time_emb_proj.bias`] = [cout];
  s[`${at}.norm2.weight`] = s[`${at}.norm2.bias`] = [cout];
  convShape(s, `${at}.conv2`, cout, cout, 3);
  if (cin !== cout) convShape(s, `${at}.conv_shortcut`, cout, cin, 1);
}

/**
 * The shapes of everything but the attention layers: time MLP, conv_in/conv_out, the output norm, every resnet and
 * resampler. `attnShapes` adds each attention layer's own.
 */
export function unetShapesWith(
  plan: UNetPlan,
  inC: number,
  outC: number,
  attnShapes: (s: Shapes, a: AttnPlan) => void,
): Shapes {
  const s: Shapes = {}, c0 = plan.down[0].resnets[0].cin, T = plan.timeDim;
  s["time_embedding.linear_1.weight"] = [T, c0];
  s["time_embedding.linear_1.bias"] = [T];
  s["time_embedding.linear_2.weight"] = [T, T];
  s["time_embedding.linear_2.bias"] = [T];
  convShape(s, "conv_in", c0, inC, 3);
  for (const b of [...plan.down, plan.mid, ...plan.up]) {
    for (const r of b.resnets) resnetShapes(s, r.at, r.cin, r.cout, T);
    for (const a of b.attentions) attnShapes(s, a);
    if (b.resample) convShape(s, b.resample.at, b.resample.c, b.resample.c, 3);
  }
  s["conv_norm_out.weight"] = s["conv_norm_out.bias"] = [c0];
  convShape(s, "conv_out", outC, c0, 3);
  return s;
}

/** diffusers' sinusoidal `get_timestep_embedding` with `flip_sin_to_cos` and `freq_shift`: [B] → [B, dim]. */
function sinusoid(t: Tensor, dim: number, flip: boolean, shift: number): Tensor {
  const half = dim / 2;
  const freqs = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / (half - shift)));
  const arg = mul(reshape(t, [-1, 1]), t.trace.constant(freqs, [1, half]));
  return concat(flip ? [cos(arg), sin(arg)] : [sin(arg), cos(arg)], 1);
}

/** The timestep embedding the resnets read: the sinusoid of `dim` channels through `time_embedding`'s MLP. */
export function timeEmbedding(p: Params, t: Tensor, dim: number, flip: boolean, shift: number): Tensor {
  const e = linear(
    sinusoid(t, dim, flip, shift),
    p["time_embedding.linear_1.weight"],
    p["time_embedding.linear_1.bias"],
  );
  return linear(silu(e), p["time_embedding.linear_2.weight"], p["time_embedding.linear_2.bias"]);
}

/** The norms' settings of the whole network. */
export interface Norms {
  groups: number;
  eps: number;
}

function resnet(p: Params, at: string, x: Tensor, temb: Tensor, nm: Norms): Tensor {
  let h = silu(groupNorm(x, nm.groups, p[`${at}.norm1.weight`], p[`${at}.norm1.bias`], nm.eps));
  h = conv(h, p[`${at}.conv1.weight`], p[`${at}.conv1.bias`], { pad: 1 });
  const t = linear(silu(temb), p[`${at}.time_emb_proj.weight`], p[`${at}.time_emb_proj.bias`]);
  h = add(h, reshape(t, [t.shape[0], -1, 1, 1]));
  h = silu(groupNorm(h, nm.groups, p[`${at}.norm2.weight`], p[`${at}.norm2.bias`], nm.eps));
  h = conv(h, p[`${at}.conv2.weight`], p[`${at}.conv2.bias`], { pad: 1 });
  const skip = p[`${at}.conv_shortcut.weight`]
    ? conv(x, p[`${at}.conv_shortcut.weight`], p[`${at}.conv_shortcut.bias`])
    : x;
  return add(skip, h);
}

/** How the walk runs: the norms, diffusers' `downsample_padding`, and the model's attention layer. */
export interface Walk extends Norms {
  /** 1: a 3×3 stride-2 conv padded on every side; 0: padded only after (bottom, right), as diffusers' DDPM ports. */
  downsamplePadding: 0 | 1;
  attend: (a: AttnPlan, h: Tensor) => Tensor;
}

function block(p: Params, b: BlockPlan, h: Tensor, temb: Tensor, w: Walk, skips?: Tensor[]) {
  const outs: Tensor[] = [];
  b.resnets.forEach((r, j) => {
    if (skips) h = concat([h, skips.pop()!], 1);
    h = resnet(p, r.at, h, temb, w);
    if (b.attentions[j]) h = w.attend(b.attentions[j], h);
    outs.push(h);
  });
  return { h, outs };
}

/** conv_in, the down blocks, the mid block, the up blocks over the skips, and the output norm and conv_out. */
export function walkUNet(p: Params, plan: UNetPlan, sample: Tensor, temb: Tensor, w: Walk): Tensor {
  let h = conv(sample, p["conv_in.weight"], p["conv_in.bias"], { pad: 1 });
  const skips = [h];
  const pad = w.downsamplePadding ? 1 : [0, 0, 1, 1] as [number, number, number, number];
  for (const b of plan.down) {
    const r = block(p, b, h, temb, w);
    h = r.h;
    skips.push(...r.outs);
    if (b.resample) {
      h = conv(h, p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { stride: 2, pad });
      skips.push(h);
    }
  }
  const m = plan.mid;
  h = resnet(p, m.resnets[0].at, h, temb, w);
  if (m.attentions[0]) h = w.attend(m.attentions[0], h);
  h = resnet(p, m.resnets[1].at, h, temb, w);
  for (const b of plan.up) {
    h = block(p, b, h, temb, w, skips).h;
    if (b.resample) {
      h = conv(upsampleNearest(h, 2), p[`${b.resample.at}.weight`], p[`${b.resample.at}.bias`], { pad: 1 });
    }
  }
  h = silu(groupNorm(h, w.groups, p["conv_norm_out.weight"], p["conv_norm_out.bias"], w.eps));
  return conv(h, p["conv_out.weight"], p["conv_out.bias"], { pad: 1 });
}
