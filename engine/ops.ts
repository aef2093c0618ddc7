/**
 * The primitive ops, one function each, with shape and dtype inference. Everything else (`nn.ts`, losses,
 * optimizers) is composed from these, so a new primitive is one function here, one derivative rule in `grad.ts`
 * and one lowering per executor.
 *
 * @module
 */
import type { BinaryOp, CompareOp, ConvAttrs, DType, Node, UnaryOp } from "./ir.ts";
import { fail, Tensor, type TensorLike, type Trace } from "./tensor.ts";

const fmt = (s: readonly number[]) => `[${s.join(",")}]`;

function traceOf(op: string, xs: TensorLike[]): Trace {
  let tr: Trace | undefined;
  for (const x of xs) {
    if (x instanceof Tensor) {
      if (tr && x.trace !== tr) fail(op, "operands belong to different traces");
      tr = x.trace;
    }
  }
  if (!tr) fail(op, "needs at least one tensor operand");
  return tr;
}

function lift(tr: Trace, x: TensorLike, dtype: DType): Tensor {
  return x instanceof Tensor ? x : tr.scalar(x, dtype);
}

function push<N extends Node>(tr: Trace, node: N): Tensor {
  return tr.push(node);
}

/** Numpy broadcasting of two shapes; throws naming the op and both shapes. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1, db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) fail(op, `shapes ${fmt(a)} and ${fmt(b)} do not broadcast`);
    out[i] = da === 1 ? db : da;
  }
  return out;
}

function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) fail(op, `axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** An elementwise unary primitive. */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  if (x.dtype !== "f32") fail(op, `expects f32, got ${x}`);
  return push(x.trace, { op, inputs: [x.id], attrs: {}, shape: [...x.shape], dtype: "f32" });
}

/** An elementwise binary primitive with broadcasting; numbers become constants. */
export function binary(op: BinaryOp, a: TensorLike, b: TensorLike): Tensor {
  const tr = traceOf(op, [a, b]);
  const dt = a instanceof Tensor ? a.dtype : (b as Tensor).dtype;
  const ta = lift(tr, a, dt), tb = lift(tr, b, dt);
  if (ta.dtype !== tb.dtype) fail(op, `dtypes differ: ${ta} and ${tb}`);
  if (ta.dtype === "bool") fail(op, `arithmetic on bool ${ta}`);
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  return push(tr, { op, inputs: [ta.id, tb.id], attrs: {}, shape, dtype: ta.dtype });
}

/** A comparison with broadcasting, giving bool. */
export function compare(op: CompareOp, a: TensorLike, b: TensorLike): Tensor {
  const tr = traceOf(op, [a, b]);
  const dt = a instanceof Tensor ? a.dtype : (b as Tensor).dtype;
  const ta = lift(tr, a, dt), tb = lift(tr, b, dt);
  if (ta.dtype !== tb.dtype) fail(op, `dtypes differ: ${ta} and ${tb}`);
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  return push(tr, { op, inputs: [ta.id, tb.id], attrs: {}, shape, dtype: "bool" });
}

/** `cond ? a : b` elementwise, broadcasting all three. */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  const tr = traceOf("where", [cond, a, b]);
  if (cond.dtype !== "bool") fail("where", `condition must be bool, got ${cond}`);
  const dt = a instanceof Tensor ? a.dtype : b instanceof Tensor ? b.dtype : "f32";
  const ta = lift(tr, a, dt), tb = lift(tr, b, dt);
  if (ta.dtype !== tb.dtype) fail("where", `dtypes differ: ${ta} and ${tb}`);
  const shape = broadcastShapes("where", broadcastShapes("where", cond.shape, ta.shape), tb.shape);
  return push(tr, { op: "where", inputs: [cond.id, ta.id, tb.id], attrs: {}, shape, dtype: ta.dtype });
}

