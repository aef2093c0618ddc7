/**
 * `unet` model: a text-conditioned UNet for small images (Ho et al. 2020's DDPM UNet, with the cross-attention to
 * text tokens of Rombach et al. 2022's latent diffusion): residual blocks with group norm and a timestep embedding,
 * self- and cross-attention at chosen resolutions, skip connections between the down and up paths.
 *
 * Inputs: `x` [B, C, H, W], `t` [B] (timesteps as floats, 0…T−1), optional `tokens` [B, L, D] (text hidden states,
 * for cross-attention) and `pooled` [B, P] (a text embedding added to the timestep embedding).
 * Output: `out` [B, C, H, W] in the model's parameterisation (ε or v; the stages using it decide).
 *
 * @module
 */
import { z } from "zod";
import { add, cos, mul, sin } from "../engine/math.ts";
import { attention, conv, groupNorm, layerNorm, linear, silu, upsampleNearest } from "../engine/nn.ts";
import { concat, reshape, transpose } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Rng } from "../engine/rng.ts";
import { expectPort, type ModelDef, type PortSpec, StageTypeError } from "../pipeline/stage.ts";
import { SIZE_LIMITS, sizeSchema } from "../pipeline/config.ts";
import type { DenoiserKind, DenoiserModel } from "./denoiser.ts";

const WIDTH = sizeSchema(SIZE_LIMITS.width);
const Params = z.strictObject({
  /** Image channels in and out. */
  in_channels: WIDTH.default(3),
  /** Channels at each resolution level, from the input resolution down. */
  channels: z.array(WIDTH).min(1).max(SIZE_LIMITS.count).default([32, 64, 64]),
  /** Residual blocks per level on the way down (the way up has one more, for the extra skip). */
  blocks: sizeSchema(SIZE_LIMITS.count).default(1),
  /** Levels (0 = input resolution) that get self- and cross-attention after each residual block. */
  attention_levels: z.array(z.number().int().min(0).max(SIZE_LIMITS.count)).max(SIZE_LIMITS.count).default([1, 2]),
  heads: WIDTH.default(4),
  /** Group-norm groups (must divide every channel count). */
  groups: WIDTH.default(8),
  /** Width of text tokens for cross-attention (0: no cross-attention). */
  context_dim: z.number().int().min(0).max(SIZE_LIMITS.width).default(64),
  /** Width of the pooled text embedding added to the time embedding (0: none). */
  pooled_dim: z.number().int().min(0).max(SIZE_LIMITS.width).default(64),
  /** Image side (square), for typing. */
  size: sizeSchema(SIZE_LIMITS.side).default(32),
});
/** UNet settings. */
export type UNetParams = z.output<typeof Params>;

interface Shapes {
  [path: string]: number[];
}

const tdim = (p: UNetParams) => p.channels[0] * 4;

function resShapes(s: Shapes, at: string, cin: number, cout: number, temb: number) {
  s[`${at}.norm1.w`] = [cin];
  s[`${at}.norm1.b`] = [cin];
  s[`${at}.conv1.w`] = [cout, cin, 3, 3];
  s[`${at}.conv1.b`] = [cout];
  s[`${at}.temb.w`] = [cout, temb];
  s[`${at}.temb.b`] = [cout];
  s[`${at}.norm2.w`] = [cout];
  s[`${at}.norm2.b`] = [cout];
  s[`${at}.conv2.w`] = [cout, cout, 3, 3];
  s[`${at}.conv2.b`] = [cout];
  if (cin !== cout) {
    s[`${at}.skip.w`] = [cout, cin, 1, 1];
    s[`${at}.skip.b`] = [cout];
  }
}

function attnShapes(s: Shapes, at: string, c: number, ctx: number) {
  s[`${at}.norm.w`] = [c];
  s[`${at}.norm.b`] = [c];
  for (const k of ["q", "k", "v", "o"]) s[`${at}.self.${k}`] = [c, c];
  if (ctx > 0) {
    s[`${at}.ln.w`] = [c];
    s[`${at}.ln.b`] = [c];
    s[`${at}.cross.q`] = [c, c];
    s[`${at}.cross.k`] = [c, ctx];
    s[`${at}.cross.v`] = [c, ctx];
    s[`${at}.cross.o`] = [c, c];
  }
}

/** The block structure shared by `shapes` and `apply`, so the two can never disagree. */
function plan(p: UNetParams) {
  const down: { res: string; attn?: string; cin: number; cout: number; level: number }[] = [];
  const downsample: { at: string; c: number }[] = [];
  const up: { res: string; attn?: string; cin: number; cout: number; level: number }[] = [];
  const upsample: { at: string; c: number }[] = [];
  const skips: number[] = [p.channels[0]];
  let c = p.channels[0];
  p.channels.forEach((co, level) => {
    for (let b = 0; b < p.blocks; b++) {
      down.push({
        res: `down${level}.res${b}`,
        attn: p.attention_levels.includes(level) ? `down${level}.attn${b}` : undefined,
        cin: c,
        cout: co,
        level,
      });
      c = co;
      skips.push(c);
    }
    if (level + 1 < p.channels.length) {
      downsample.push({ at: `down${level}.downsample`, c });
      skips.push(c);
    }
  });
  const mid = c;
  [...p.channels.keys()].reverse().forEach((level) => {
    const co = p.channels[level];
    for (let b = 0; b <= p.blocks; b++) {
      const skip = skips.pop()!;
      up.push({
        res: `up${level}.res${b}`,
        attn: p.attention_levels.includes(level) ? `up${level}.attn${b}` : undefined,
        cin: c + skip,
        cout: co,
        level,
      });
      c = co;
    }
    if (level > 0) upsample.push({ at: `up${level}.upsample`, c });
  });
  return { down, downsample, up, upsample, mid };
}

