/**
 * Universal Sentence Encoder lite's network ("KonaTransformer"), rebuilt with engine ops from the weights `graph.ts`
 * reads, so it traces and lowers to ONNX like the project's own models. It does what the tfjs graph does, on a
 * fixed-length padded batch instead of a sparse one:
 *
 * - token embeddings (8002 × 256) at the ids; layer 0's input is embedding + (embedding + sinusoidal timing signal)
 *   at real tokens and 0 at padding (the graph scatters the embeddings and, separately, embeddings plus signal);
 * - two pre-norm transformer layers (layer norm ε from the graph, 4 heads; keys at padding get the graph's −1e9
 *   bias; a ReLU feed-forward 512 → 1536 → 512 applied to real tokens only). Layer 0 attends in 256 and writes 512,
 *   widening its residual with a dense layer; layer 1 works in 512. There is no final layer norm;
 * - the sentence embedding: the mean of the last states over real tokens (divided by max(count, 1)), a 512 → 512
 *   tanh layer, then L2 normalisation (‖x‖² floored at the graph's 1e-12).
 *
 * Padding positions never reach real ones (their keys are masked, and everything else is per position), so the
 * outputs do not depend on the padded length. The per-token states are returned with padding rows set to 0.
 *
 * @module
 */
import { add, cos, div, maximum, mul, rsqrt, sin, square, sub, tanh } from "../../engine/math.ts";
import { layerNorm, relu, softmax } from "../../engine/nn.ts";
import { cast, concat, gather, matmul, reshape, sliceAxis, sum, swapAxes, transpose } from "../../engine/ops.ts";
import type { Graph } from "../../engine/ir.ts";
import { fail, type Tensor, Trace } from "../../engine/tensor.ts";
import { useWeightNames } from "./graph.ts";

/** Width of the last hidden states and of the sentence embedding. */
export const USE_WIDTH = 512;

/** The graph's scalar constants, read from its weights. */
interface Scalars {
  lnEps: number;
  maskBias: number;
  heads: number;
  l2Eps: number;
  qScale: [number, number];
}

/** Outputs of `useLiteForward`. */
export interface UseLiteOutputs {
  /** [B, L, 512]: the last transformer layer's output, 0 at padding. */
  lastHiddenState: Tensor;
  /** [B, 512]: USE's sentence embedding (unit length). */
  embedding: Tensor;
}

/** x W + b over the last axis, W in TensorFlow's [in, out] layout. */
function dense(x: Tensor, w: Tensor, b: Tensor): Tensor {
  const [i, o] = w.shape;
  const y = matmul(reshape(x, [-1, i]), w);
  return add(reshape(y, [...x.shape.slice(0, -1), o]), b);
}

function attention(x: Tensor, p: Record<string, Tensor>, l: string, s: Scalars, bias: Tensor, qScale: number): Tensor {
  const [b, t] = x.shape;
  const qkv = dense(x, p[`${l}.qkv.kernel`], p[`${l}.qkv.bias`]);
  const d = qkv.shape[2] / 3, dh = d / s.heads;
  const heads = (k: number) =>
    transpose(reshape(sliceAxis(qkv, 2, k * d, (k + 1) * d), [b, t, s.heads, dh]), [0, 2, 1, 3]);
  const scores = add(matmul(mul(heads(0), qScale), swapAxes(heads(1), -1, -2)), bias);
  const o = matmul(softmax(scores, -1), heads(2));
  return dense(reshape(transpose(o, [0, 2, 1, 3]), [b, t, d]), p[`${l}.out.kernel`], p[`${l}.out.bias`]);
}

/**
 * The forward pass for ids and attention mask (both i32 [B, L]; the mask 1 at tokens, 0 at padding, tokens first).
 * `p` maps `useWeightNames`'s tensor names to tensors; the qkv and output kernels are [in, 3d] and [d, 512].
 */
