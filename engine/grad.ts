/**
 * Reverse-mode autodiff over traced graphs.
 *
 * One table of derivative rules keyed by primitive. Every rule is written in traced primitives, so the gradient is
 * itself a traced program that can be differentiated again (the R1 penalty of ADD differentiates a gradient).
 * Each rule maps the output cotangent `g` to one cotangent per input (`null` where the input gets none).
 *
 * @module
 */
import type { ConvAttrs, Node, Op } from "./ir.ts";
import {
  cast,
  conv2d,
  conv2dGradInput,
  conv2dGradWeight,
  expand,
  matmul,
  pad,
  reshape,
  slice,
  sum,
  swapAxes,
  transpose,
  where,
} from "./ops.ts";
import {
  add,
  cos,
  div,
  equal,
  exp,
  greater,
  less,
  log,
  mul,
  neg,
  pow,
  sign,
  sin,
  sqrt,
  sub,
  zerosLike,
} from "./math.ts";
import { fail, flattenTree, isTensor, Tensor, type Tree, unflattenTree } from "./tensor.ts";

/** What a rule sees: the node, its input tensors, its output, the output cotangent, and which inputs need one. */
export interface RuleArgs {
  node: Node;
  x: Tensor[];
  y: Tensor;
  g: Tensor;
  need: boolean[];
}

type Rule = (a: RuleArgs) => (Tensor | null)[];

/** Sums a broadcast cotangent back down to `shape` (the adjoint of numpy broadcasting). */
export function unbroadcast(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.ndim; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  return reshape(sum(g, axes, true), shape);
}

const inversePerm = (p: number[]) => p.map((_, i) => p.indexOf(i));