function shapes(p: UNetParams): Shapes {
  const s: Shapes = {};
  const T = tdim(p), c0 = p.channels[0];
  s["time.l1.w"] = [T, c0];
  s["time.l1.b"] = [T];
  s["time.l2.w"] = [T, T];
  s["time.l2.b"] = [T];
  if (p.pooled_dim > 0) s["time.text.w"] = [T, p.pooled_dim];
  s["conv_in.w"] = [c0, p.in_channels, 3, 3];
  s["conv_in.b"] = [c0];
  const pl = plan(p);
  for (const d of pl.down) {
    resShapes(s, d.res, d.cin, d.cout, T);
    if (d.attn) attnShapes(s, d.attn, d.cout, p.context_dim);
  }
  for (const d of pl.downsample) {
    s[`${d.at}.w`] = [d.c, d.c, 3, 3];
    s[`${d.at}.b`] = [d.c];
  }
  resShapes(s, "mid.res0", pl.mid, pl.mid, T);
  attnShapes(s, "mid.attn", pl.mid, p.context_dim);
  resShapes(s, "mid.res1", pl.mid, pl.mid, T);
  for (const u of pl.up) {
    resShapes(s, u.res, u.cin, u.cout, T);
    if (u.attn) attnShapes(s, u.attn, u.cout, p.context_dim);
  }
  for (const u of pl.upsample) {
    s[`${u.at}.w`] = [u.c, u.c, 3, 3];
    s[`${u.at}.b`] = [u.c];
  }
  s["out.norm.w"] = [c0];
  s["out.norm.b"] = [c0];
  s["out.conv.w"] = [p.in_channels, c0, 3, 3];
  s["out.conv.b"] = [p.in_channels];
  return s;
}

/** Sinusoidal timestep embedding (Vaswani et al. 2017, as in DDPM): [B] → [B, dim]. */
export function timestepEmbedding(t: Tensor, dim: number): Tensor {
  const half = dim / 2;
  const freqs = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / half));
  const f = t.trace.constant(freqs, [1, half]);
  const arg = mul(reshape(t, [-1, 1]), f);
  return concat([sin(arg), cos(arg)], 1);
}

type P = Record<string, Tensor>;

function resBlock(p: P, at: string, x: Tensor, temb: Tensor, groups: number): Tensor {
  let h = conv(
    silu(groupNorm(x, groups, p[`${at}.norm1.w`], p[`${at}.norm1.b`])),
    p[`${at}.conv1.w`],
    p[`${at}.conv1.b`],
    {
      pad: 1,
    },
  );
  const t = linear(silu(temb), p[`${at}.temb.w`], p[`${at}.temb.b`]);
  h = add(h, reshape(t, [t.shape[0], -1, 1, 1]));
  h = conv(silu(groupNorm(h, groups, p[`${at}.norm2.w`], p[`${at}.norm2.b`])), p[`${at}.conv2.w`], p[`${at}.conv2.b`], {
    pad: 1,
  });
  const skip = p[`${at}.skip.w`] ? conv(x, p[`${at}.skip.w`], p[`${at}.skip.b`]) : x;
  return add(skip, h);
}

function attnBlock(p: P, at: string, x: Tensor, ctx: Tensor | undefined, u: UNetParams): Tensor {
  const [b, c, h, w] = x.shape;
  const toTokens = (t: Tensor) => transpose(reshape(t, [b, c, h * w]), [0, 2, 1]);
  let tok = toTokens(x);
  const n = toTokens(groupNorm(x, u.groups, p[`${at}.norm.w`], p[`${at}.norm.b`]));
  const sa = attention(
    linear(n, p[`${at}.self.q`]),
    linear(n, p[`${at}.self.k`]),
    linear(n, p[`${at}.self.v`]),
    u.heads,
  );
  tok = add(tok, linear(sa, p[`${at}.self.o`]));
  if (ctx && p[`${at}.cross.q`]) {
    const q = linear(layerNorm(tok, p[`${at}.ln.w`], p[`${at}.ln.b`]), p[`${at}.cross.q`]);
    const ca = attention(q, linear(ctx, p[`${at}.cross.k`]), linear(ctx, p[`${at}.cross.v`]), u.heads);
    tok = add(tok, linear(ca, p[`${at}.cross.o`]));
  }
  return reshape(transpose(tok, [0, 2, 1]), [b, c, h, w]);
}

