/**
 * `toy_function` dataset: x uniform in [lo, hi]^dim, y = f(x) for a named function — a small regression task for
 * tests and examples.
 *
 * @module
 */
import { z } from "zod";
import { Rng } from "../engine/rng.ts";
import type { DatasetDef } from "../pipeline/stage.ts";

const FUNCTIONS: Record<string, (x: Float32Array) => number> = {
  /** sin of the sum of coordinates */
  sin: (x) => Math.sin(x.reduce((a, b) => a + b, 0)),
  /** product of cosines */
  cos_product: (x) => x.reduce((a, b) => a * Math.cos(b), 1),
  /** squared norm over dim */
  norm2: (x) => x.reduce((a, b) => a + b * b, 0) / x.length,
};

const Params = z.strictObject({
  fn: z.enum(["sin", "cos_product", "norm2"]).default("sin"),
  dim: z.number().int().positive().default(1),
  size: z.number().int().positive().default(1024),
  lo: z.number().default(-Math.PI),
  hi: z.number().default(Math.PI),
});

/** The toy_function dataset kind. */
export const toyFunction: DatasetDef<z.output<typeof Params>> = {
  kind: "toy_function",
  doc: "x uniform in [lo, hi]^dim, y = fn(x)",
  params: Params,
  fields: (p) => ({ x: { dtype: "f32", shape: [p.dim] }, y: { dtype: "f32", shape: [1] } }),
  load: (p, seed) => {
    const u = new Rng(seed).fold("toy_function").uniform(p.size * p.dim);
    const x = u.map((v) => p.lo + (p.hi - p.lo) * v);
    const y = new Float32Array(p.size);
    for (let i = 0; i < p.size; i++) y[i] = FUNCTIONS[p.fn](x.subarray(i * p.dim, (i + 1) * p.dim));
    return Promise.resolve({
      size: p.size,
      batch: (idx) => {
        const bx = new Float32Array(idx.length * p.dim), by = new Float32Array(idx.length);
        for (let i = 0; i < idx.length; i++) {
          bx.set(x.subarray(idx[i] * p.dim, (idx[i] + 1) * p.dim), i * p.dim);
          by[i] = y[idx[i]];
        }
        return { x: bx, y: by };
      },
    });
  },
};
