// Plain helpers for the reference interpreter's tests (no std library: plain asserts and small graphs).
import type { DType, Node } from "../../engine/ir.ts";
import { evaluate } from "../../engine/executors/reference.ts";

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-12, msg = ""): void {
  const a = Array.from(actual), e = Array.from(expected);
  if (a.length !== e.length) throw new Error(`${msg} length ${a.length} !== ${e.length}: ${a} vs ${e}`);
  for (let i = 0; i < a.length; i++) {
    const ok = Number.isNaN(e[i]) ? Number.isNaN(a[i]) : a[i] === e[i] || Math.abs(a[i] - e[i]) <= tol;
    if (!ok) {
      throw new Error(`${msg} mismatch at ${i}: got ${a[i]}, expected ${e[i]}\n  got      ${a}\n  expected ${e}`);
    }
  }
}

export function assertEq<T>(actual: T, expected: T, msg = ""): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${msg} got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
  }
}

export async function assertThrows(f: () => unknown, includes: string): Promise<void> {
  try {
    await f();
  } catch (e) {
    const m = (e as Error).message;
    if (!m.includes(includes)) throw new Error(`error "${m}" does not mention "${includes}"`);
    return;
  }
  throw new Error(`expected an error mentioning "${includes}"`);
}

export const inp = (name: string, shape: number[], dtype: DType = "f32"): Node => ({
  op: "input",
  inputs: [],
  attrs: { name },
  shape,
  dtype,
});

export type Feed = Record<string, { data: ArrayLike<number>; shape: number[] }>;

/** Evaluates `nodes` and returns the value of the last node. */
export function last(nodes: Node[], feed: Feed): Float64Array {
  return evaluate({ nodes, outputs: [{ name: "y", node: nodes.length - 1 }] }, feed).y;
}

/** A graph applying one no-attr op to inputs a (and b, c) with the given shapes. */
export function op(
  o: Node["op"],
  shapes: number[][],
  outShape: number[],
  dtype: DType = "f32",
  dtypes: DType[] = [],
): Node[] {
  const names = ["a", "b", "c"];
  const nodes: Node[] = shapes.map((s, i) => inp(names[i], s, dtypes[i] ?? "f32"));
  nodes.push({ op: o, inputs: shapes.map((_, i) => i), attrs: {}, shape: outShape, dtype } as Node);
  return nodes;
}

export function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1;
  };
}

export const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => i + from);
