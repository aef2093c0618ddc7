/**
 * Float64 kernels of the reference executor: one plain function per primitive over row-major `Float64Array`s.
 *
 * Each kernel computes its result shape from its operands itself (rather than trusting the node), so the interpreter
 * can compare it with the traced shape and catch tracer bugs. Kernels never write to their operands, which lets the
 * interpreter share arrays between nodes (reshape, stop_gradient) without copying.
 *
 * @module
 */
import { type BinaryOp, type CompareOp, type ConvAttrs, size, strides, type UnaryOp } from "../ir.ts";

/** A dense row-major float64 tensor. */
export interface Tensor {
  data: Float64Array;
  shape: readonly number[];
}

function fail(msg: string): never {
  throw new Error(`reference: ${msg}`);
}

function fmt(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** Whether two shapes are identical. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// ---------------------------------------------------------------------------------------------------------------------
// erf

const TWO_OVER_SQRT_PI = 1.1283791670955126;
const ONE_OVER_SQRT_PI = 0.5641895835477563;

/**
 * The error function to about 1e-16 absolute error.
 *
 * Below |x| = 3 it uses erf(x) = 2/√π·e^(−x²)·Σ 2ⁿx^(2n+1)/(1·3·…·(2n+1)), whose terms are all positive, so unlike the
 * Taylor series it loses nothing to cancellation. Beyond that it uses the Laplace continued fraction for erfc, which
 * converges fast for large |x| where the series would need many terms.
 */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  if (ax < 3) {
    const x2 = x * x;
    let term = x;
    let sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (2 * x2) / (2 * n + 1);
      sum += term;
      if (Math.abs(term) <= 1e-17 * Math.abs(sum)) break;
    }
    return TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
  }
  if (ax > 7) return Math.sign(x); // erfc(7) ≈ 4e-23, below float64 resolution of 1.
  // erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + (2/2)/(x + (3/2)/(x + …)))), evaluated from the tail up.
  let t = ax;
  for (let k = 80; k >= 1; k--) t = ax + (k / 2) / t;
  const erfc = ONE_OVER_SQRT_PI * Math.exp(-ax * ax) / t;
  return x > 0 ? 1 - erfc : erfc - 1;
}

// ---------------------------------------------------------------------------------------------------------------------
// Broadcasting and strided index maps

/** The numpy broadcast of several shapes (right-aligned; a dimension of 1 stretches). Throws if incompatible. */
export function broadcastShapes(shapes: readonly (readonly number[])[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const o = rank - s.length + i;
      if (s[i] === out[o] || s[i] === 1) continue;
      if (out[o] === 1) out[o] = s[i];
      else fail(`cannot broadcast shapes ${shapes.map(fmt).join(" and ")}`);
    }
  }
  return out;
}

/** Strides for reading a tensor of `inShape` as if broadcast to `outShape` (0 on stretched or missing axes). */
function broadcastStrides(inShape: readonly number[], outShape: readonly number[]): number[] {
  const s = strides(inShape);
  const off = outShape.length - inShape.length;
  return outShape.map((_, o) => {
    const i = o - off;
    return i < 0 || inShape[i] === 1 ? 0 : s[i];
  });
}

/**
 * For each element of `outShape` in row-major order, the flat offset `base + Σ idx[d]·inStrides[d]`.
 *
 * Every layout op (broadcast, transpose, slice, pad, reduction) is this one odometer with different strides, so
 * there is only one piece of index arithmetic to get right.
 */
