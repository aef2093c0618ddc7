// ADD's loss terms on tiny tensors, each against values computed here with plain loops in float64: the `sum` stage's
// weighting; the discriminator heads (discHead/discCondition) and the add_discriminator stage's hinge losses and R1
// penalty (R1 against finite differences of the plain-loop heads, and its gradient in the heads' parameters — a
// gradient of a gradient — against finite differences with checkGrad). The distillation and add_noise are in
// add_distill_test.ts. Stages are traced with a fake TraceContext
// whose models are small functions and whose random draws are graph inputs fed here, then run on the reference
// executor.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { mean, mul, tanh } from "../../engine/math.ts";
import { avgPool, conv } from "../../engine/nn.ts";
import { reshape } from "../../engine/ops.ts";
import { layoutOf, unpack } from "../../engine/pack.ts";
import type { Tensor, Trace } from "../../engine/tensor.ts";
import { addDiscriminator, type DiscParams, minibatchStd } from "../../models/add_discriminator.ts";
import { addDiscriminatorStage } from "../../stages/add/add_discriminator.ts";
import { weightedSum } from "../../stages/sum.ts";
import { checkGrad, lcg, randn } from "../helpers/grad_check.ts";

import { allClose, Bench, close, fakeCtx, TOL } from "../helpers/stage_bench.ts";

const meanOf = (xs: ArrayLike<number>) => Array.from(xs).reduce((a, b) => a + b, 0) / xs.length;

// ---------------------------------------------------------------------------------------------------------------
// sum

Deno.test("sum: weighted total of the connected inputs; each term logged unweighted under its name", () => {
  const b = new Bench();
  const vals = { a: 1.25, b: -0.5, c: 3, h: 0.75 };
  const ins = Object.fromEntries(Object.entries(vals).map(([k, v]) => [k, b.input(k, [], [v])]));
  const p = weightedSum.params.parse({ weights: { a: 0.5, c: -2, h: 4 }, names: { a: "adv", c: "distill" } });
  const { ctx, metrics } = fakeCtx(b.tr, {});
  const out = weightedSum.trace!(ctx, p, ins);
  const r = b.run({ loss: out.loss, ...metrics });
  close(r.loss[0], 0.5 * 1.25 + 1 * -0.5 + -2 * 3 + 4 * 0.75, 1e-15, "loss");
  assert.deepEqual(Object.keys(metrics).sort(), ["adv", "b", "distill", "h"]);
  assert.deepEqual([r.adv[0], r.b[0], r.distill[0], r.h[0]], [1.25, -0.5, 3, 0.75]);
  assert.throws(() => weightedSum.params.parse({ weights: { i: 1 } }), /i/);
});

Deno.test("sum: a ramped weight moves linearly from `from` at step 1 to `to` at `steps`, then holds; logged", () => {
  for (const [step, want] of [[1, 8], [2, 6.5], [3, 5], [5, 2], [9, 2]]) {
    const b = new Bench();
    const ins = { a: b.input("a", [], [1.5]), c: b.input("c", [], [0.25]) };
    const p = weightedSum.params.parse({
      weights: { a: 0.2, c: { from: 8, to: 2, steps: 5 } },
      names: { c: "regression" },
    });
    const { ctx, metrics } = fakeCtx(b.tr, {});
    ctx.step = b.input("step", [], [step]);
    const out = weightedSum.trace!(ctx, p, ins);
    const r = b.run({ loss: out.loss, ...metrics });
    close(r.regression_weight[0], want, 1e-7, `weight at step ${step}`);
    close(r.loss[0], 0.2 * 1.5 + want * 0.25, 1e-7, `loss at step ${step}`);
    close(r.regression[0], 0.25, 1e-15, "term logged unweighted");
  }
  assert.throws(() => weightedSum.params.parse({ weights: { a: { from: 1, to: 0, steps: 1 } } }), /steps/);
  assert.throws(() => weightedSum.params.parse({ weights: { a: { from: 1, to: 0 } } }), /steps/);
});

// ---------------------------------------------------------------------------------------------------------------
// Discriminator heads: plain loops

type W = Record<string, number[]>;
const lrelu = (v: number) => (v > 0 ? v : 0.2 * v);