function reduce(op: "sum" | "max", x: Tensor, axes: number | readonly number[] | undefined, keepdims: boolean) {
  const ax = axes === undefined ? x.shape.map((_, i) => i) : (typeof axes === "number" ? [axes] : [...axes]);
  const norm = [...new Set(ax.map((a) => normAxis(op, a, x.ndim)))].sort((p, q) => p - q);
  if (x.dtype !== "f32") fail(op, `expects f32, got ${x}`);
  const shape = keepdims
    ? x.shape.map((d, i) => norm.includes(i) ? 1 : d)
    : x.shape.filter((_, i) => !norm.includes(i));
  if (norm.length === 0) return x;
  return push(x.trace, { op, inputs: [x.id], attrs: { axes: norm, keepdims }, shape, dtype: x.dtype });
}

/** Sum over `axes` (all when omitted). */
export function sum(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  return reduce("sum", x, axes, keepdims);
}

/** Maximum over `axes` (all when omitted). */
export function max(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  return reduce("max", x, axes, keepdims);
}

/**
 * Softmax over one axis, as one primitive: its forward is one fused kernel on every executor (the composed form
 * materialises five tensors of the input's size — attention scores are the largest tensors of a UNet step) and its
 * derivative is one short rule.
 */
export function softmax(x: Tensor, axis: number): Tensor {
  const a = normAxis("softmax", axis, x.ndim);
  if (x.dtype !== "f32") fail("softmax", `expects f32, got ${x}`);
  return push(x.trace, { op: "softmax", inputs: [x.id], attrs: { axis: a }, shape: [...x.shape], dtype: "f32" });
}

/**
 * (x − mean) / √(var + ε) over the last axis, as one primitive: the core of layer and group norm. Composed, it is
 * eight passes over the tensor forward and more backward; as one node it lowers to one fused kernel.
 */
export function normalize(x: Tensor, eps: number): Tensor {
  if (x.dtype !== "f32") fail("normalize", `expects f32, got ${x}`);
  if (x.ndim < 1) fail("normalize", `needs an axis to normalise, got ${x}`);
  if (!(eps > 0)) fail("normalize", `eps must be positive, got ${eps}`);
  return push(x.trace, { op: "normalize", inputs: [x.id], attrs: { eps }, shape: [...x.shape], dtype: "f32" });
}

/** Numpy matmul of rank ≥ 2 operands, broadcasting batch dimensions. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  const tr = traceOf("matmul", [a, b]);
  if (a.ndim < 2 || b.ndim < 2) fail("matmul", `operands must have rank ≥ 2, got ${a} and ${b}`);
  if (a.dtype !== "f32" || b.dtype !== "f32") fail("matmul", `expects f32, got ${a} and ${b}`);
  const [m, k] = a.shape.slice(-2), [k2, n] = b.shape.slice(-2);
  if (k !== k2) fail("matmul", `inner dimensions differ: ${fmt(a.shape)} @ ${fmt(b.shape)}`);
  const batch = broadcastShapes("matmul", a.shape.slice(0, -2), b.shape.slice(0, -2));
  return push(tr, { op: "matmul", inputs: [a.id, b.id], attrs: {}, shape: [...batch, m, n], dtype: "f32" });
}

/** Options of `conv2d`. */
export interface ConvOptions {
  /** Kernel step: one for both axes or `[sh, sw]`; default 1. */
  stride?: number | [number, number];
  /** Zero padding in pixels: one for all sides, `[ph, pw]`, or `[top, left, bottom, right]`; default 0. */
  pad?: number | [number, number] | [number, number, number, number];
  /** Channel groups, each convolved on its own (input channels: depthwise); default 1. */
  groups?: number;
}

/** Normalises conv options into IR attributes. */
export function convAttrs(o: ConvOptions = {}): ConvAttrs {
  const s = o.stride ?? 1, p = o.pad ?? 0;
  const stride: [number, number] = typeof s === "number" ? [s, s] : [s[0], s[1]];
  const pad: [number, number, number, number] = typeof p === "number"
    ? [p, p, p, p]
    : p.length === 2
    ? [p[0], p[1], p[0], p[1]]
    : [p[0], p[1], p[2], p[3]];
  return { stride, pad, groups: o.groups ?? 1 };
}

/** Output spatial size of a convolution. */
export function convOutShape(x: readonly number[], w: readonly number[], a: ConvAttrs): number[] {
  const ho = Math.floor((x[2] + a.pad[0] + a.pad[2] - w[2]) / a.stride[0]) + 1;
  const wo = Math.floor((x[3] + a.pad[1] + a.pad[3] - w[3]) / a.stride[1]) + 1;
  return [x[0], w[0], ho, wo];
}

