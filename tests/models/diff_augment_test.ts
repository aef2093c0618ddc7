// DiffAugment (models/diff_augment.ts): each transform against plain loops on the float64 reference with fixed draws,
// the gradient through all three against finite differences, and the discriminator stage's wiring of it.
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { mean, mul } from "../../engine/math.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";
import { type Augment, diffAugment } from "../../models/diff_augment.ts";
import { checkGrad, lcg, randn } from "../helpers/grad_check.ts";

const B = 3, C = 2, H = 8, W = 8, N = B * C * H * W;
const idx = (b: number, c: number, y: number, x: number) => ((b * C + c) * H + y) * W + x;

/** Draws per tag: fixed per-example values chosen to exercise shifts of both signs and a box at the border. */
const DRAWS: Record<string, number[]> = {
  brightness: [0.1, 0.9, 0.5],
  saturation: [0.2, 0.75, 1],
  contrast: [0.05, 0.6, 0.99],
  shift_y: [0.0, 0.5, 0.99], // r = 1: s = −1, 0, +1
  shift_x: [0.7, 0.1, 0.4], // s = +1, −1, 0
  cut_y: [0.5, 0.05, 0.9],
  cut_x: [0.3, 0.95, 0.5],
};

function run(x: number[], augments: Augment[]): Float64Array {
  const tr = new Trace();
  const feeds: Record<string, { data: number[]; shape: number[] }> = { x: { data: x, shape: [B, C, H, W] } };
  const u = (tag: string, shape: number[]): Tensor => {
    feeds[tag] = { data: DRAWS[tag], shape };
    return tr.input(tag, shape);
  };
  const y = diffAugment(tr.input("x", [B, C, H, W]), augments, u);
  return evaluate(tr.build({ y }), feeds).y;
}

function colorRef(x: number[]): number[] {
  const y = x.slice();
  for (let b = 0; b < B; b++) {
    const at = (c: number, i: number) => b * C * H * W + c * H * W + i;
    for (let c = 0; c < C; c++) for (let i = 0; i < H * W; i++) y[at(c, i)] += DRAWS.brightness[b] - 0.5;
    for (let i = 0; i < H * W; i++) {
      let m = 0;
      for (let c = 0; c < C; c++) m += y[at(c, i)] / C;
      for (let c = 0; c < C; c++) y[at(c, i)] = m + (y[at(c, i)] - m) * 2 * DRAWS.saturation[b];
    }
    let m = 0;
    for (let c = 0; c < C; c++) for (let i = 0; i < H * W; i++) m += y[at(c, i)] / (C * H * W);
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < H * W; i++) y[at(c, i)] = m + (y[at(c, i)] - m) * (DRAWS.contrast[b] + 0.5);
    }
  }
  return y;
}

function translationRef(x: number[]): number[] {
  const y = new Array(N).fill(0);
  for (let b = 0; b < B; b++) {
    const sy = Math.floor(DRAWS.shift_y[b] * 3) - 1, sx = Math.floor(DRAWS.shift_x[b] * 3) - 1;
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < H; i++) {
        for (let j = 0; j < W; j++) {
          const si = i + sy, sj = j + sx;
          if (si >= 0 && si < H && sj >= 0 && sj < W) y[idx(b, c, i, j)] = x[idx(b, c, si, sj)];
        }
      }
    }
  }
  return y;
}

function cutoutRef(x: number[]): number[] {
  const y = x.slice();
  for (let b = 0; b < B; b++) {
    const cy = DRAWS.cut_y[b] * H, cx = DRAWS.cut_x[b] * W;
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < H; i++) {
        for (let j = 0; j < W; j++) {
          if (Math.abs(i + 0.5 - cy) < 2 && Math.abs(j + 0.5 - cx) < 2) y[idx(b, c, i, j)] = 0;
        }
      }
    }
  }
  return y;
}

function assertClose(got: ArrayLike<number>, want: number[], what: string) {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    assert.ok(Math.abs(got[i] - want[i]) < 1e-6, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

Deno.test("diffAugment: color, translation and cutout each match plain loops; composed in order", () => {
  const x = Array.from(randn(N, lcg(1)));
  assertClose(run(x, ["color"]), colorRef(x), "color");
  const t = run(x, ["translation"]);
  assertClose(t, translationRef(x), "translation");
  assert.ok(t.some((v, i) => v !== x[i]), "translation moved something");
  const c = run(x, ["cutout"]);
  assertClose(c, cutoutRef(x), "cutout");
  const zeroed = c.filter((v) => v === 0).length;
  assert.ok(zeroed >= C * 4 && zeroed < N / 2, `cutout zeroed ${zeroed}`);
  assertClose(run(x, ["cutout", "color", "translation"]), cutoutRef(translationRef(colorRef(x))), "all three");
});

Deno.test("diffAugment: gradient through all three transforms vs finite differences", () => {
  const res = checkGrad("diffAugment", [{ shape: [B, C, H, W], data: randn(N, lcg(2)) }], ([x]) => {
    const tr = x.trace;
    const u = (tag: string, shape: number[]) => tr.constant(DRAWS[tag], shape);
    const w = tr.constant(Array.from({ length: N }, (_, i) => Math.cos(i)), [B, C, H, W]);
    return mean(mul(diffAugment(x, ["color", "translation", "cutout"], u), w));
  }, { samples: 40, seed: 5 });
  assert.ok(res.checked >= 40, `${res.checked} coordinates checked`);
});