function offsets(outShape: readonly number[], inStrides: readonly number[], base = 0): Int32Array {
  const n = size(outShape);
  const r = outShape.length;
  const out = new Int32Array(n);
  const idx = new Array<number>(r).fill(0);
  let off = base;
  for (let i = 0; i < n; i++) {
    out[i] = off;
    for (let d = r - 1; d >= 0; d--) {
      idx[d]++;
      off += inStrides[d];
      if (idx[d] < outShape[d]) break;
      off -= idx[d] * inStrides[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** Reads `x` broadcast to `shape`, as a new array. */
function broadcastTo(x: Tensor, shape: readonly number[]): Float64Array {
  if (sameShape(x.shape, shape)) return x.data;
  const map = offsets(shape, broadcastStrides(x.shape, shape));
  const out = new Float64Array(map.length);
  for (let i = 0; i < map.length; i++) out[i] = x.data[map[i]];
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Elementwise

const UNARY: Record<UnaryOp, (x: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  reciprocal: (x) => 1 / x,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  // Two branches so that exp never overflows into inf/inf.
  sigmoid: (x) => x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)),
  erf,
  abs: Math.abs,
  sign: (x) => x > 0 ? 1 : x < 0 ? -1 : x, // keeps NaN and ±0 like numpy
};

const BINARY: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  // C pow (numpy) gives 1 for 1^y and (−1)^±∞ where JS Math.pow gives NaN.
  pow: (a, b) => a === 1 || (a === -1 && !Number.isFinite(b) && !Number.isNaN(b)) ? 1 : Math.pow(a, b),
  maximum: (a, b) => Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b),
  minimum: (a, b) => Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b),
};

const COMPARE: Record<CompareOp, (a: number, b: number) => number> = {
  less: (a, b) => a < b ? 1 : 0,
  greater: (a, b) => a > b ? 1 : 0,
  equal: (a, b) => a === b ? 1 : 0,
};

/** A unary elementwise primitive. */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  const f = UNARY[op];
  const out = new Float64Array(x.data.length);
  for (let i = 0; i < out.length; i++) out[i] = f(x.data[i]);
  return { data: out, shape: x.shape };
}

/** A binary arithmetic or comparison primitive with numpy broadcasting. */
export function binary(op: BinaryOp | CompareOp, a: Tensor, b: Tensor): Tensor {
  const f = op in BINARY ? BINARY[op as BinaryOp] : COMPARE[op as CompareOp];
  const shape = broadcastShapes([a.shape, b.shape]);
  const ad = broadcastTo(a, shape);
  const bd = broadcastTo(b, shape);
  const out = new Float64Array(size(shape));
  for (let i = 0; i < out.length; i++) out[i] = f(ad[i], bd[i]);
  return { data: out, shape };
}

/** `where(cond, a, b)`: a where cond is nonzero, else b, broadcasting all three. */
/** (x − mean) / √(var + ε) over the last axis, two-pass (float64). */
export function normalize(x: Tensor, eps: number): Tensor {
  const n = x.shape[x.shape.length - 1], out = new Float64Array(x.data.length);
  for (let o = 0; o < x.data.length; o += n) {
    let m = 0, v = 0;
    for (let k = 0; k < n; k++) m += x.data[o + k];
    m /= n;
    for (let k = 0; k < n; k++) v += (x.data[o + k] - m) ** 2;
    const r = 1 / Math.sqrt(v / n + eps);
    for (let k = 0; k < n; k++) out[o + k] = (x.data[o + k] - m) * r;
  }
  return { data: out, shape: x.shape };
}

/** Softmax along `axis`, shifted by the maximum (float64, so the shift is for overflow only). */
export function softmax(x: Tensor, axis: number): Tensor {
  const n = x.shape[axis], inner = size(x.shape.slice(axis + 1)), outer = size(x.shape.slice(0, axis));
  const out = new Float64Array(x.data.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (k: number) => (o * n + k) * inner + i;
      let m = -Infinity, z = 0;
      for (let k = 0; k < n; k++) m = Math.max(m, x.data[at(k)]);
      for (let k = 0; k < n; k++) z += out[at(k)] = Math.exp(x.data[at(k)] - m);
      for (let k = 0; k < n; k++) out[at(k)] /= z;
    }
  }
  return { data: out, shape: x.shape };
}

