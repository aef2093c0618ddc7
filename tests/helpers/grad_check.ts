/**
 * Finite-difference gradient checks in float64 on the reference executor.
 *
 * `checkGrad` traces `f(xs)`, reduces it to a scalar with random weights, and compares the traced gradient with
 * central differences at a few random coordinates. With `order: 2` it also checks the gradient of
 * ⟨∇f, v⟩ (a gradient of a gradient, as R1 needs) the same way.
 */
import { evaluate } from "../../engine/executors/reference.ts";
import { vjp } from "../../engine/grad.ts";
import { add, mul } from "../../engine/math.ts";
import { sum } from "../../engine/ops.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";
import type { DType } from "../../engine/ir.ts";

/** One input of a checked function. */
export interface InputSpec {
  shape: number[];
  /** Values; random normal when omitted. */
  data?: number[];
  dtype?: DType;
  /** Inputs with `fixed` (e.g. integer indices) are not differentiated. */
  fixed?: boolean;
  /** Draw positive values (for log, sqrt, pow bases). */
  positive?: boolean;
}

/** A small deterministic generator for test data (not the engine's RNG, so the two stay independent). */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Standard-normal samples from `lcg`. */
export function randn(n: number, rand: () => number): number[] {
  const out: number[] = [];
  while (out.length < n) {
    const u = Math.max(rand(), 1e-12), v = rand();
    out.push(Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v));
  }
  return out;
}

/** The largest mismatch found, for messages. */
export interface CheckResult {
  worst: number;
  checked: number;
}

/**
 * Checks first (and optionally second) derivatives of `f` against central differences.
 * Throws with the input, coordinate, analytic and numeric values on the first mismatch.
 */
export function checkGrad(
  name: string,
  specs: InputSpec[],
  f: (xs: Tensor[]) => Tensor,
  opts: { order?: 1 | 2; seed?: number; samples?: number; eps?: number; tol?: number } = {},
): CheckResult {
  const rand = lcg(opts.seed ?? 1234);
  const eps = opts.eps ?? 1e-5, tol = opts.tol ?? 2e-5, samples = opts.samples ?? 5;
  const data = specs.map((s) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.data) return s.data.slice();
    const d = randn(n, rand);
    return s.positive ? d.map((v) => Math.abs(v) + 0.5) : d;
  });
  const tr = new Trace();
  const xs = specs.map((s, i) => tr.input(`x${i}`, s.shape, s.dtype ?? "f32"));
  const y = f(xs);
  const r = tr.input("r", y.shape);
  const rData = randn(y.size, rand);
  const loss = sum(mul(y, r));
  const diff = specs.map((s, i) => (s.fixed || (s.dtype ?? "f32") !== "f32") ? -1 : i).filter((i) => i >= 0);
  const g1 = vjp(loss, diff.map((i) => xs[i]));
  const outputs: Record<string, Tensor> = { loss };
  g1.forEach((g, k) => outputs[`g${k}`] = g);
  const vData = diff.map((i) => randn(xs[i].size, rand));
  if (opts.order === 2) {
    const vs = diff.map((i, k) => tr.input(`v${k}`, xs[i].shape));
    const h = g1.map((g, k) => sum(mul(g, vs[k]))).reduce((a, b) => add(a, b));
    outputs.h = h;
    vjp(h, diff.map((i) => xs[i])).forEach((g, k) => outputs[`h${k}`] = g);
  }
  const graph = tr.build(outputs);
  const run = (d: number[][]) => {
    const feeds: Record<string, { data: number[]; shape: number[] }> = { r: { data: rData, shape: [...y.shape] } };
    specs.forEach((s, i) => feeds[`x${i}`] = { data: d[i], shape: s.shape });
    if (opts.order === 2) diff.forEach((i, k) => feeds[`v${k}`] = { data: vData[k], shape: specs[i].shape });
    return evaluate(graph, feeds);
  };
  const base = run(data);
  let worst = 0, checked = 0;
  const levels: [string, string][] = [["loss", "g"]];
  if (opts.order === 2) levels.push(["h", "h"]);
  for (const [scalar, prefix] of levels) {
    diff.forEach((i, k) => {
      const n = data[i].length;
      const coords = n <= samples
        ? [...Array(n).keys()]
        : Array.from({ length: samples }, () => Math.floor(rand() * n));
      for (const c of coords) {
        const plus = data.map((d) => d.slice()), minus = data.map((d) => d.slice());
        plus[i][c] += eps;
        minus[i][c] -= eps;
        const num = (run(plus)[scalar][0] - run(minus)[scalar][0]) / (2 * eps);
        const ana = base[`${prefix}${k}`][c];
        const err = Math.abs(num - ana) / Math.max(1, Math.abs(num));
        worst = Math.max(worst, err);
        checked++;
        if (!(err <= tol)) {
          throw new Error(
            `${name}: ${scalar === "h" ? "second" : "first"}-order gradient of x${i}[${c}]: ` +
              `analytic ${ana}, finite difference ${num} (rel err ${err.toExponential(2)})`,
          );
        }
      }
    });
  }
  return { worst, checked };
}