function checkConv(op: string, x: readonly number[], w: readonly number[], a: ConvAttrs) {
  if (x.length !== 4 || w.length !== 4) fail(op, `expects NCHW input and OIHW weight, got ${fmt(x)} and ${fmt(w)}`);
  if (x[1] % a.groups || w[0] % a.groups || x[1] / a.groups !== w[1]) {
    fail(op, `input ${fmt(x)} and weight ${fmt(w)} do not fit groups=${a.groups}`);
  }
  const o = convOutShape(x, w, a);
  if (o[2] < 1 || o[3] < 1) fail(op, `kernel ${fmt(w)} larger than padded input ${fmt(x)}`);
  return o;
}

/** 2-D convolution, NCHW input and OIHW weight, no bias. */
export function conv2d(x: Tensor, w: Tensor, opts: ConvOptions = {}): Tensor {
  const tr = traceOf("conv2d", [x, w]);
  const attrs = convAttrs(opts);
  const shape = checkConv("conv2d", x.shape, w.shape, attrs);
  return push(tr, { op: "conv2d", inputs: [x.id, w.id], attrs, shape, dtype: "f32" });
}

/** The adjoint of `conv2d` in its input: maps an output cotangent to one of shape `xShape`. */
export function conv2dGradInput(gy: Tensor, w: Tensor, xShape: readonly number[], attrs: ConvAttrs): Tensor {
  const tr = traceOf("conv2d_grad_input", [gy, w]);
  const o = checkConv("conv2d_grad_input", xShape, w.shape, attrs);
  if (fmt(o) !== fmt(gy.shape)) fail("conv2d_grad_input", `cotangent ${fmt(gy.shape)} should be ${fmt(o)}`);
  return push(tr, { op: "conv2d_grad_input", inputs: [gy.id, w.id], attrs, shape: [...xShape], dtype: "f32" });
}

/** The adjoint of `conv2d` in its weight: maps an output cotangent to one of shape `wShape`. */
export function conv2dGradWeight(x: Tensor, gy: Tensor, wShape: readonly number[], attrs: ConvAttrs): Tensor {
  const tr = traceOf("conv2d_grad_weight", [x, gy]);
  const o = checkConv("conv2d_grad_weight", x.shape, wShape, attrs);
  if (fmt(o) !== fmt(gy.shape)) fail("conv2d_grad_weight", `cotangent ${fmt(gy.shape)} should be ${fmt(o)}`);
  return push(tr, { op: "conv2d_grad_weight", inputs: [x.id, gy.id], attrs, shape: [...wShape], dtype: "f32" });
}

/** Row-major reshape; one dimension may be -1. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const holes = shape.filter((d) => d === -1).length;
  const out = shape.map((d) => d === -1 ? x.size / known : d);
  if (holes > 1 || out.some((d) => !Number.isInteger(d) || d < 0) || out.reduce((a, b) => a * b, 1) !== x.size) {
    fail("reshape", `cannot reshape ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  if (fmt(out) === fmt(x.shape)) return x;
  return push(x.trace, { op: "reshape", inputs: [x.id], attrs: {}, shape: out, dtype: x.dtype });
}

/** Permutes axes: output axis i is input axis `perm[i]` (reverses axes when omitted). */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  const p = perm ? perm.map((a) => normAxis("transpose", a, x.ndim)) : x.shape.map((_, i) => x.ndim - 1 - i);
  if (p.length !== x.ndim || new Set(p).size !== p.length) fail("transpose", `bad perm ${fmt(p)} for ${x}`);
  if (p.every((a, i) => a === i)) return x;
  const shape = p.map((a) => x.shape[a]);
  return push(x.trace, { op: "transpose", inputs: [x.id], attrs: { perm: p }, shape, dtype: x.dtype });
}

/** Swaps two axes. */
export function swapAxes(x: Tensor, a: number, b: number): Tensor {
  const p = x.shape.map((_, i) => i);
  const i = normAxis("swapAxes", a, x.ndim), j = normAxis("swapAxes", b, x.ndim);
  [p[i], p[j]] = [p[j], p[i]];
  return transpose(x, p);
}

