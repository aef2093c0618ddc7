/**
 * `add_discriminator` model kind: the trainable heads of ADD's discriminator (Sauer et al. 2023, §3.2, after
 * StyleGAN-T): one small convolutional head per feature level of a frozen feature network, each conditioned by
 * projection (Miyato & Koyama 2018) on the text embedding and on an image embedding of the real image.
 *
 * Inputs: `f0`…`f{K-1}` feature maps [B, C_k, H_k, W_k], `text` [B, T], `image` [B, I].
 * Outputs: `logits` [B, K], one logit per head (mean over the head's spatial map), and with `per_location` also
 * `map0`…`map{K-1}` [B, H_k·W_k], each head's logit at every location, for a hinge per location.
 *
 * @module
 */
import { z } from "zod";
import { add, mean, mul, sqrt, square, sub } from "../engine/math.ts";
import { conv, leakyRelu, linear } from "../engine/nn.ts";
import { concat, expand, reshape, sum } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type ModelDef, type PortSpec, StageTypeError } from "../pipeline/stage.ts";
import { SIZE_LIMITS, sizeSchema } from "../pipeline/config.ts";

const WIDTH = sizeSchema(SIZE_LIMITS.width);
const DIM = z.number().int().min(0).max(SIZE_LIMITS.width);
const Params = z.strictObject({
  /** Channels of each feature level the heads read (MobileNetV2 at its default levels: 24, 32, 96, 320). */
  channels: z.array(WIDTH).min(1).max(SIZE_LIMITS.count).default([24, 32, 96, 320]),
  /** Width of each head. */
  hidden: WIDTH.default(64),
  /** Width of the text embedding (0: no text conditioning). */
  text_dim: DIM.default(64),
  /** Width of the image embedding (0: no image conditioning). */
  image_dim: DIM.default(1280),
  /** Also output each head's logits per location (`map{k}`), so that the hinge applies per location. */
  per_location: z.boolean().default(false),
  /**
   * Minibatch standard deviation (Karras et al. 2018, ProGAN §3): each head also reads, as one more input channel,
   * the standard deviation of its features across groups of this many examples (0: off). A batch of near-identical
   * images then looks unlike a batch of real ones, which counters collapse to one image.
   */
  mbstd_group: DIM.default(0),
});
/** Discriminator settings. */
export type DiscParams = z.output<typeof Params>;

function shapes(p: DiscParams): Record<string, number[]> {
  const s: Record<string, number[]> = {};
  const c = p.text_dim + p.image_dim;
  p.channels.forEach((ck, k) => {
    s[`h${k}.in.w`] = [p.hidden, ck + (p.mbstd_group ? 1 : 0), 1, 1];
    s[`h${k}.in.b`] = [p.hidden];
    s[`h${k}.mid.w`] = [p.hidden, p.hidden, 3, 3];
    s[`h${k}.mid.b`] = [p.hidden];
    s[`h${k}.out.w`] = [1, p.hidden, 1, 1];
    s[`h${k}.out.b`] = [1];
    if (c > 0) {
      s[`h${k}.cmap.w`] = [p.hidden, c];
      s[`h${k}.cmap.b`] = [p.hidden];
    }
  });
  return s;
}

/**
 * One head's logits per location [B, H·W]: an unconditional 1×1 output plus the projection of the location's hidden
 * vector on the condition's embedding, ⟨h_l, cmap⟩/√hidden (StyleGAN-T's heads, whose hinge is per location).
 */
export function discHeadMap(
  p: Record<string, Tensor>,
  k: number,
  f: Tensor,
  cond: Tensor | null,
  hidden: number,
  mbstdGroup = 0,
): Tensor {
  if (mbstdGroup) f = concat([f, minibatchStd(f, mbstdGroup)], 1);
  let h = leakyRelu(conv(f, p[`h${k}.in.w`], p[`h${k}.in.b`]), 0.2);
  h = leakyRelu(conv(h, p[`h${k}.mid.w`], p[`h${k}.mid.b`], { pad: 1 }), 0.2);
  const [b, , hh, ww] = h.shape;
  const uncond = reshape(conv(h, p[`h${k}.out.w`], p[`h${k}.out.b`]), [b, hh * ww]);
  if (!cond) return uncond;
  const cmap = reshape(linear(cond, p[`h${k}.cmap.w`], p[`h${k}.cmap.b`]), [b, hidden, 1, 1]);
  const proj = reshape(sum(mul(h, cmap), 1), [b, hh * ww]);
  return add(uncond, mul(proj, 1 / Math.sqrt(hidden)));
}

