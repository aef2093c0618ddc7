/**
 * The prototype's UNet-like block training step, shared by the benchmark and the executor tests:
 * conv3×3 C→2C, group norm (8 groups), SiLU, conv3×3 2C→C, residual, 2×2 mean-pool to tokens, single-head
 * attention (wq wk wv wo), nearest 2× upsample, residual, MSE, Adam — forward, backward and update in one graph.
 */
import { grad } from "../engine/grad.ts";
import type { Graph } from "../engine/ir.ts";
import { add } from "../engine/math.ts";
import { attention, avgPool, conv, groupNorm, linear, mse, silu, upsampleNearest } from "../engine/nn.ts";
import { adamw } from "../engine/optim.ts";
import { type Layout, layoutOf, pack, unpack } from "../engine/pack.ts";
import { reshape, transpose } from "../engine/ops.ts";
import { type Tensor, Trace } from "../engine/tensor.ts";

/** Sizes of the block. */
export interface BlockSize {
  batch: number;
  channels: number;
  size: number;
}

/** Parameter shapes of the block, in a fixed order (the torch peer uses the same). */
export function blockShapes(c: number): Record<string, number[]> {
  return {
    "conv1.w": [2 * c, c, 3, 3],
    "conv1.b": [2 * c],
    "gn.w": [2 * c],
    "gn.b": [2 * c],
    "conv2.w": [c, 2 * c, 3, 3],
    "conv2.b": [c],
    "wq": [c, c],
    "wk": [c, c],
    "wv": [c, c],
    "wo": [c, c],
  };
}

/** The block's forward pass. */
export function blockForward(p: Record<string, Tensor>, x: Tensor): Tensor {
  const [n, c, h, w] = x.shape;
  let y = conv(x, p["conv1.w"], p["conv1.b"], { pad: 1 });
  y = silu(groupNorm(y, 8, p["gn.w"], p["gn.b"]));
  y = conv(y, p["conv2.w"], p["conv2.b"], { pad: 1 });
  const h1 = add(x, y);
  const pooled = avgPool(h1, 2); // [n, c, h/2, w/2]
  const tokens = transpose(reshape(pooled, [n, c, (h / 2) * (w / 2)]), [0, 2, 1]);
  const a = linear(attention(linear(tokens, p.wq), linear(tokens, p.wk), linear(tokens, p.wv)), p.wo);
  const back = reshape(transpose(a, [0, 2, 1]), [n, c, h / 2, w / 2]);
  return add(h1, upsampleNearest(back, 2));
}

/** The whole training step: inputs `params`, `m`, `v` (flat), `step`, `x`, `y`; outputs `loss` and new state. */
export function blockStepGraph(s: BlockSize, lr = 1e-3): { graph: Graph; layout: Layout } {
  const layout = layoutOf(blockShapes(s.channels));
  const tr = new Trace();
  const flat = tr.input("params", [layout.total]);
  const m = tr.input("m", [layout.total]), v = tr.input("v", [layout.total]);
  const step = tr.input("step", []);
  const x = tr.input("x", [s.batch, s.channels, s.size, s.size]);
  const target = tr.input("y", [s.batch, s.channels, s.size, s.size]);
  const p = unpack(flat, layout);
  const loss = mse(blockForward(p, x), target);
  const g = pack(grad(loss, p), layout);
  const upd = adamw(flat, g, m, v, step, { lr });
  return { graph: tr.build({ loss, params: upd.p, m: upd.m, v: upd.v }), layout };
}