/** The derivative rules, one per primitive. */
export const RULES: Record<Op, Rule> = {
  input: () => [],
  const: () => [],
  // d(−x) = −dx
  neg: ({ g }) => [neg(g)],
  // d eˣ = eˣ dx
  exp: ({ g, y }) => [mul(g, y)],
  // d ln x = dx / x
  log: ({ g, x }) => [div(g, x[0])],
  // d √x = dx / (2√x)
  sqrt: ({ g, y }) => [div(mul(g, 0.5), y)],
  // d (1/x) = −dx / x²
  reciprocal: ({ g, y }) => [neg(mul(g, mul(y, y)))],
  // d sin x = cos x dx
  sin: ({ g, x }) => [mul(g, cos(x[0]))],
  // d cos x = −sin x dx
  cos: ({ g, x }) => [neg(mul(g, sin(x[0])))],
  // d tanh x = (1 − tanh² x) dx
  tanh: ({ g, y }) => [mul(g, sub(1, mul(y, y)))],
  // d σ(x) = σ(x)(1 − σ(x)) dx
  sigmoid: ({ g, y }) => [mul(g, mul(y, sub(1, y)))],
  // d erf x = (2/√π) e^(−x²) dx
  erf: ({ g, x }) => [mul(g, mul(exp(neg(mul(x[0], x[0]))), 2 / Math.sqrt(Math.PI)))],
  // d |x| = sign(x) dx
  abs: ({ g, x }) => [mul(g, sign(x[0]))],
  // sign is piecewise constant
  sign: () => [null],
  // d(a+b) = da + db, summed over broadcast axes
  add: ({ g, x }) => [unbroadcast(g, x[0].shape), unbroadcast(g, x[1].shape)],
  // d(a−b) = da − db
  sub: ({ g, x }) => [unbroadcast(g, x[0].shape), unbroadcast(neg(g), x[1].shape)],
  // d(ab) = b da + a db
  mul: ({ g, x, need }) => [
    need[0] ? unbroadcast(mul(g, x[1]), x[0].shape) : null,
    need[1] ? unbroadcast(mul(g, x[0]), x[1].shape) : null,
  ],
  // d(a/b) = da/b − (a/b) db/b
  div: ({ g, x, y, need }) => [
    need[0] ? unbroadcast(div(g, x[1]), x[0].shape) : null,
    need[1] ? unbroadcast(neg(div(mul(g, y), x[1])), x[1].shape) : null,
  ],
  // d(aᵇ) = b a^(b−1) da + aᵇ ln a db
  pow: ({ g, x, y, need }) => [
    need[0] ? unbroadcast(mul(g, mul(x[1], pow(x[0], sub(x[1], 1)))), x[0].shape) : null,
    need[1] ? unbroadcast(mul(g, mul(y, log(x[0]))), x[1].shape) : null,
  ],
  // d max(a,b) goes to a where a ≥ b, else to b
  maximum: ({ g, x }) => {
    const toB = less(x[0], x[1]);
    return [unbroadcast(where(toB, 0, g), x[0].shape), unbroadcast(where(toB, g, 0), x[1].shape)];
  },
  // d min(a,b) goes to a where a ≤ b, else to b
  minimum: ({ g, x }) => {
    const toB = greater(x[0], x[1]);
    return [unbroadcast(where(toB, 0, g), x[0].shape), unbroadcast(where(toB, g, 0), x[1].shape)];
  },
  less: () => [null, null],
  greater: () => [null, null],
  equal: () => [null, null],
  // d(c ? a : b) = c ? da : db; the condition has no gradient
  where: ({ g, x }) => [
    null,
    unbroadcast(where(x[0], g, 0), x[1].shape),
    unbroadcast(where(x[0], 0, g), x[2].shape),
  ],
  // d Σ x = broadcast of the cotangent over the summed axes
  sum: ({ g, x, node }) => [expand(reshape(g, keptShape(x[0].shape, axesOf(node))), x[0].shape)],
  // d max x goes to the maximal entries, shared equally between ties
  max: ({ g, x, y, node }) => {
    const kept = keptShape(x[0].shape, axesOf(node));
    const hit = cast(equal(x[0], expand(reshape(y, kept), x[0].shape)), "f32");
    const count = sum(hit, axesOf(node), true);
    return [mul(hit, expand(reshape(div(reshape(g, kept), count), kept), x[0].shape))];
  },
  // C = AB: dA = G Bᵀ, dB = Aᵀ G, batch axes summed where they were broadcast
  matmul: ({ g, x, need }) => [
    need[0] ? unbroadcast(matmul(g, swapAxes(x[1], -1, -2)), x[0].shape) : null,
    need[1] ? unbroadcast(matmul(swapAxes(x[0], -1, -2), g), x[1].shape) : null,
  ],
  // conv, its input-adjoint and its weight-adjoint are the three faces of one trilinear form
  // T(x, w, g) = ⟨conv(x, w), g⟩ = ⟨x, gradInput(g, w)⟩ = ⟨w, gradWeight(x, g)⟩, so each one's derivative is another.
  conv2d: ({ g, x, node, need }) => {
    const a = node.attrs as ConvAttrs;
    return [
      need[0] ? conv2dGradInput(g, x[1], x[0].shape, a) : null,
      need[1] ? conv2dGradWeight(x[0], g, x[1].shape, a) : null,
    ];
  },
  // z = gradInput(gy, w): dgy = conv(dz, w), dw = gradWeight(dz, gy)
  conv2d_grad_input: ({ g, x, node, need }) => {
    const a = node.attrs as ConvAttrs;
    return [need[0] ? conv2d(g, x[1], a) : null, need[1] ? conv2dGradWeight(g, x[0], x[1].shape, a) : null];
  },
  // z = gradWeight(x, gy): dx = gradInput(gy, dz), dgy = conv(x, dz)
  conv2d_grad_weight: ({ g, x, node, need }) => {
    const a = node.attrs as ConvAttrs;
    return [need[0] ? conv2dGradInput(x[1], g, x[0].shape, a) : null, need[1] ? conv2d(x[0], g, a) : null];
  },
  reshape: ({ g, x }) => [reshape(g, x[0].shape)],
  transpose: ({ g, node }) => [transpose(g, inversePerm((node.attrs as { perm: number[] }).perm))],
  // the adjoint of taking a window is zero-padding back around it
  slice: ({ g, x, node }) => {
    const { starts, ends } = node.attrs as { starts: number[]; ends: number[] };
    return [pad(g, starts, ends.map((e, i) => x[0].shape[i] - e))];
  },
  // the adjoint of zero-padding is taking the window back
  pad: ({ g, x, node }) => {
    const { before } = node.attrs as { before: number[] };
    return [slice(g, before, before.map((b, i) => b + x[0].shape[i]))];
  },
  concat: ({ g, x, node }) => {
    const axis = (node.attrs as { axis: number }).axis;
    let at = 0;
    return x.map((xi) => {
      const s = g.shape.map((_, i) => i === axis ? at : 0),
        e = g.shape.map((d, i) => i === axis ? at + xi.shape[axis] : d);
      at += xi.shape[axis];
      return slice(g, s, e);
    });
  },
  expand: ({ g, x }) => [unbroadcast(g, x[0].shape)],
  // take(x, idx) along an axis is a one-hot matmul, whose adjoint needs no scatter primitive:
  // dx[.., j, ..] = Σ_k [idx_k = j] g[.., k, ..]
  gather: ({ g, x, node }) => {
    const axis = (node.attrs as { axis: number }).axis, idx = x[1], n = x[0].shape[axis];
    const pre = x[0].shape.slice(0, axis).reduce((p, q) => p * q, 1), post = x[0].shape.slice(axis + 1);
    const k = idx.size, postN = post.reduce((p, q) => p * q, 1);
    const iota = idx.trace.constant(Array.from({ length: n }, (_, i) => i), [1, n], "i32");
    const onehot = cast(equal(reshape(idx, [k, 1]), iota), "f32"); // [k, n]
    const dx = matmul(transpose(onehot), reshape(g, [pre, k, postN])); // [pre, n, postN]
    return [reshape(dx, x[0].shape), null];
  },
  // casting between floats is the identity; from ints or bools there is nothing to differentiate
  cast: ({ g, x, node }) => [x[0].dtype === "f32" && node.dtype === "f32" ? g : null],
  stop_gradient: () => [null],
  // y = (x − μ) r with r = (var + ε)^(−1/2) over the last axis of n: dx = r (g − mean g − y mean(g y)); r is
  // recomputed from x, in primitives, so the rule is itself differentiable
  normalize: ({ g, x, y, node }) => {
    const eps = (node.attrs as { eps: number }).eps, a = x[0].ndim - 1, n = x[0].shape[a];
    const meanLast = (t: Tensor) => mul(sum(t, a, true), 1 / n);
    const xc = sub(x[0], meanLast(x[0]));
    const r = div(1, sqrt(add(meanLast(mul(xc, xc)), eps)));
    return [mul(r, sub(sub(g, meanLast(g)), mul(y, meanLast(mul(g, y)))))];
  },
  // y = softmax(x): J = diag(y) − y yᵀ along the axis, so dx = y ⊙ (g − Σ_axis g ⊙ y)
  softmax: ({ g, y, node }) => {
    const axis = (node.attrs as { axis: number }).axis;
    return [mul(y, sub(g, sum(mul(g, y), axis, true)))];
  },
};