export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const shape = broadcastShapes([cond.shape, a.shape, b.shape]);
  const cd = broadcastTo(cond, shape);
  const ad = broadcastTo(a, shape);
  const bd = broadcastTo(b, shape);
  const out = new Float64Array(size(shape));
  for (let i = 0; i < out.length; i++) out[i] = cd[i] !== 0 ? ad[i] : bd[i];
  return { data: out, shape };
}

// ---------------------------------------------------------------------------------------------------------------------
// Reductions and matmul

/** `sum` or `max` over `axes` (non-negative, sorted, distinct). */
export function reduce(op: "sum" | "max", x: Tensor, axes: readonly number[], keepdims: boolean): Tensor {
  const r = x.shape.length;
  axes.forEach((a, i) => {
    if (!Number.isInteger(a) || a < 0 || a >= r || (i > 0 && a <= axes[i - 1])) {
      fail(`${op}: axes ${fmt(axes)} must be sorted, distinct and in [0, ${r})`);
    }
  });
  const reduced = x.shape.map((_, d) => axes.includes(d));
  const kept = x.shape.map((d, i) => reduced[i] ? 1 : d);
  // Walk the input and send each element to its output slot: reduced axes get output stride 0.
  const keptStrides = strides(kept).map((s, i) => reduced[i] ? 0 : s);
  const map = offsets(x.shape, keptStrides);
  const out = new Float64Array(size(kept)).fill(op === "sum" ? 0 : -Infinity);
  if (op === "sum") {
    for (let i = 0; i < map.length; i++) out[map[i]] += x.data[i];
  } else {
    for (let i = 0; i < map.length; i++) {
      const v = x.data[i], o = map[i];
      if (v > out[o] || Number.isNaN(v)) out[o] = v; // numpy max propagates NaN
    }
  }
  return { data: out, shape: keepdims ? kept : x.shape.filter((_, i) => !reduced[i]) };
}

