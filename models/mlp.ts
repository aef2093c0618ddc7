/**
 * `mlp` model: a multilayer perceptron, input `x` [batch, in] → output `y` [batch, out], with SiLU, GELU or tanh
 * between layers.
 *
 * @module
 */
import { z } from "zod";
import { tanh } from "../engine/math.ts";
import { gelu, linear, silu } from "../engine/nn.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type ModelDef } from "../pipeline/stage.ts";
import { SIZE_LIMITS, sizeSchema } from "../pipeline/config.ts";

const WIDTH = sizeSchema(SIZE_LIMITS.dense);
const Params = z.strictObject({
  in: WIDTH,
  hidden: z.array(WIDTH).max(SIZE_LIMITS.count).default([64, 64]),
  out: WIDTH.default(1),
  activation: z.enum(["silu", "gelu", "tanh"]).default("silu"),
});
type P = z.output<typeof Params>;

const widths = (p: P) => [p.in, ...p.hidden, p.out];
const ACT: Record<P["activation"], (x: Tensor) => Tensor> = { silu, gelu, tanh };

/** The mlp model kind. */
export const mlp: ModelDef<P> = {
  kind: "mlp",
  doc: "multilayer perceptron x [B, in] → y [B, out]",
  params: Params,
  shapes: (p) => {
    const w = widths(p), s: Record<string, number[]> = {};
    for (let i = 0; i + 1 < w.length; i++) {
      s[`l${i}.w`] = [w[i + 1], w[i]];
      s[`l${i}.b`] = [w[i + 1]];
    }
    return s;
  },
  init: (p, rng) => {
    const w = widths(p), out: Record<string, Float32Array> = {};
    for (let i = 0; i + 1 < w.length; i++) {
      // He-style scale keeps activations O(1) through the stack.
      out[`l${i}.w`] = rng.fold(`l${i}`).normal(w[i] * w[i + 1]).map((v) => v * Math.sqrt(2 / w[i]));
      out[`l${i}.b`] = new Float32Array(w[i + 1]);
    }
    return out;
  },
  types: (p, inputs) => {
    const x = expectPort(inputs, "x", { dtype: "f32", rank: 2 });
    if (x.shape[1] !== p.in) expectPort(inputs, "x", { dtype: "f32", shape: [-1, p.in] });
    return { y: { dtype: "f32", shape: [x.shape[0], p.out] } };
  },
  apply: (p, params, { x }) => {
    const n = widths(p).length - 1;
    let h = x;
    for (let i = 0; i < n; i++) {
      h = linear(h, params[`l${i}.w`], params[`l${i}.b`]);
      if (i + 1 < n) h = ACT[p.activation](h);
    }
    return { y: h };
  },
};
