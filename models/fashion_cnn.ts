/**
 * `fashion_cnn` model: a small CNN classifier of 32×32 images in [-1, 1] (the diffusion configs' size and range):
 * per entry of `convs`, conv 3×3 → ReLU → 2×2 max-pool; then dense `hidden` → ReLU (`features`, the penultimate layer
 * a Fréchet distance is taken in) → dense `classes` (`logits`). The Fashion-MNIST judge (`models/fashion_judge.ts`).
 *
 * @module
 */
import { z } from "zod";
import { conv, linear, maxPool, relu } from "../engine/nn.ts";
import { reshape } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type ModelDef } from "../pipeline/stage.ts";
import { SIZE_LIMITS, sizeSchema } from "../pipeline/config.ts";

const WIDTH = sizeSchema(SIZE_LIMITS.width);
const Params = z.strictObject({
  channels: z.union([z.literal(1), z.literal(3)]).default(3),
  size: z.literal(32).default(32),
  classes: WIDTH.default(10),
  /** Output channels of each conv level; each level halves the side, so at most 5 levels for 32×32. */
  convs: z.array(WIDTH).min(1).max(5).default([32, 64, 64]),
  /** Width of the penultimate (feature) layer. */
  hidden: WIDTH.default(128),
});
/** Parameters of the fashion_cnn model, after defaults. */
export type FashionCnnParams = z.output<typeof Params>;

/** Weight shapes by name. */
export function fashionCnnShapes(p: FashionCnnParams): Record<string, number[]> {
  const s: Record<string, number[]> = {};
  let c: number = p.channels;
  p.convs.forEach((o, i) => {
    s[`c${i}.w`] = [o, c, 3, 3];
    s[`c${i}.b`] = [o];
    c = o;
  });
  const flat = c * (p.size >> p.convs.length) ** 2;
  s["fc.w"] = [p.hidden, flat];
  s["fc.b"] = [p.hidden];
  s["out.w"] = [p.classes, p.hidden];
  s["out.b"] = [p.classes];
  return s;
}

/** The forward pass: penultimate `features` [B, hidden] and `logits` [B, classes]. */
export function fashionCnnForward(
  p: FashionCnnParams,
  params: Record<string, Tensor>,
  x: Tensor,
): { features: Tensor; logits: Tensor } {
  let h = x;
  for (let i = 0; i < p.convs.length; i++) h = maxPool(relu(conv(h, params[`c${i}.w`], params[`c${i}.b`], { pad: 1 })));
  const features = relu(linear(reshape(h, [h.shape[0], -1]), params["fc.w"], params["fc.b"]));
  return { features, logits: linear(features, params["out.w"], params["out.b"]) };
}

/** The fashion_cnn model kind. */
export const fashionCnn: ModelDef<FashionCnnParams> = {
  kind: "fashion_cnn",
  doc: "small CNN classifier x [B, C, 32, 32] → logits [B, classes], features [B, hidden]",
  params: Params,
  shapes: fashionCnnShapes,
  init: (p, rng) => {
    const out: Record<string, Float32Array> = {};
    for (const [k, s] of Object.entries(fashionCnnShapes(p))) {
      const n = s.reduce((a, b) => a * b, 1);
      if (s.length === 1) out[k] = new Float32Array(n);
      else {
        const fanIn = n / s[0]; // He scale keeps ReLU activations O(1)
        out[k] = rng.fold(k).normal(n).map((v) => v * Math.sqrt(2 / fanIn));
      }
    }
    return out;
  },
  types: (p, inputs) => {
    const x = expectPort(inputs, "x", { dtype: "f32", shape: [-1, p.channels, p.size, p.size] });
    return {
      logits: { dtype: "f32", shape: [x.shape[0], p.classes] },
      features: { dtype: "f32", shape: [x.shape[0], p.hidden] },
    };
  },
  apply: (p, params, { x }) => fashionCnnForward(p, params, x),
};