export function useLiteForward(p: Record<string, Tensor>, s: Scalars, ids: Tensor, mask: Tensor): UseLiteOutputs {
  if (ids.dtype !== "i32" || ids.ndim !== 2) fail("useLiteForward", `ids must be i32 [batch, length], got ${ids}`);
  if (mask.dtype !== "i32" || mask.shape.join() !== ids.shape.join()) {
    fail("useLiteForward", `attention mask must be i32 like the ids ${ids}, got ${mask}`);
  }
  const tr = ids.trace;
  const [b, l] = ids.shape;
  const m = cast(mask, "f32"), m3 = reshape(m, [b, l, 1]);
  const emb = mul(gather(p.embeddings, ids, 0), m3);
  const angle = mul(tr.constant(Array.from({ length: l }, (_, i) => i), [l, 1]), p.inv_timescales);
  const signal = concat([sin(angle), cos(angle)], 1);
  let h = add(emb, mul(add(emb, signal), m3));
  const bias = reshape(mul(sub(1, m), s.maskBias), [b, 1, 1, l]);
  for (let i = 0; i < 2; i++) {
    const k = `layer_${i}`;
    const x = layerNorm(h, p[`${k}.ln_attn.scale`], p[`${k}.ln_attn.bias`], s.lnEps);
    const residual = i === 0 ? mul(dense(h, p[`${k}.residual.kernel`], p[`${k}.residual.bias`]), m3) : h;
    h = add(attention(x, p, k, s, bias, s.qScale[i]), residual);
    const y = layerNorm(h, p[`${k}.ln_ffn.scale`], p[`${k}.ln_ffn.bias`], s.lnEps);
    const f = dense(
      relu(dense(y, p[`${k}.ffn1.kernel`], p[`${k}.ffn1.bias`])),
      p[`${k}.ffn2.kernel`],
      p[`${k}.ffn2.bias`],
    );
    h = add(mul(f, m3), h);
  }
  const last = mul(h, m3);
  const mean = div(sum(last, 1), maximum(sum(m, 1, true), 1));
  const t = tanh(dense(mean, p["final.kernel"], p["final.bias"]));
  const embedding = mul(t, rsqrt(maximum(sum(square(t), 1, true), s.l2Eps)));
  return { lastHiddenState: last, embedding };
}

/** The scalar constants among `weights` (by `useWeightNames`'s short names). */
export function useScalars(weights: Record<string, Float32Array>): Scalars {
  const one = (k: string) => {
    const v = weights[k];
    if (!v || v.length !== 1) throw new Error(`use_lite: missing scalar "${k}"`);
    return v[0];
  };
  const heads = one("heads");
  if (!Number.isInteger(heads) || 256 % heads || USE_WIDTH % heads) {
    throw new Error(`use_lite: bad head count ${heads}`);
  }
  return {
    lnEps: one("ln_eps"),
    maskBias: one("mask_bias"),
    heads,
    l2Eps: one("l2_eps"),
    qScale: [one("layer_0.q_scale"), one("layer_1.q_scale")],
  };
}

/**
 * Traces the model with its weights as constants, for export: inputs `input_ids` and `attention_mask` i32
 * [batch, length], outputs `last_hidden_state` [batch, length, 512] and `text_embeds` [batch, 512] (the names
 * the text_encode stage reads; transformers.js returns every output of the session under its own name).
 */
export function traceUseLite(weights: Record<string, Float32Array>, batch: number, length: number): Graph {
  const tr = new Trace();
  const ids = tr.input("input_ids", [batch, length], "i32");
  const mask = tr.input("attention_mask", [batch, length], "i32");
  const p: Record<string, Tensor> = {};
  for (const [k, [, shape]] of Object.entries(useWeightNames())) {
    if (shape.length === 0) continue;
    if (!weights[k]) throw new Error(`traceUseLite: missing weight "${k}"`);
    // The 1×1 convolutions' kernels [1, 1, in, out] are plain [in, out] matrices.
    const s = shape.length === 4 ? shape.slice(2) : shape;
    p[k] = tr.constant(weights[k], s);
  }
  const o = useLiteForward(p, useScalars(weights), ids, mask);
  return tr.build({ last_hidden_state: o.lastHiddenState, text_embeds: o.embedding });
}