/** Head k's logits per example and location: 1×1 conv, lReLU, 3×3 conv (pad 1), lReLU, 1×1 conv, + projection. */
function headMapRef(w: W, k: number, f: ArrayLike<number>, shape: number[], cond: number[][] | null, hidden: number) {
  const [B, C, H, Wd] = shape, HW = H * Wd;
  const g = (n: string) => w[`h${k}.${n}`];
  const out: number[][] = [];
  for (let b = 0; b < B; b++) {
    const h1 = new Float64Array(hidden * HW), h2 = new Float64Array(hidden * HW);
    for (let o = 0; o < hidden; o++) {
      for (let i = 0; i < HW; i++) {
        let s = g("in.b")[o];
        for (let c = 0; c < C; c++) s += g("in.w")[o * C + c] * f[(b * C + c) * HW + i];
        h1[o * HW + i] = lrelu(s);
      }
    }
    for (let o = 0; o < hidden; o++) {
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < Wd; x++) {
          let s = g("mid.b")[o];
          for (let c = 0; c < hidden; c++) {
            for (let dy = 0; dy < 3; dy++) {
              for (let dx = 0; dx < 3; dx++) {
                const yy = y + dy - 1, xx = x + dx - 1;
                if (yy < 0 || yy >= H || xx < 0 || xx >= Wd) continue;
                s += g("mid.w")[((o * hidden + c) * 3 + dy) * 3 + dx] * h1[c * HW + yy * Wd + xx];
              }
            }
          }
          h2[o * HW + y * Wd + x] = lrelu(s);
        }
      }
    }
    const cm: number[] = [];
    if (cond) {
      const cd = cond[b];
      for (let o = 0; o < hidden; o++) {
        let c = g("cmap.b")[o];
        for (let j = 0; j < cd.length; j++) c += g("cmap.w")[o * cd.length + j] * cd[j];
        cm.push(c);
      }
    }
    const map: number[] = [];
    for (let i = 0; i < HW; i++) {
      let s = g("out.b")[0], proj = 0;
      for (let c = 0; c < hidden; c++) s += g("out.w")[c] * h2[c * HW + i];
      for (let o = 0; o < cm.length; o++) proj += h2[o * HW + i] * cm[o];
      map.push(s + proj / Math.sqrt(hidden));
    }
    out.push(map);
  }
  return out;
}

/** One head's logit per example: the mean over locations of `headMapRef`. */
function headRef(w: W, k: number, f: ArrayLike<number>, shape: number[], cond: number[][] | null, hidden: number) {
  return headMapRef(w, k, f, shape, cond, hidden).map(meanOf);
}

/**
 * Random head parameters of every shape the model declares (biases too, so they are exercised); `gain` scales the
 * output and projection layers, for logits on both sides of the hinges.
 */
function randomHeads(p: DiscParams, seed: number, gain = 1): W {
  const rand = lcg(seed), w: W = {};
  for (const [path, shape] of Object.entries(addDiscriminator.shapes(p))) {
    const n = shape.reduce((a, b) => a * b, 1), fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
    const g = /\.(out|cmap)\./.test(path) ? gain : 1;
    w[path] = randn(n, rand).map((v) => g * (path.endsWith(".b") ? 0.3 * v : v / Math.sqrt(fanIn)));
  }
  return w;
}

