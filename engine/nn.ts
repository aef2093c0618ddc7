/**
 * Neural-network building blocks composed from primitives: normalisations, activations, attention, resampling,
 * pooling and losses. None has a derivative rule of its own; autodiff goes through the primitives.
 *
 * @module
 */
import { add, erf, exp, log, mean, mul, relu, sigmoid, square, sub, tanh } from "./math.ts";
import {
  conv2d,
  type ConvOptions,
  expand,
  matmul,
  max,
  normalize,
  reshape,
  softmax as softmaxOp,
  stopGradient as stopGrad,
  sum,
  swapAxes,
  transpose,
} from "./ops.ts";
import { fail, type Tensor } from "./tensor.ts";

/** x·σ(x) (Elfwing et al. 2018; "swish"). */
export const silu = (x: Tensor): Tensor => mul(x, sigmoid(x));

/** Exact GELU, x·Φ(x) (Hendrycks & Gimpel 2016). */
export const gelu = (x: Tensor): Tensor => mul(mul(x, 0.5), add(erf(mul(x, Math.SQRT1_2)), 1));

/** GELU's tanh approximation, as used by CLIP's "quick" variants and GPT-2. */
export function geluTanh(x: Tensor): Tensor {
  const inner = mul(add(x, mul(mul(square(x), x), 0.044715)), Math.sqrt(2 / Math.PI));
  return mul(mul(x, 0.5), add(tanh(inner), 1));
}

/** CLIP's quick GELU, x·σ(1.702x). */
export const quickGelu = (x: Tensor): Tensor => mul(x, sigmoid(mul(x, 1.702)));

/** Leaky ReLU. */
export const leakyRelu = (x: Tensor, slope = 0.2): Tensor => add(relu(x), mul(relu(mul(x, -1)), -slope));

export { relu };

/** Softmax over `axis`: the fused primitive (see `ops.softmax`). */
export function softmax(x: Tensor, axis = -1): Tensor {
  return softmaxOp(x, axis);
}

/** log-softmax over `axis`. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const a = axis < 0 ? axis + x.ndim : axis;
  const z = sub(x, stopGrad(max(x, a, true)));
  return sub(z, log(sum(exp(z), a, true)));
}

/** Layer norm over the last axis with optional affine `weight`/`bias` of that size (Ba et al. 2016). */
export function layerNorm(x: Tensor, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  return affine(normalize(x, eps), weight, bias, [x.shape[x.ndim - 1]]);
}

/** Group norm of NCHW (or NC…) input over channel groups, with per-channel affine (Wu & He 2018). */
export function groupNorm(x: Tensor, groups: number, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  const [n, c] = x.shape;
  if (c % groups) fail("groupNorm", `${c} channels do not split into ${groups} groups`);
  const rest = x.shape.slice(2);
  const y = reshape(normalize(reshape(x, [n, groups, -1]), eps), x.shape);
  const bshape = [1, c, ...rest.map(() => 1)];
  return affine(y, weight && reshape(weight, bshape), bias && reshape(bias, bshape), bshape);
}

function affine(y: Tensor, w: Tensor | undefined, b: Tensor | undefined, shape: number[]): Tensor {
  if (w && w.size !== shape.reduce((p, q) => p * q, 1)) fail("norm", `weight ${w} does not fit [${shape}]`);
  let out = w ? mul(y, w) : y;
  if (b) out = add(out, b);
  return out;
}

/** x Wᵀ + b for weight [out, in] (PyTorch layout), over the last axis of x. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const lead = x.shape.slice(0, -1);
  const y = matmul(reshape(x, [-1, x.shape[x.ndim - 1]]), transpose(weight));
  const out = reshape(y, [...lead, weight.shape[0]]);
  return bias ? add(out, bias) : out;
}

/** 2-D convolution with optional bias [out]. */
export function conv(x: Tensor, weight: Tensor, bias?: Tensor, opts: ConvOptions = {}): Tensor {
  const y = conv2d(x, weight, opts);
  return bias ? add(y, reshape(bias, [1, -1, 1, 1])) : y;
}

/**
 * Scaled dot-product attention softmax(QKᵀ/√d)V over [..., tokens, d] (Vaswani et al. 2017). `heads` splits d.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, heads = 1): Tensor {
  const [b, tq, d] = q.shape.length === 3 ? q.shape : fail("attention", `expects [batch, tokens, dim], got ${q}`);
  const tk = k.shape[1], dh = d / heads;
  if (!Number.isInteger(dh)) fail("attention", `width ${d} does not split into ${heads} heads`);
  const split = (t: Tensor, n: number) => transpose(reshape(t, [b, n, heads, dh]), [0, 2, 1, 3]);
  const qh = split(q, tq), kh = split(k, tk), vh = split(v, tk);
  const s = mul(matmul(qh, swapAxes(kh, -1, -2)), 1 / Math.sqrt(dh));
  const o = matmul(softmax(s, -1), vh);
  return reshape(transpose(o, [0, 2, 1, 3]), [b, tq, d]);
}

/** Nearest-neighbour upsampling of NCHW by an integer factor (a reshape and an expand, no gather). */
export function upsampleNearest(x: Tensor, factor = 2): Tensor {
  const [n, c, h, w] = x.shape;
  const e = expand(reshape(x, [n, c, h, 1, w, 1]), [n, c, h, factor, w, factor]);
  return reshape(e, [n, c, h * factor, w * factor]);
}

/** k×k mean pooling with stride k of NCHW (sizes must divide). */
export function avgPool(x: Tensor, k = 2): Tensor {
  const [n, c, h, w] = x.shape;
  if (h % k || w % k) fail("avgPool", `${h}×${w} not divisible by ${k}`);
  return mean(reshape(x, [n, c, h / k, k, w / k, k]), [3, 5]);
}

/** k×k max pooling with stride k of NCHW (sizes must divide). */
export function maxPool(x: Tensor, k = 2): Tensor {
  const [n, c, h, w] = x.shape;
  if (h % k || w % k) fail("maxPool", `${h}×${w} not divisible by ${k}`);
  return max(reshape(x, [n, c, h / k, k, w / k, k]), [3, 5]);
}

/** Mean over the spatial axes of NCHW → [N, C]. */
export const globalAvgPool = (x: Tensor): Tensor => mean(x, [2, 3]);

/** Mean squared error. */
export const mse = (a: Tensor, b: Tensor): Tensor => mean(square(sub(a, b)));

/** Hinge loss for the discriminator on real logits: mean(max(0, 1 − d)). */
export const hingeReal = (d: Tensor): Tensor => mean(relu(sub(1, d)));
/** Hinge loss for the discriminator on fake logits: mean(max(0, 1 + d)). */
export const hingeFake = (d: Tensor): Tensor => mean(relu(add(1, d)));
/** Mean of the cross-entropy of `logits` [B, C] against one-hot `targets` [B, C]. */
export const crossEntropy = (logits: Tensor, targets: Tensor): Tensor =>
  mul(mean(sum(mul(logSoftmax(logits, -1), targets), -1)), -1);
