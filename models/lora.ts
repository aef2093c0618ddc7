/**
 * Low-rank adaptation (LoRA; Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a weight W of a
 * frozen base model is used as W' = W + (alpha/rank)·B·A, and only A and B are trained. A weight of shape
 * [out, ...rest] is factored through its first axis, which covers linear weights [out, in] and conv weights
 * [out, in, kh, kw] alike:
 *
 * - A is [rank, ...rest] (for a conv [rank, in, kh, kw]: a rank-channel conv with W's kernel),
 * - B is [out, rank] for a linear weight, [out, rank, 1, 1] for a conv (a 1×1 conv after A's),
 * - the delta is reshape(B₂·A₂, W's shape), with B₂ = [out, rank] and A₂ = [rank, ∏rest].
 *
 * B starts at zero, so the adapted model starts exactly equal to its base; A starts small and random (Kaiming-uniform
 * over A's fan-in, as PEFT does), so that B's first gradient is not zero. The same arithmetic is traced (training) and
 * done on the host (merging for export and sampling), so any model kind gets LoRA without code of its own.
 *
 * @module
 */
import { add, mul } from "../engine/math.ts";
import { matmul, reshape } from "../engine/ops.ts";
import type { Rng } from "../engine/rng.ts";
import type { Tensor } from "../engine/tensor.ts";

/** What a model's adapters are: their rank, their scale's numerator and the weights they adapt. */
export interface LoraSpec {
  /** Inner size of each B·A. */
  rank: number;
  /** The delta is scaled by alpha/rank. */
  alpha: number;
  /** Adapted weight path → its shape (rank 2 or 4), in the base model's order. */
  targets: Record<string, number[]>;
}

/** The store names of a weight's adapters, beside its own name as PEFT writes them. */
export const loraA = (path: string): string => `${path}.lora_A`;
/** B's store name; see `loraA`. */
export const loraB = (path: string): string => `${path}.lora_B`;

/** The weights of `shapes` that `patterns` adapt: paths any pattern is found in, of rank 2 or 4 (not biases, norms). */
export function loraTargets(shapes: Record<string, number[]>, patterns: RegExp[]): Record<string, number[]> {
  return Object.fromEntries(
    Object.entries(shapes).filter(([path, s]) => adaptable(s) && patterns.some((p) => p.test(path))),
  );
}

/** Whether a weight of this shape can take adapters: a linear or a conv weight. */
export const adaptable = (shape: readonly number[]): boolean => shape.length === 2 || shape.length === 4;

/** Each adapter's shape, A then B per target: what a LoRA model stores and trains instead of its weights. */
export function adapterShapes(spec: LoraSpec): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [path, [o, ...rest]] of Object.entries(spec.targets)) {
    out[loraA(path)] = [spec.rank, ...rest];
    out[loraB(path)] = rest.length === 1 ? [o, spec.rank] : [o, spec.rank, 1, 1];
  }
  return out;
}

/** Fresh adapters: A ~ U(±1/√fan-in), one stream per weight (adding a target leaves the others' draws), B = 0. */
export function initAdapters(spec: LoraSpec, rng: Rng): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [path, shape] of Object.entries(adapterShapes(spec))) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (path.endsWith(".lora_B")) {
      out[path] = new Float32Array(n);
      continue;
    }
    const bound = 1 / Math.sqrt(n / spec.rank);
    const u = rng.fold(path).uniform(n);
    out[path] = u.map((x) => (2 * x - 1) * bound);
  }
  return out;
}

/** W' = W + (alpha/rank)·B·A of one weight, traced; see the module doc for the shapes. */
export function loraWeight(w: Tensor, a: Tensor, b: Tensor, scale: number): Tensor {
  const [o, ...rest] = w.shape, r = a.shape[0];
  const ba = matmul(reshape(b, [o, r]), reshape(a, [r, rest.reduce((x, y) => x * y, 1)]));
  return add(w, reshape(scale === 1 ? ba : mul(ba, scale), w.shape));
}

/**
 * A LoRA model's weights as its forward pass sees them, traced: the base's tensors, with each target replaced by its
 * adapted weight. Weights not targeted are the base's own tensors, so the graph reads them once for both models.
 */
export function mergeTraced(
  base: Record<string, Tensor>,
  adapters: Record<string, Tensor>,
  spec: LoraSpec,
): Record<string, Tensor> {
  const out = { ...base };
  for (const path of Object.keys(spec.targets)) {
    out[path] = loraWeight(base[path], adapters[loraA(path)], adapters[loraB(path)], spec.alpha / spec.rank);
  }
  return out;
}

/** `mergeTraced` on the host: the full weights under the model's own names (export, sampling, reports). */
export function mergeHost(
  base: Record<string, Float32Array>,
  adapters: Record<string, Float32Array>,
  spec: LoraSpec,
): Record<string, Float32Array> {
  const out = { ...base };
  const scale = spec.alpha / spec.rank, r = spec.rank;
  for (const [path, [o, ...rest]] of Object.entries(spec.targets)) {
    const w = base[path], a = adapters[loraA(path)], b = adapters[loraB(path)];
    const n = rest.reduce((x, y) => x * y, 1);
    if (!w || !a || !b || w.length !== o * n || a.length !== r * n || b.length !== o * r) {
      throw new Error(`LoRA weight "${path}": the base weight or its adapters are missing or of the wrong size`);
    }
    const merged = new Float32Array(w.length);
    for (let i = 0; i < o; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let k = 0; k < r; k++) acc += b[i * r + k] * a[k * n + j];
        merged[i * n + j] = w[i * n + j] + scale * acc;
      }
    }
    out[path] = merged;
  }
  return out;
}