/** Takes `[starts[i], ends[i])` along every axis. */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[]): Tensor {
  if (starts.length !== x.ndim || ends.length !== x.ndim) fail("slice", `needs ${x.ndim} starts and ends for ${x}`);
  for (let i = 0; i < x.ndim; i++) {
    if (!(0 <= starts[i] && starts[i] <= ends[i] && ends[i] <= x.shape[i])) {
      fail("slice", `range ${starts[i]}:${ends[i]} out of bounds on axis ${i} of ${x}`);
    }
  }
  if (starts.every((s, i) => s === 0 && ends[i] === x.shape[i])) return x;
  const shape = starts.map((s, i) => ends[i] - s);
  return push(x.trace, {
    op: "slice",
    inputs: [x.id],
    attrs: { starts: [...starts], ends: [...ends] },
    shape,
    dtype: x.dtype,
  });
}

/** Takes `[start, end)` along one axis. */
export function sliceAxis(x: Tensor, axis: number, start: number, end: number): Tensor {
  const a = normAxis("slice", axis, x.ndim);
  const starts = x.shape.map((_, i) => i === a ? start : 0), ends = x.shape.map((d, i) => i === a ? end : d);
  return slice(x, starts, ends);
}

/** Zero-pads every axis by `before[i]` and `after[i]`. */
export function pad(x: Tensor, before: readonly number[], after: readonly number[]): Tensor {
  if (before.length !== x.ndim || after.length !== x.ndim) fail("pad", `needs ${x.ndim} pads for ${x}`);
  if ([...before, ...after].some((p) => !Number.isInteger(p) || p < 0)) fail("pad", `pads must be ≥ 0`);
  if ([...before, ...after].every((p) => p === 0)) return x;
  const shape = x.shape.map((d, i) => d + before[i] + after[i]);
  return push(x.trace, {
    op: "pad",
    inputs: [x.id],
    attrs: { before: [...before], after: [...after] },
    shape,
    dtype: x.dtype,
  });
}

/** Joins tensors along `axis`; all other dimensions must agree. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) fail("concat", "needs at least one tensor");
  const tr = traceOf("concat", [...xs]);
  if (xs.length === 1) return xs[0];
  const a = normAxis("concat", axis, xs[0].ndim);
  const shape = [...xs[0].shape];
  shape[a] = 0;
  for (const x of xs) {
    if (x.ndim !== shape.length || x.dtype !== xs[0].dtype || x.shape.some((d, i) => i !== a && d !== shape[i])) {
      fail("concat", `${x} does not fit ${xs[0]} along axis ${a}`);
    }
    shape[a] += x.shape[a];
  }
  return push(tr, { op: "concat", inputs: xs.map((x) => x.id), attrs: { axis: a }, shape, dtype: xs[0].dtype });
}

/** Broadcasts to `shape` (numpy rules). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const out = broadcastShapes("expand", x.shape, shape);
  if (fmt(out) !== fmt(shape)) fail("expand", `cannot broadcast ${fmt(x.shape)} to ${fmt(shape)}`);
  if (fmt(out) === fmt(x.shape)) return x;
  return push(x.trace, { op: "expand", inputs: [x.id], attrs: {}, shape: out, dtype: x.dtype });
}

/** Numpy `take`: picks entries along `axis` by int32 `indices` of any shape. */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  const tr = traceOf("gather", [x, indices]);
  if (indices.dtype !== "i32") fail("gather", `indices must be i32, got ${indices}`);
  const a = normAxis("gather", axis, x.ndim);
  const shape = [...x.shape.slice(0, a), ...indices.shape, ...x.shape.slice(a + 1)];
  return push(tr, { op: "gather", inputs: [x.id, indices.id], attrs: { axis: a }, shape, dtype: x.dtype });
}

/** Converts the element type. */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  return push(x.trace, { op: "cast", inputs: [x.id], attrs: {}, shape: [...x.shape], dtype });
}

/** Identity whose gradient is zero: the value is used, but not differentiated through. */
export function stopGradient(x: Tensor): Tensor {
  return push(x.trace, { op: "stop_gradient", inputs: [x.id], attrs: {}, shape: [...x.shape], dtype: x.dtype });
}
