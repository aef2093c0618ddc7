/**
 * Tracing one stage alone on tiny tensors: a trace whose inputs carry their data, a fake TraceContext, and float64
 * comparisons. Used by the loss tests (add_losses_test.ts, dmd_test.ts).
 */
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";
import type { TraceContext } from "../../pipeline/stage.ts";

type Feed = { data: number[]; shape: number[] };

/** A trace plus the host values of its inputs, so a test declares an input and its data in one place. */
export class Bench {
  readonly tr = new Trace();
  readonly feeds: Record<string, Feed> = {};
  input(name: string, shape: number[], data: number[], dtype: "f32" | "i32" = "f32"): Tensor {
    assert.equal(data.length, shape.reduce((a, b) => a * b, 1), `data of ${name}`);
    this.feeds[name] = { data, shape };
    return this.tr.input(name, shape, dtype);
  }
  run(outputs: Record<string, Tensor>): Record<string, Float64Array> {
    return evaluate(this.tr.build(outputs), this.feeds);
  }
}

/**
 * A TraceContext for tracing one stage alone: `apply` calls the given functions, `normal`/`uniform` become inputs
 * `rand.<tag>` fed from `draws`, metrics are collected.
 */
export function fakeCtx(
  tr: Trace,
  models: Record<string, (ins: Record<string, Tensor>) => Record<string, Tensor>>,
  draw: (tag: string, shape: number[]) => Tensor = () => assert.fail("no random draws expected"),
): { ctx: TraceContext; metrics: Record<string, Tensor> } {
  const metrics: Record<string, Tensor> = {};
  const ctx: TraceContext = {
    stage: "under_test",
    step: tr.scalar(1),
    model: (m) => assert.fail(`model("${m}") not expected`),
    apply: (m, ins) => (models[m] ?? assert.fail(`apply("${m}") not expected`))(ins),
    normal: draw,
    uniform: draw,
    metric: (n, v) => void (metrics[n] = v),
  };
  return { ctx, metrics };
}

export const drawsFrom = (b: Bench, draws: Record<string, number[]>) => (tag: string, shape: number[]) =>
  b.input(`rand.${tag}`, shape, draws[tag] ?? assert.fail(`unexpected draw "${tag}"`));

// Graph constants (schedule tables, 1/n of means, the leaky-ReLU slope) are float32 even on the float64 reference, so
// values that go through them agree with the loops here to ~1e-7, not 1e-15; the errors these tests look for (a
// wrong weighting, a missing term) are of order 1.
export const TOL = 1e-6;

export function close(got: number, want: number, tol: number, what: string) {
  const err = Math.abs(got - want) / Math.max(1, Math.abs(want));
  assert.ok(err <= tol, `${what}: got ${got}, expected ${want} (rel err ${err.toExponential(2)})`);
}
export function allClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string) {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) close(got[i], want[i], tol, `${what}[${i}]`);
}
