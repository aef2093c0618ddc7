/**
 * Differentiable augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"),
 * applied to real and generated images alike before a discriminator, so that it cannot win by memorising a small
 * training set (the emoji set has ~3,400 images) while the generator still gets gradients through the augmentation.
 * Projected GAN, on whose discriminator StyleGAN-T's (and so ADD's) builds, trains with it.
 *
 * Every transform is written in engine primitives with per-example randomness drawn by the caller, so it is traced
 * into the step graph and differentiates like any other op. Images are NCHW in [-1, 1].
 *
 * @module
 */
import { add, equal, less, mean, mul, sub } from "../engine/math.ts";
import { cast, matmul, reshape, transpose } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";

/** The transforms, in the order they are applied. */
export const AUGMENTS = ["color", "translation", "cutout"] as const;
/** One transform. */
export type Augment = typeof AUGMENTS[number];

/** Per-example uniform [0, 1) draws of `shape` (the stage's counter-based generator). */
export type UniformSource = (tag: string, shape: number[]) => Tensor;

/**
 * Colour: brightness x + (u − ½), saturation m_c + (x − m_c)·2u about the per-pixel channel mean, contrast
 * m + (x − m)(u + ½) about the image mean, each u per example (DiffAugment's `color`).
 */
function color(x: Tensor, u: UniformSource): Tensor {
  const b = x.shape[0];
  const r = (tag: string) => u(tag, [b, 1, 1, 1]);
  let y = add(x, sub(r("brightness"), 0.5));
  const mc = mean(y, 1, true);
  y = add(mc, mul(sub(y, mc), mul(r("saturation"), 2)));
  const m = mean(y, [1, 2, 3], true);
  return add(m, mul(sub(y, m), add(r("contrast"), 0.5)));
}

/**
 * An integer shift per example as a one-hot matrix [B, 1, n, n]: row i picks source i + s, s uniform in
 * [−r, r]; rows whose source falls outside are zero (zero padding, as in DiffAugment's `translation`).
 */
function shiftMatrix(b: number, n: number, r: number, uniform: Tensor): Tensor {
  const tr = uniform.trace;
  // s = ⌊u (2r + 1)⌋ − r; the cast truncates, which is the floor for the non-negative product.
  const s = sub(cast(cast(mul(uniform, 2 * r + 1), "i32"), "f32"), r); // [B]
  const offsets = tr.constant(Array.from({ length: n * n }, (_, k) => (k % n) - Math.floor(k / n)), [1, 1, n, n]);
  return cast(equal(offsets, reshape(s, [b, 1, 1, 1])), "f32");
}

/** Translation by up to `ratio` of the size in each direction, zero-filled: S_y · x · S_xᵀ per example. */
function translation(x: Tensor, u: UniformSource, ratio = 0.125): Tensor {
  const [b, , h, w] = x.shape;
  const sy = shiftMatrix(b, h, Math.round(h * ratio), reshape(u("shift_y", [b]), [b]));
  const sx = shiftMatrix(b, w, Math.round(w * ratio), reshape(u("shift_x", [b]), [b]));
  // (x S_xᵀ)[.., i, j] = x[.., i, j + s_x]; S_xᵀ = transpose of the one-hot rows.
  const rows = matmul(sy, x); // [B, C, H, W]
  return matmul(rows, transpose(sx, [0, 1, 3, 2]));
}

/** Cutout: one zeroed square of side `ratio`·size per example, centred uniformly (DiffAugment's `cutout`). */
function cutout(x: Tensor, u: UniformSource, ratio = 0.5): Tensor {
  const [b, , h, w] = x.shape;
  const tr = x.trace;
  const half = (n: number) => Math.round(n * ratio) / 2;
  const cy = reshape(mul(u("cut_y", [b]), h), [b, 1, 1, 1]), cx = reshape(mul(u("cut_x", [b]), w), [b, 1, 1, 1]);
  const ys = tr.constant(Array.from({ length: h }, (_, i) => i + 0.5), [1, 1, h, 1]);
  const xs = tr.constant(Array.from({ length: w }, (_, j) => j + 0.5), [1, 1, 1, w]);
  const inside = (p: Tensor, c: Tensor, hl: number) => cast(less(mul(sub(p, c), sub(p, c)), hl * hl), "f32");
  const box = mul(inside(ys, cy, half(h)), inside(xs, cx, half(w))); // [B, 1, H, W]
  return mul(x, sub(1, box));
}

/** Applies `augments` (in AUGMENTS order) to images x [B, C, H, W], drawing randomness from `u`. */
export function diffAugment(x: Tensor, augments: readonly Augment[], u: UniformSource): Tensor {
  let y = x;
  if (augments.includes("color")) y = color(y, u);
  if (augments.includes("translation")) y = translation(y, u);
  if (augments.includes("cutout")) y = cutout(y, u);
  return y;
}