Deno.test("add_discriminator model: logits of discHead/discCondition match plain loops", () => {
  const featShapes = [[2, 2, 4, 4], [2, 3, 2, 2], [2, 2, 1, 1]];
  for (const [text_dim, image_dim] of [[2, 3], [0, 3], [2, 0], [0, 0]]) {
    const p: DiscParams = {
      channels: featShapes.map((s) => s[1]),
      hidden: 4,
      text_dim,
      image_dim,
      per_location: true,
      mbstd_group: 0,
    };
    const w = randomHeads(p, 7 + text_dim + image_dim), rand = lcg(99);
    const b = new Bench();
    const params = Object.fromEntries(Object.entries(w).map(([k, v]) => [k, b.input(k, [v.length], v)]));
    const shaped = Object.fromEntries(
      Object.entries(addDiscriminator.shapes(p)).map(([k, s]) => [k, reshape(params[k], s)]),
    );
    const fs = featShapes.map((s) => randn(s.reduce((x, y) => x * y, 1), rand));
    const text = randn(2 * 2, rand), image = randn(2 * 3, rand);
    const ins: Record<string, Tensor> = {};
    fs.forEach((f, k) => (ins[`f${k}`] = b.input(`f${k}`, featShapes[k], f)));
    if (text_dim) ins.text = b.input("text", [2, 2], text);
    if (image_dim) ins.image = b.input("image", [2, 3], image);
    const o = addDiscriminator.apply(p, shaped, ins);
    const r = b.run({ logits: o.logits, map0: o.map0, map1: o.map1, map2: o.map2 });
    const cond = [0, 1].map((i) => [
      ...(text_dim ? text.slice(2 * i, 2 * i + 2) : []),
      ...(image_dim ? image.slice(3 * i, 3 * i + 3) : []),
    ]);
    const want: number[] = [0, 0, 0, 0, 0, 0];
    fs.forEach((f, k) => {
      headRef(w, k, f, featShapes[k], text_dim + image_dim ? cond : null, 4).forEach((v, i) => (want[i * 3 + k] = v));
    });
    allClose(r.logits, want, TOL, `logits text_dim=${text_dim} image_dim=${image_dim}`);
    fs.forEach((f, k) => {
      const maps = headMapRef(w, k, f, featShapes[k], text_dim + image_dim ? cond : null, 4).flat();
      allClose(r[`map${k}`], maps, TOL, `map${k} text_dim=${text_dim} image_dim=${image_dim}`);
    });
  }
});

Deno.test("minibatchStd: per-group standard deviation channel vs loops, and its gradient vs finite differences", () => {
  const shape = [6, 2, 2, 3], rand = lcg(17), x = randn(72, rand);
  for (const group of [2, 3, 6]) {
    const b = new Bench();
    const r = b.run({ s: minibatchStd(b.input("x", shape, x), group) });
    const m = 6 / group, want: number[] = [];
    const stdOf = (j: number) => {
      let acc = 0;
      for (let f = 0; f < 12; f++) {
        const v = Array.from({ length: group }, (_, g) => x[(g * m + j) * 12 + f]);
        const mu = meanOf(v);
        acc += Math.sqrt(meanOf(v.map((u) => (u - mu) ** 2)) + 1e-8);
      }
      return acc / 12;
    };
    for (let bb = 0; bb < 6; bb++) for (let i = 0; i < 6; i++) want.push(stdOf(bb % m));
    allClose(r.s, want, TOL, `group ${group}`);
  }
  const res = checkGrad("minibatchStd", [{ shape, data: x }], ([t]) => {
    const w = t.trace.constant(Array.from({ length: 36 }, (_, i) => Math.sin(i)), [6, 1, 2, 3]);
    return mean(mul(minibatchStd(t, 3), w));
  }, { samples: 30, seed: 3 });
  assert.ok(res.checked >= 30, `${res.checked} coordinates checked`);
});

// ---------------------------------------------------------------------------------------------------------------
// The add_discriminator stage on a tiny feature network whose second level is computed from its first, as in
// MobileNetV2: R1 must take each head's gradient in its own input only, not through the later levels.

const W0 = [0.8, -0.5, 0.3, -0.2, 0.6, 0.9]; // [2, 3, 1, 1]
const W1 = [1.1, -0.7, 0.4, 0.9, -0.6, 0.5]; // [3, 2, 1, 1]
const IMG = [2, 3, 4, 4], L0 = [2, 2, 4, 4], L1 = [2, 3, 2, 2];

/** The tiny feature network traced: l0 = tanh(1×1 conv of x), l1 = tanh(1×1 conv of avgpool₂(l0)), pooled = mean l1. */
function featNet(ins: Record<string, Tensor>): Record<string, Tensor> {
  const tr = ins.x.trace;
  const l0 = tanh(conv(ins.x, tr.constant(W0, [2, 3, 1, 1])));
  const l1 = tanh(conv(avgPool(l0, 2), tr.constant(W1, [3, 2, 1, 1])));
  return { pooled: mean(l1, [2, 3]), l0, l1 };
}

