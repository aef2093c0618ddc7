/**
 * Short names for the elementwise primitives and a few compositions used everywhere (mean, square, full).
 *
 * @module
 */
import { binary, cast, compare, expand, reshape, sum, unary } from "./ops.ts";
import { fail, Tensor, type TensorLike } from "./tensor.ts";

/** a + b */
export const add = (a: TensorLike, b: TensorLike): Tensor => binary("add", a, b);
/** a − b */
export const sub = (a: TensorLike, b: TensorLike): Tensor => binary("sub", a, b);
/** a · b */
export const mul = (a: TensorLike, b: TensorLike): Tensor => binary("mul", a, b);
/** a / b */
export const div = (a: TensorLike, b: TensorLike): Tensor => binary("div", a, b);
/** aᵇ */
export const pow = (a: TensorLike, b: TensorLike): Tensor => binary("pow", a, b);
/** Elementwise maximum. */
export const maximum = (a: TensorLike, b: TensorLike): Tensor => binary("maximum", a, b);
/** Elementwise minimum. */
export const minimum = (a: TensorLike, b: TensorLike): Tensor => binary("minimum", a, b);
/** a < b */
export const less = (a: TensorLike, b: TensorLike): Tensor => compare("less", a, b);
/** a > b */
export const greater = (a: TensorLike, b: TensorLike): Tensor => compare("greater", a, b);
/** a == b */
export const equal = (a: TensorLike, b: TensorLike): Tensor => compare("equal", a, b);
/** −x */
export const neg = (x: Tensor): Tensor => unary("neg", x);
/** eˣ */
export const exp = (x: Tensor): Tensor => unary("exp", x);
/** ln x */
export const log = (x: Tensor): Tensor => unary("log", x);
/** √x */
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
/** 1/x */
export const reciprocal = (x: Tensor): Tensor => unary("reciprocal", x);
/** sin x */
export const sin = (x: Tensor): Tensor => unary("sin", x);
/** cos x */
export const cos = (x: Tensor): Tensor => unary("cos", x);
/** tanh x */
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
/** 1/(1+e⁻ˣ) */
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
/** The error function. */
export const erf = (x: Tensor): Tensor => unary("erf", x);
/** |x| */
export const abs = (x: Tensor): Tensor => unary("abs", x);
/** sign(x) ∈ {−1, 0, 1} */
export const sign = (x: Tensor): Tensor => unary("sign", x);
/** x² (as x·x, so its gradient needs no pow). */
export const square = (x: Tensor): Tensor => mul(x, x);
/** 1/√x */
export const rsqrt = (x: Tensor): Tensor => reciprocal(sqrt(x));
/** max(x, 0) */
export const relu = (x: Tensor): Tensor => maximum(x, 0);

/** Mean over `axes` (all when omitted): a sum times 1/n, so it needs no primitive of its own. */
export function mean(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  const s = sum(x, axes, keepdims);
  const n = x.size / Math.max(1, s.size);
  return n === 1 ? s : mul(s, 1 / n);
}

/** A tensor of `shape` filled with `value`, made as one scalar expanded (no large constants in the graph). */
export function full(like: Tensor, shape: readonly number[], value: number): Tensor {
  return expand(reshape(like.trace.scalar(value, like.dtype), shape.map(() => 1)), shape);
}

/** Zeros of `x`'s shape. */
export const zerosLike = (x: Tensor): Tensor => full(x, x.shape, 0);
/** Ones of `x`'s shape. */
export const onesLike = (x: Tensor): Tensor => full(x, x.shape, 1);

/** bool → f32 (1 or 0). */
export function toFloat(x: Tensor): Tensor {
  if (x.dtype === "f32") fail("toFloat", `already f32: ${x}`);
  return cast(x, "f32");
}

/** A tensor operand as a tensor. */
export function asTensor(like: Tensor, x: TensorLike): Tensor {
  return x instanceof Tensor ? x : like.trace.scalar(x, like.dtype);
}