/** numpy matmul of rank ≥ 2 operands, broadcasting the batch dimensions. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.shape.length < 2 || b.shape.length < 2) fail(`matmul needs rank >= 2, got ${fmt(a.shape)} @ ${fmt(b.shape)}`);
  const [m, k] = a.shape.slice(-2);
  const [k2, n] = b.shape.slice(-2);
  if (k !== k2) fail(`matmul: inner dimensions differ in ${fmt(a.shape)} @ ${fmt(b.shape)}`);
  const aBatch = a.shape.slice(0, -2), bBatch = b.shape.slice(0, -2);
  const batch = broadcastShapes([aBatch, bBatch]);
  // Offsets of each batch's matrix in a and b, in units of whole matrices times their size.
  const aOff = offsets(batch, broadcastStrides(aBatch, batch).map((s) => s * m * k));
  const bOff = offsets(batch, broadcastStrides(bBatch, batch).map((s) => s * k * n));
  const out = new Float64Array(aOff.length * m * n);
  const A = a.data, B = b.data;
  for (let t = 0; t < aOff.length; t++) {
    const ao = aOff[t], bo = bOff[t], oo = t * m * n;
    // i-p-j order walks rows of B and out contiguously.
    for (let i = 0; i < m; i++) {
      for (let p = 0; p < k; p++) {
        const av = A[ao + i * k + p];
        const brow = bo + p * n, orow = oo + i * n;
        for (let j = 0; j < n; j++) out[orow + j] += av * B[brow + j];
      }
    }
  }
  return { data: out, shape: [...batch, m, n] };
}

// ---------------------------------------------------------------------------------------------------------------------
// Convolution. The three kernels are deliberately written independently (forward as a direct sum, grad_input as a
// gather over the output positions each input touches, grad_weight as a correlation of x with gy), so that the
// adjoint-identity tests check them against each other instead of against shared index arithmetic.

interface ConvDims {
  n: number;
  c: number;
  h: number;
  w: number;
  o: number;
  cg: number;
  og: number;
  kh: number;
  kw: number;
  ho: number;
  wo: number;
}

function convDims(x: readonly number[], w: readonly number[], a: ConvAttrs, what: string): ConvDims {
  if (x.length !== 4 || w.length !== 4) fail(`${what}: expected rank-4 x and w, got ${fmt(x)} and ${fmt(w)}`);
  const [n, c, h, wd] = x;
  const [o, cg, kh, kw] = w;
  const g = a.groups;
  const [sh, sw] = a.stride;
  const [pt, pl, pb, pr] = a.pad;
  if (!Number.isInteger(g) || g < 1 || c % g !== 0 || o % g !== 0 || cg * g !== c) {
    fail(`${what}: x ${fmt(x)} and w ${fmt(w)} do not fit groups=${g}`);
  }
  if (sh < 1 || sw < 1 || [pt, pl, pb, pr].some((p) => p < 0)) fail(`${what}: bad stride/pad`);
  const ho = Math.floor((h + pt + pb - kh) / sh) + 1;
  const wo = Math.floor((wd + pl + pr - kw) / sw) + 1;
  if (ho < 1 || wo < 1) fail(`${what}: kernel ${kh}x${kw} larger than padded input ${fmt(x)}`);
  return { n, c, h, w: wd, o, cg, og: o / g, kh, kw, ho, wo };
}

/** conv2d(x [N,C,H,W], w [O,C/G,kh,kw]) → [N,O,Ho,Wo], zero padding, cross-correlation (no kernel flip). */
export function conv2d(x: Tensor, w: Tensor, a: ConvAttrs): Tensor {
  const d = convDims(x.shape, w.shape, a, "conv2d");
  const [sh, sw] = a.stride, [pt, pl] = a.pad;
  const out = new Float64Array(d.n * d.o * d.ho * d.wo);
  let q = 0;
  for (let n = 0; n < d.n; n++) {
    for (let o = 0; o < d.o; o++) {
      const c0 = Math.floor(o / d.og) * d.cg;
      for (let oy = 0; oy < d.ho; oy++) {
        for (let ox = 0; ox < d.wo; ox++, q++) {
          let acc = 0;
          for (let c = 0; c < d.cg; c++) {
            for (let ky = 0; ky < d.kh; ky++) {
              const iy = oy * sh - pt + ky;
              if (iy < 0 || iy >= d.h) continue;
              for (let kx = 0; kx < d.kw; kx++) {
                const ix = ox * sw - pl + kx;
                if (ix < 0 || ix >= d.w) continue;
                acc += x.data[((n * d.c + c0 + c) * d.h + iy) * d.w + ix] *
                  w.data[((o * d.cg + c) * d.kh + ky) * d.kw + kx];
              }
            }
          }
          out[q] = acc;
        }
      }
    }
  }
  return { data: out, shape: [d.n, d.o, d.ho, d.wo] };
}

/** The adjoint of conv2d with respect to x: gy [N,O,Ho,Wo], w → [N,C,H,W] = `xShape`. */
export function conv2dGradInput(gy: Tensor, w: Tensor, a: ConvAttrs, xShape: readonly number[]): Tensor {
  const d = convDims(xShape, w.shape, a, "conv2d_grad_input");
  const want = [d.n, d.o, d.ho, d.wo];
  if (!sameShape(gy.shape, want)) fail(`conv2d_grad_input: gy is ${fmt(gy.shape)}, expected ${fmt(want)}`);
  const [sh, sw] = a.stride, [pt, pl] = a.pad;
  const out = new Float64Array(size(xShape));
  let q = 0;
  for (let n = 0; n < d.n; n++) {
    for (let ci = 0; ci < d.c; ci++) {
      const g = Math.floor(ci / d.cg), c = ci % d.cg;
      for (let iy = 0; iy < d.h; iy++) {
        for (let ix = 0; ix < d.w; ix++, q++) {
          // Input (iy, ix) meets kernel tap (ky, kx) at output oy = (iy + pt − ky) / sh when that divides exactly.
          let acc = 0;
          for (let ky = 0; ky < d.kh; ky++) {
            const ty = iy + pt - ky;
            if (ty < 0 || ty % sh !== 0 || ty / sh >= d.ho) continue;
            const oy = ty / sh;
            for (let kx = 0; kx < d.kw; kx++) {
              const tx = ix + pl - kx;
              if (tx < 0 || tx % sw !== 0 || tx / sw >= d.wo) continue;
              const ox = tx / sw;
              for (let o = g * d.og; o < (g + 1) * d.og; o++) {
                acc += gy.data[((n * d.o + o) * d.ho + oy) * d.wo + ox] *
                  w.data[((o * d.cg + c) * d.kh + ky) * d.kw + kx];
              }
            }
          }
          out[q] = acc;
        }
      }
    }
  }
  return { data: out, shape: xShape };
}