/** The same network in loops. */
function level1(l0: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let b = 0; b < 2; b++) {
    for (let o = 0; o < 3; o++) {
      for (let y = 0; y < 2; y++) {
        for (let x = 0; x < 2; x++) {
          let s = 0;
          for (let c = 0; c < 2; c++) {
            let m = 0;
            for (let dy = 0; dy < 2; dy++) {
              for (let dx = 0; dx < 2; dx++) m += l0[((b * 2 + c) * 4 + 2 * y + dy) * 4 + 2 * x + dx];
            }
            s += W1[o * 2 + c] * m / 4;
          }
          out.push(Math.tanh(s));
        }
      }
    }
  }
  return out;
}
function featRef(x: number[]): { l0: number[]; l1: number[]; pooled: number[][] } {
  const l0: number[] = [];
  for (let b = 0; b < 2; b++) {
    for (let o = 0; o < 2; o++) {
      for (let i = 0; i < 16; i++) {
        let s = 0;
        for (let c = 0; c < 3; c++) s += W0[o * 3 + c] * x[(b * 3 + c) * 16 + i];
        l0.push(Math.tanh(s));
      }
    }
  }
  const l1 = level1(l0);
  const pooled = [0, 1].map((b) => [0, 1, 2].map((o) => meanOf(l1.slice((b * 3 + o) * 4, (b * 3 + o) * 4 + 4))));
  return { l0, l1, pooled };
}

/** Σ over examples of ‖∂g/∂F‖² for g(F) = Σ_b D(F)_b, by central differences on `f` (float64). */
function sqGradNorm(g: (f: number[]) => number[], f: number[], h = 1e-6): number {
  let s = 0;
  for (let i = 0; i < f.length; i++) {
    const p = f.slice(), m = f.slice();
    p[i] += h;
    m[i] -= h;
    const d = (g(p).reduce((a, c) => a + c, 0) - g(m).reduce((a, c) => a + c, 0)) / (2 * h);
    s += d * d;
  }
  return s;
}

const DP: DiscParams = { channels: [2, 3], hidden: 4, text_dim: 2, image_dim: 3, per_location: false, mbstd_group: 0 };

/** Traces the add_discriminator stage on the tiny network with head parameters `heads` (path → tensor). */
function traceDisc(
  tr: Trace,
  heads: Record<string, Tensor>,
  ins: Record<string, Tensor>,
  gamma: number,
  dp: DiscParams = DP,
  extra: Record<string, unknown> = {},
) {
  const shaped = Object.fromEntries(
    Object.entries(addDiscriminator.shapes(dp)).map(([k, s]) => [k, reshape(heads[k], s)]),
  );
  const { ctx, metrics } = fakeCtx(tr, {
    features: featNet,
    disc: (i) => addDiscriminator.apply(dp, shaped, i),
  });
  const p = addDiscriminatorStage.params.parse({ model: "disc", features: "features", r1_gamma: gamma, ...extra });
  const out = addDiscriminatorStage.trace!(ctx, p, ins);
  return { loss_d: out.loss_d, loss_g: out.loss_g, metrics };
}

/**
 * Random heads and inputs, the stage's outputs on the reference, and the loop-side features and condition. Every
 * head is conditioned on the text and on the *real* image's pooled features, fake or real input alike.
 */
function discCase(
  dp: DiscParams,
  headSeed: number,
  inputSeed: number,
  gamma: number,
  alpha?: number[],
  extra: Record<string, unknown> = {},
) {
  const w = randomHeads(dp, headSeed, 4), rand = lcg(inputSeed);
  const real = randn(32 * 3, rand), fake = randn(32 * 3, rand).map((v) => 0.5 * v), text = randn(4, rand);
  const b = new Bench();
  const heads = Object.fromEntries(Object.entries(w).map(([k, v]) => [k, b.input(k, [v.length], v)]));
  const ins: Record<string, Tensor> = {
    real: b.input("real", IMG, real),
    fake: b.input("fake", IMG, fake),
    text: b.input("text", [2, 2], text),
  };
  if (alpha) ins.alpha = b.input("alpha", [2, 1, 1, 1], alpha);
  const out = traceDisc(b.tr, heads, ins, gamma, dp, extra);
  const r = b.run({ loss_d: out.loss_d, loss_g: out.loss_g, ...out.metrics });
  const fr = featRef(real), ff = featRef(fake);
  const cond = [0, 1].map((i) => [...text.slice(2 * i, 2 * i + 2), ...fr.pooled[i]]);
  return { w, r, fr, ff, cond };
}