function axesOf(node: Node): number[] {
  return (node.attrs as { axes: number[] }).axes;
}
function keptShape(shape: readonly number[], axes: number[]): number[] {
  return shape.map((d, i) => axes.includes(i) ? 1 : d);
}

/**
 * Cotangents of `wrt` for the scalar `y` (or for `y` seeded with cotangent `seed`). Tensors `y` does not depend on
 * get zeros. The result is traced into the same graph and can be differentiated again.
 */
export function vjp(y: Tensor, wrt: readonly Tensor[], seed?: Tensor): Tensor[] {
  const tr = y.trace;
  for (const w of wrt) if (w.trace !== tr) fail("grad", "a differentiated tensor belongs to another trace");
  if (!seed && y.size !== 1) fail("grad", `needs a scalar output or a seed cotangent, got ${y}`);
  if (y.dtype !== "f32") fail("grad", `output must be f32, got ${y}`);
  const nodes = tr.nodes.slice(0, y.id + 1);
  // Only nodes that both depend on some `wrt` and feed `y` carry cotangents.
  const fromWrt = new Uint8Array(nodes.length);
  for (const w of wrt) if (w.id < nodes.length) fromWrt[w.id] = 1;
  for (let i = 0; i < nodes.length; i++) {
    if (!fromWrt[i] && nodes[i].inputs.some((j) => fromWrt[j])) fromWrt[i] = 1;
  }
  const toY = new Uint8Array(nodes.length);
  toY[y.id] = 1;
  for (let i = nodes.length - 1; i >= 0; i--) if (toY[i]) { for (const j of nodes[i].inputs) toY[j] = 1; }
  const ct = new Map<number, Tensor>();
  ct.set(y.id, seed ?? reshape(tr.scalar(1), y.shape));
  for (let i = y.id; i >= 0; i--) {
    const g = ct.get(i);
    if (!g || !fromWrt[i] || !toY[i]) continue;
    const node = nodes[i];
    if (node.inputs.length === 0) continue;
    const need = node.inputs.map((j) => fromWrt[j] === 1 && nodes[j].dtype === "f32");
    if (!need.some((b) => b)) continue;
    const x = node.inputs.map((j) => new Tensor(tr, j));
    const gs = RULES[node.op]({ node, x, y: new Tensor(tr, i), g, need });
    node.inputs.forEach((j, k) => {
      const gj = gs[k];
      if (!gj || !need[k]) return;
      const prev = ct.get(j);
      ct.set(j, prev ? add(prev, gj) : gj);
    });
  }
  return wrt.map((w) => ct.get(w.id) ?? zerosLike(w));
}

/** Gradient of scalar `y` with respect to every tensor in `params`, as a tree of the same structure. */
export function grad<T extends Tree>(y: Tensor, params: T): T {
  const leaves = flattenTree(params, isTensor);
  const gs = vjp(y, leaves.map(([, t]) => t));
  return unflattenTree(params, isTensor, gs) as T;
}

/** Wraps `f(params, ...rest)` (traced, scalar) so it returns `[value, gradient tree]`. */
export function valueAndGrad<T extends Tree, A extends unknown[]>(
  f: (params: T, ...rest: A) => Tensor,
): (params: T, ...rest: A) => [Tensor, T] {
  return (params, ...rest) => {
    const y = f(params, ...rest);
    return [y, grad(y, params)];
  };
}