/** The adjoint of conv2d with respect to w: x [N,C,H,W], gy [N,O,Ho,Wo] → [O,C/G,kh,kw] = `wShape`. */
export function conv2dGradWeight(x: Tensor, gy: Tensor, a: ConvAttrs, wShape: readonly number[]): Tensor {
  const d = convDims(x.shape, wShape, a, "conv2d_grad_weight");
  const want = [d.n, d.o, d.ho, d.wo];
  if (!sameShape(gy.shape, want)) fail(`conv2d_grad_weight: gy is ${fmt(gy.shape)}, expected ${fmt(want)}`);
  const [sh, sw] = a.stride, [pt, pl] = a.pad;
  const out = new Float64Array(size(wShape));
  let q = 0;
  for (let o = 0; o < d.o; o++) {
    const c0 = Math.floor(o / d.og) * d.cg;
    for (let c = 0; c < d.cg; c++) {
      for (let ky = 0; ky < d.kh; ky++) {
        for (let kx = 0; kx < d.kw; kx++, q++) {
          let acc = 0;
          for (let n = 0; n < d.n; n++) {
            for (let oy = 0; oy < d.ho; oy++) {
              const iy = oy * sh - pt + ky;
              if (iy < 0 || iy >= d.h) continue;
              for (let ox = 0; ox < d.wo; ox++) {
                const ix = ox * sw - pl + kx;
                if (ix < 0 || ix >= d.w) continue;
                acc += x.data[((n * d.c + c0 + c) * d.h + iy) * d.w + ix] *
                  gy.data[((n * d.o + o) * d.ho + oy) * d.wo + ox];
              }
            }
          }
          out[q] = acc;
        }
      }
    }
  }
  return { data: out, shape: wShape };
}

// ---------------------------------------------------------------------------------------------------------------------
// Layout

/** Row-major reshape; the data is shared, which is safe because no kernel writes to its operands. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  if (size(shape) !== x.data.length) fail(`reshape: cannot reshape ${fmt(x.shape)} to ${fmt(shape)}`);
  return { data: x.data, shape };
}

/** Output axis i is input axis perm[i]. */
export function transpose(x: Tensor, perm: readonly number[]): Tensor {
  const r = x.shape.length;
  if (perm.length !== r || [...perm].sort((p, q) => p - q).some((p, i) => p !== i)) {
    fail(`transpose: perm ${fmt(perm)} is not a permutation of rank ${r}`);
  }
  const s = strides(x.shape);
  const shape = perm.map((p) => x.shape[p]);
  const map = offsets(shape, perm.map((p) => s[p]));
  const out = new Float64Array(map.length);
  for (let i = 0; i < map.length; i++) out[i] = x.data[map[i]];
  return { data: out, shape };
}