/** The forward pass. */
export function unetForward(u: UNetParams, p: P, x: Tensor, t: Tensor, tokens?: Tensor, pooled?: Tensor): Tensor {
  let temb = timestepEmbedding(t, u.channels[0]);
  temb = linear(silu(linear(temb, p["time.l1.w"], p["time.l1.b"])), p["time.l2.w"], p["time.l2.b"]);
  if (pooled && p["time.text.w"]) temb = add(temb, linear(pooled, p["time.text.w"]));
  const pl = plan(u);
  let h = conv(x, p["conv_in.w"], p["conv_in.b"], { pad: 1 });
  const skips = [h];
  let di = 0;
  u.channels.forEach((_, level) => {
    for (let bi = 0; bi < u.blocks; bi++) {
      const d = pl.down[di++];
      h = resBlock(p, d.res, h, temb, u.groups);
      if (d.attn) h = attnBlock(p, d.attn, h, tokens, u);
      skips.push(h);
    }
    if (level + 1 < u.channels.length) {
      const at = pl.downsample[level].at;
      h = conv(h, p[`${at}.w`], p[`${at}.b`], { stride: 2, pad: 1 });
      skips.push(h);
    }
  });
  h = resBlock(p, "mid.res0", h, temb, u.groups);
  h = attnBlock(p, "mid.attn", h, tokens, u);
  h = resBlock(p, "mid.res1", h, temb, u.groups);
  let ui = 0, upi = 0;
  [...u.channels.keys()].reverse().forEach((level) => {
    for (let bi = 0; bi <= u.blocks; bi++) {
      const d = pl.up[ui++];
      h = resBlock(p, d.res, concat([h, skips.pop()!], 1), temb, u.groups);
      if (d.attn) h = attnBlock(p, d.attn, h, tokens, u);
    }
    if (level > 0) {
      const at = pl.upsample[upi++].at;
      h = conv(upsampleNearest(h, 2), p[`${at}.w`], p[`${at}.b`], { pad: 1 });
    }
  });
  h = silu(groupNorm(h, u.groups, p["out.norm.w"], p["out.norm.b"]));
  return conv(h, p["out.conv.w"], p["out.conv.b"], { pad: 1 });
}

function init(u: UNetParams, rng: Rng): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [path, shape] of Object.entries(shapes(u))) {
    const n = shape.reduce((a, b) => a * b, 1);
    const leaf = path.slice(path.lastIndexOf(".") + 1);
    if (leaf === "b") out[path] = new Float32Array(n);
    else if (shape.length === 1) out[path] = new Float32Array(n).fill(1); // norm scales
    else if (/(\.conv2\.w|^out\.conv\.w|\.self\.o|\.cross\.o)$/.test(path)) {
      // Residual branches and the output start at zero, so the initial network is the identity on its skips.
      out[path] = new Float32Array(n);
    } else {
      const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
      out[path] = rng.fold(path).normal(n).map((v) => v / Math.sqrt(fanIn));
    }
  }
  return out;
}

function types(u: UNetParams, inputs: Record<string, PortSpec>): Record<string, PortSpec> {
  const x = expectPort(inputs, "x", { dtype: "f32", shape: [-1, u.in_channels, u.size, u.size] });
  const b = x.shape[0];
  expectPort(inputs, "t", { dtype: "f32", shape: [b] });
  if (inputs.tokens) expectPort(inputs, "tokens", { dtype: "f32", shape: [b, -1, u.context_dim] });
  if (inputs.pooled) expectPort(inputs, "pooled", { dtype: "f32", shape: [b, u.pooled_dim] });
  for (const k of Object.keys(inputs)) {
    if (!["x", "t", "tokens", "pooled"].includes(k)) {
      throw new StageTypeError(`unet has no input "${k}"`, ["inputs", k]);
    }
  }
  if (u.size % 2 ** (u.channels.length - 1)) {
    throw new StageTypeError(`size ${u.size} is not divisible by 2^${u.channels.length - 1}`, ["params"]);
  }
  return { out: { dtype: "f32", shape: [...x.shape] } };
}

/** The UNet as the ADD stages and samplers see it; its params are its cache settings, as before the interface. */
export function unetDenoiser(u: UNetParams): DenoiserModel {
  return {
    in_channels: u.in_channels,
    size: u.size,
    context_dim: u.context_dim,
    pooled_dim: u.pooled_dim,
    get shapes() {
      return shapes(u);
    },
    forward: (p, x, t, tokens, pooled) => unetForward(u, p, x, t, tokens, pooled),
    settings: u,
  };
}

/** The unet model kind. */
export const unet: ModelDef<UNetParams> & DenoiserKind<UNetParams> = {
  kind: "unet",
  doc: "text-conditioned UNet: res blocks, group norm, self/cross-attention, sinusoidal time embedding",
  params: Params,
  shapes,
  init,
  types,
  apply: (u, p, { x, t, tokens, pooled }) => ({ out: unetForward(u, p, x, t, tokens, pooled) }),
  denoiser: unetDenoiser,
};