Deno.test("add_discriminator stage: hinge L_D, L_G and R1 (vs finite differences of the plain-loop heads)", () => {
  const gamma = 0.6;
  const { w, r, fr, ff, cond } = discCase(DP, 3, 5, gamma);
  const D = (k: number, f: number[]) => headRef(w, k, f, k ? L1 : L0, cond, DP.hidden);
  const dReal = [D(0, fr.l0), D(1, fr.l1)], dFake = [D(0, ff.l0), D(1, ff.l1)]; // [k][b]
  const E = (per: (b: number) => number) => (per(0) + per(1)) / 2;
  const hinge = E((i) => Math.max(0, 1 - dReal[0][i]) + Math.max(0, 1 - dReal[1][i])) +
    E((i) => Math.max(0, 1 + dFake[0][i]) + Math.max(0, 1 + dFake[1][i]));
  // R1 = Σ_k E_b ‖∂D_k/∂F_k‖², each head differentiated in its own input with the others held fixed.
  const r1 = (sqGradNorm((f) => D(0, f), fr.l0) + sqGradNorm((f) => D(1, f), fr.l1)) / 2;
  // The test can tell: differentiating through the network (F₁ recomputed from F₀) gives another number.
  const through = (sqGradNorm((f) => D(0, f).map((v, i) => v + D(1, level1(f))[i]), fr.l0) +
    sqGradNorm((f) => D(1, f), fr.l1)) / 2;
  assert.ok(Math.abs(through - r1) > 0.05 * r1, `R1 ${r1} vs through the network ${through}: test not sensitive`);
  // Both sides of both hinges occur, so the relus are exercised.
  const all = [...dReal.flat().map((v) => 1 - v), ...dFake.flat().map((v) => 1 + v)];
  assert.ok(all.some((v) => v > 0) && all.some((v) => v < 0), `hinge arguments ${all}`);

  close(r.r1[0], r1, TOL, "R1");
  close(r.loss_d[0], hinge + (gamma / 2) * r1, TOL, "L_D");
  close(r.loss_g[0], -E((i) => dFake[0][i] + dFake[1][i]), TOL, "L_G");
  close(r.d_real[0], meanOf(dReal.flat()), TOL, "d_real");
  close(r.d_fake[0], meanOf(dFake.flat()), TOL, "d_fake");
});

Deno.test("add_discriminator stage: image condition zeroed at pure noise, or scaled by α_s", () => {
  const D = (w: Record<string, number[]>, k: number, f: number[], c: number[][]) =>
    headRef(w, k, f, k ? L1 : L0, c, DP.hidden);
  const alpha = [0, 0.5];
  for (const mode of ["unless_pure_noise", "times_alpha"]) {
    const { w, r, fr, ff, cond } = discCase(DP, 3, 5, 0.6, alpha, { image_condition: mode });
    // Text condition (first 2) kept; image condition (last 3) zeroed where α = 0, or scaled by α.
    const scale = alpha.map((a) => mode === "times_alpha" ? a : a > 0 ? 1 : 0);
    const masked = cond.map((c, i) => [...c.slice(0, 2), ...c.slice(2).map((v) => v * scale[i])]);
    const lossG = (c: number[][]) => -meanOf([0, 1].map((i) => D(w, 0, ff.l0, c)[i] + D(w, 1, ff.l1, c)[i]));
    assert.ok(Math.abs(lossG(masked) - lossG(cond)) > 1e-3, `${mode}: L_G unchanged, test not sensitive`);
    close(r.loss_g[0], lossG(masked), TOL, `${mode} L_G`);
    close(r.d_real[0], meanOf([D(w, 0, fr.l0, masked), D(w, 1, fr.l1, masked)].flat()), TOL, `${mode} d_real`);
  }
  // With the condition kept (the default), α is ignored.
  const { w, r, ff, cond } = discCase(DP, 3, 5, 0.6, alpha);
  close(r.loss_g[0], -meanOf([0, 1].map((i) => D(w, 0, ff.l0, cond)[i] + D(w, 1, ff.l1, cond)[i])), TOL, "always");
});