/** `x[starts[0]:ends[0], …]` with step 1; bounds are normalised like Python slices (negative counts from the end). */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[]): Tensor {
  const r = x.shape.length;
  if (starts.length !== r || ends.length !== r) fail(`slice: starts/ends must have rank ${r}`);
  const norm = (v: number, d: number) => Math.min(d, Math.max(0, v < 0 ? v + d : v));
  const lo = x.shape.map((d, i) => norm(starts[i], d));
  const shape = x.shape.map((d, i) => Math.max(0, norm(ends[i], d) - lo[i]));
  const s = strides(x.shape);
  const map = offsets(shape, s, lo.reduce((acc, l, i) => acc + l * s[i], 0));
  const out = new Float64Array(map.length);
  for (let i = 0; i < map.length; i++) out[i] = x.data[map[i]];
  return { data: out, shape };
}

/** Zero padding of `before[i]` and `after[i]` elements on each axis (non-negative). */
export function pad(x: Tensor, before: readonly number[], after: readonly number[]): Tensor {
  const r = x.shape.length;
  if (before.length !== r || after.length !== r || [...before, ...after].some((p) => p < 0)) {
    fail(`pad: before/after must be non-negative with rank ${r}`);
  }
  const shape = x.shape.map((d, i) => d + before[i] + after[i]);
  const s = strides(shape);
  // Scatter: input element at idx goes to output idx + before.
  const map = offsets(x.shape, s, before.reduce((acc, b, i) => acc + b * s[i], 0));
  const out = new Float64Array(size(shape));
  for (let i = 0; i < map.length; i++) out[map[i]] = x.data[i];
  return { data: out, shape };
}

/** Joins tensors along `axis`; all other dimensions must match. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) fail("concat of nothing");
  const r = xs[0].shape.length;
  if (!Number.isInteger(axis) || axis < 0 || axis >= r) fail(`concat: axis ${axis} out of range for rank ${r}`);
  for (const t of xs) {
    if (t.shape.length !== r || t.shape.some((d, i) => i !== axis && d !== xs[0].shape[i])) {
      fail(`concat: shapes ${xs.map((u) => fmt(u.shape)).join(", ")} differ off axis ${axis}`);
    }
  }
  const shape = [...xs[0].shape];
  shape[axis] = xs.reduce((acc, t) => acc + t.shape[axis], 0);
  const outer = size(shape.slice(0, axis));
  const out = new Float64Array(size(shape));
  let q = 0;
  for (let i = 0; i < outer; i++) {
    for (const t of xs) {
      const chunk = size(t.shape.slice(axis));
      out.set(t.data.subarray(i * chunk, (i + 1) * chunk), q);
      q += chunk;
    }
  }
  return { data: out, shape };
}

/** numpy `broadcast_to(x, shape)`. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  if (!sameShape(broadcastShapes([x.shape, shape]), shape)) {
    fail(`expand: cannot broadcast ${fmt(x.shape)} to ${fmt(shape)}`);
  }
  return { data: broadcastTo(x, shape), shape };
}

/** numpy `take(x, indices, axis)`; negative indices count from the end, anything else out of range throws. */
export function gather(x: Tensor, indices: Tensor, axis: number): Tensor {
  const r = x.shape.length;
  if (!Number.isInteger(axis) || axis < 0 || axis >= r) fail(`gather: axis ${axis} out of range for rank ${r}`);
  const dim = x.shape[axis];
  const outer = size(x.shape.slice(0, axis));
  const inner = size(x.shape.slice(axis + 1));
  const idx = indices.data;
  const out = new Float64Array(outer * idx.length * inner);
  for (let j = 0; j < idx.length; j++) {
    const v = idx[j];
    if (!Number.isInteger(v) || v < -dim || v >= dim) fail(`gather: index ${v} out of range for axis of size ${dim}`);
  }
  let q = 0;
  for (let i = 0; i < outer; i++) {
    for (let j = 0; j < idx.length; j++) {
      const k = idx[j] < 0 ? idx[j] + dim : idx[j];
      const src = (i * dim + k) * inner;
      out.set(x.data.subarray(src, src + inner), q);
      q += inner;
    }
  }
  return { data: out, shape: [...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)] };
}