/**
 * Minibatch standard deviation of x [B, C, H, W] as one channel [B, 1, H, W]: examples b and b' share a group when
 * b ≡ b' (mod B/G); each group's per-feature standard deviation over its G examples, averaged over C, H and W.
 */
export function minibatchStd(x: Tensor, group: number): Tensor {
  const [b, c, h, w] = x.shape;
  const g = Math.min(group, b);
  if (b % g) throw new Error(`minibatchStd: batch ${b} is not a multiple of the group size ${g}`);
  const y = reshape(x, [g, b / g, c, h, w]);
  const d = sub(y, mean(y, 0, true));
  const std = sqrt(add(mean(square(d), 0), 1e-8)); // [B/G, C, H, W]
  const s = mean(std, [1, 2, 3], true); // [B/G, 1, 1, 1]
  return reshape(expand(reshape(s, [1, b / g, 1, 1, 1]), [g, b / g, 1, h, w]), [b, 1, h, w]);
}

/** One head's logit per example: the mean over locations of `discHeadMap`. */
export function discHead(p: Record<string, Tensor>, k: number, f: Tensor, cond: Tensor | null, hidden: number): Tensor {
  return mean(discHeadMap(p, k, f, cond, hidden), 1);
}

/** The condition vector of the heads: text and image embeddings side by side. */
export function discCondition(p: DiscParams, text?: Tensor, image?: Tensor): Tensor | null {
  const parts = [p.text_dim > 0 ? text : undefined, p.image_dim > 0 ? image : undefined].filter((x) => x) as Tensor[];
  return parts.length ? concat(parts, 1) : null;
}

/** The add_discriminator model kind. */
export const addDiscriminator: ModelDef<DiscParams> = {
  kind: "add_discriminator",
  doc: "ADD discriminator heads on feature levels, conditioned by projection on text and image embeddings",
  params: Params,
  shapes,
  init: (p, rng) => {
    const out: Record<string, Float32Array> = {};
    for (const [path, shape] of Object.entries(shapes(p))) {
      const n = shape.reduce((a, b) => a * b, 1);
      const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
      out[path] = path.endsWith(".b") ? new Float32Array(n) : rng.fold(path).normal(n).map((v) => v / Math.sqrt(fanIn));
    }
    return out;
  },
  types: (p, inputs) => {
    let b = -1;
    p.channels.forEach((c, k) => {
      const f = expectPort(inputs, `f${k}`, { dtype: "f32", shape: [b, c, -1, -1] });
      b = f.shape[0];
    });
    if (p.mbstd_group && b % Math.min(p.mbstd_group, b)) {
      throw new StageTypeError(`batch ${b} is not a multiple of the discriminator's mbstd_group ${p.mbstd_group}`);
    }
    if (p.text_dim) expectPort(inputs, "text", { dtype: "f32", shape: [b, p.text_dim] });
    if (p.image_dim) expectPort(inputs, "image", { dtype: "f32", shape: [b, p.image_dim] });
    const out: Record<string, PortSpec> = { logits: { dtype: "f32", shape: [b, p.channels.length] } };
    if (p.per_location) {
      p.channels.forEach((_, k) => {
        const [, , h, w] = inputs[`f${k}`].shape;
        out[`map${k}`] = { dtype: "f32", shape: [b, h * w] };
      });
    }
    return out;
  },
  apply: (p, params, inputs) => {
    const cond = discCondition(p, inputs.text, inputs.image);
    const maps = p.channels.map((_, k) => discHeadMap(params, k, inputs[`f${k}`], cond, p.hidden, p.mbstd_group));
    const out: Record<string, Tensor> = { logits: concat(maps.map((m) => mean(m, 1, true)), 1) };
    if (p.per_location) maps.forEach((m, k) => (out[`map${k}`] = m));
    return out;
  },
};