Deno.test("add_discriminator stage: a pixel head on the 2×2-pooled image, with its R1, vs plain loops", () => {
  const dp: DiscParams = { ...DP, channels: [2, 3, 3] };
  const { w, r, fr, ff, cond } = discCase(dp, 8, 9, 0.6, undefined, { pixel_head: 2 });
  const rand = lcg(9), real = randn(32 * 3, rand), fake = randn(32 * 3, rand).map((v) => 0.5 * v); // as discCase
  const pool = (x: number[]) => {
    const out: number[] = [];
    for (let bc = 0; bc < 6; bc++) {
      for (let i = 0; i < 2; i++) {
        for (let j = 0; j < 2; j++) {
          let s = 0;
          for (const [di, dj] of [[0, 0], [0, 1], [1, 0], [1, 1]]) s += x[bc * 16 + (2 * i + di) * 4 + 2 * j + dj];
          out.push(s / 4);
        }
      }
    }
    return out;
  };
  const PX = [2, 3, 2, 2];
  const D = (k: number, f: number[]) => headRef(w, k, f, [L0, L1, PX][k], cond, dp.hidden);
  const dReal = [D(0, fr.l0), D(1, fr.l1), D(2, pool(real))], dFake = [D(0, ff.l0), D(1, ff.l1), D(2, pool(fake))];
  const E = (per: (b: number) => number) => (per(0) + per(1)) / 2;
  const hinge = E((i) => dReal.reduce((a, d) => a + Math.max(0, 1 - d[i]), 0)) +
    E((i) => dFake.reduce((a, d) => a + Math.max(0, 1 + d[i]), 0));
  const r1 = (sqGradNorm((f) => D(0, f), fr.l0) + sqGradNorm((f) => D(1, f), fr.l1) +
    sqGradNorm((f) => D(2, f), pool(real))) / 2;
  close(r.r1[0], r1, TOL, "R1 with the pixel head");
  close(r.loss_d[0], hinge + 0.3 * r1, TOL, "L_D");
  close(r.loss_g[0], -E((i) => dFake.reduce((a, d) => a + d[i], 0)), TOL, "L_G");
});

Deno.test("add_discriminator stage: per-location hinge (StyleGAN-T heads) vs plain loops", () => {
  const dp: DiscParams = { ...DP, per_location: true };
  const { w, r, fr, ff, cond } = discCase(dp, 4, 6, 0.6);
  const M = (k: number, f: number[]) => headMapRef(w, k, f, k ? L1 : L0, cond, dp.hidden).flat();
  const mr = [M(0, fr.l0), M(1, fr.l1)], mf = [M(0, ff.l0), M(1, ff.l1)];
  const hinge = meanOf(mr[0].map((v) => Math.max(0, 1 - v))) + meanOf(mr[1].map((v) => Math.max(0, 1 - v))) +
    meanOf(mf[0].map((v) => Math.max(0, 1 + v))) + meanOf(mf[1].map((v) => Math.max(0, 1 + v)));
  // Some locations are on each side of a hinge while their head's mean is not, or the test could not tell the forms.
  const meanForm = [0, 1].reduce(
    (a, k) =>
      a + meanOf([0, 1].map((i) =>
        Math.max(0, 1 - meanOf(mr[k].slice(i * mr[k].length / 2, (i + 1) * mr[k].length / 2)))
      )) +
      meanOf([0, 1].map((i) =>
        Math.max(0, 1 + meanOf(mf[k].slice(i * mf[k].length / 2, (i + 1) * mf[k].length / 2)))
      )),
    0,
  );
  assert.ok(Math.abs(meanForm - hinge) > 1e-3, `per-location ${hinge} vs per-example ${meanForm}: not sensitive`);
  close(r.loss_d[0], hinge + 0.3 * r.r1[0], TOL, "L_D");
  close(r.loss_g[0], -(meanOf(mf[0]) + meanOf(mf[1])), TOL, "L_G");
});

Deno.test("add_discriminator stage: ∂R1/∂(head parameters), a gradient of a gradient, vs finite differences", () => {
  const layout = layoutOf(addDiscriminator.shapes(DP));
  const w = randomHeads(DP, 11);
  const flat = layout.entries.flatMap((e) => w[e.path]);
  for (const which of ["r1", "loss_d"] as const) {
    const res = checkGrad(
      `add_discriminator ${which}`,
      [{ shape: [layout.total], data: flat }, { shape: IMG, fixed: true }, { shape: IMG, fixed: true }, {
        shape: [2, 2],
        fixed: true,
      }],
      ([p, real, fake, text]) => {
        const out = traceDisc(p.trace, unpack(p, layout), { real, fake, text }, 0.6);
        return which === "r1" ? out.metrics.r1 : out.loss_d;
      },
      { samples: 40, seed: which === "r1" ? 21 : 22 },
    );
    assert.ok(res.checked >= 40, `${which}: ${res.checked} coordinates checked`);
  }
});
