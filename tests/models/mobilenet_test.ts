// MobileNetV2 rebuilt in the engine against nsfwjs's own forward pass (its `infer`, on tfjs's cpu backend) on real
// emoji images, and the Fréchet distance against closed forms and an independent matrix square root.
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { decode } from "fast-png";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Buffer, Executor } from "../../engine/executors/executor.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { vjp } from "../../engine/grad.ts";
import type { Graph } from "../../engine/ir.ts";
import { add, mul } from "../../engine/math.ts";
import { sum } from "../../engine/ops.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import {
  featureStats,
  fidProxy,
  frechetDistance,
  frechetDistanceOfFeatures,
  pooledFeatures,
  symmetricEigen,
  traceSqrtProduct,
} from "../../evaluation/fid.ts";
import {
  DEFAULT_LEVELS,
  FEATURE_LAYER,
  loadMobileNetV2,
  type MobileNet,
  type NsfwjsArtifacts,
  paramInputs,
  readNsfwjsArtifacts,
  resizeMatrix,
} from "../../models/mobilenet_v2.ts";

const ORT = { sanitizeResources: false, sanitizeOps: false };

// ---------------------------------------------------------------------------------------------------------------
// Images: emoji from the 32 px sprite sheet, composited on light grey, as 8-bit RGB.

const EMOJI_DIR = new URL(".", import.meta.resolve("emoji-datasource-google/emoji.json"));
const SET_A = ["RED APPLE", "GRINNING FACE", "DOG FACE", "ROCKET", "SNOWMAN", "FIRE", "OCTOPUS", "BIRD"];
const SET_B = ["GREEN APPLE", "TANGERINE", "CAT FACE", "SUN WITH FACE", "EIGHT SPOKED ASTERISK", "TRIANGULAR RULER"];
let sheet: ReturnType<typeof decode> | undefined;

/** HWC uint8 pixels of named emoji, 32×32 each. */
function emojiPixels(names: readonly string[]): Uint8Array[] {
  const meta = JSON.parse(Deno.readTextFileSync(new URL("emoji.json", EMOJI_DIR))) as {
    name: string;
    sheet_x: number;
    sheet_y: number;
  }[];
  sheet ??= decode(Deno.readFileSync(new URL("img/google/sheets-clean/32.png", EMOJI_DIR)));
  const s = sheet;
  assert.equal(s.channels, 4);
  return names.map((name) => {
    const e = meta.find((m) => m.name === name);
    assert.ok(e, `emoji ${name} not in the package`);
    const out = new Uint8Array(32 * 32 * 3);
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const p = ((e.sheet_y * 34 + 1 + y) * s.width + e.sheet_x * 34 + 1 + x) * 4, a = s.data[p + 3] / 255;
        for (let c = 0; c < 3; c++) out[(y * 32 + x) * 3 + c] = Math.round(s.data[p + c] * a + 230 * (1 - a));
      }
    }
    return out;
  });
}

/** The project's convention: NCHW float in [-1, 1], p/127.5 − 1. */
function toProject(imgs: Uint8Array[], h = 32, w = 32): Float32Array {
  const out = new Float32Array(imgs.length * 3 * h * w);
  imgs.forEach((img, n) => {
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < h * w; i++) out[(n * 3 + c) * h * w + i] = img[i * 3 + c] / 127.5 - 1;
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// nsfwjs's side: its own `load` and `infer` (pixels/255, align-corners bilinear resize, tfjs layers model).

type Nsfw = { infer(img: unknown, endpoint?: string): tf.Tensor };

/** The artifacts with the input resized to `size` and the classifier head (after out_relu) removed. */
function truncated(art: NsfwjsArtifacts, size: number): NsfwjsArtifacts {
  const topo = structuredClone(art.modelTopology) as NsfwjsArtifacts["modelTopology"];
  const cfg = topo.model_config.config as {
    layers: NsfwjsArtifacts["modelTopology"]["model_config"]["config"]["layers"];
  };
  const end = cfg.layers.findIndex((l) => l.name === FEATURE_LAYER);
  cfg.layers = cfg.layers.slice(0, end + 1);
  (cfg as Record<string, unknown>).output_layers = [[FEATURE_LAYER, 0, 0]];
  (cfg.layers[0].config as Record<string, unknown>).batch_input_shape = [null, size, size, 3];
  const keep = new Set(cfg.layers.map((l) => l.name));
  const specs = [], bytes: Uint8Array[] = [];
  let off = 0;
  for (const s of art.weightSpecs) {
    const n = s.shape.reduce((a, b) => a * b, 1) * (s.quantization?.dtype === "uint8" ? 1 : 4);
    if (keep.has(s.name.split("/")[0])) specs.push(s), bytes.push(art.weightData.subarray(off, off + n));
    off += n;
  }
  const data = new Uint8Array(bytes.reduce((a, b) => a + b.length, 0));
  off = 0;
  for (const b of bytes) data.set(b, off), off += b.length;
  return { modelTopology: topo, weightSpecs: specs, weightData: data };
}

async function nsfwjsModel(art: NsfwjsArtifacts, size: number): Promise<Nsfw> {
  await tf.setBackend("cpu");
  const { load } = await import("nsfwjs/core");
  const handler = {
    load: () =>
      Promise.resolve({
        modelTopology: art.modelTopology,
        weightSpecs: art.weightSpecs,
        weightData: art.weightData.slice().buffer,
      }),
  };
  return await load(handler as unknown as string, { size }) as unknown as Nsfw;
}

/** nsfwjs's output at `endpoint` for one HWC uint8 image, as NCHW (batch 1), or global-average-pooled. */
async function nsfwjsAt(net: Nsfw, img: Uint8Array, endpoint: string, pool = false): Promise<Float32Array> {
  const x = tf.tensor3d(img, [32, 32, 3], "int32");
  const y = net.infer(x, endpoint);
  const z = pool ? tf.mean(y, [1, 2]) : tf.transpose(y, [0, 3, 1, 2]);
  const data = await z.data() as Float32Array;
  tf.dispose([x, y, z]);
  return data;
}

// ---------------------------------------------------------------------------------------------------------------
// The engine's side.

let netPromise: Promise<MobileNet> | undefined;
const mobilenet = () => netPromise ??= loadMobileNetV2();

function featureGraph(net: MobileNet, batch: number, size: number, resize?: "bilinear" | "nearest"): Graph {
  const tr = new Trace();
  const out = net.features(paramInputs(tr, net), tr.input("x", [batch, 3, 32, 32]), { size, resize });
  return tr.build({ pooled: out.pooled, ...out.levels });
}

async function runOn(ex: Executor, g: Graph, net: MobileNet, x: Float32Array, batch: number) {
  const feeds: Record<string, Buffer> = { x: ex.upload(x, [batch, 3, 32, 32], "f32") };
  for (const [k, s] of Object.entries(net.shapes)) feeds[`mobilenet.${k}`] = ex.upload(net.params[k], s, "f32");
  const prep = await ex.prepare(g);
  const out = await prep.run(feeds);
  const res: Record<string, Float32Array> = {};
  for (const [k, b] of Object.entries(out)) res[k] = await ex.read(b) as Float32Array, ex.dispose(b);
  for (const b of Object.values(feeds)) ex.dispose(b);
  await prep.dispose();
  return res;
}

/** max |a − b| / max |b| over one image's slice of a batched engine output. */
function relErr(engine: ArrayLike<number>, n: number, ref: ArrayLike<number>): number {
  let d = 0, s = 0;
  for (let i = 0; i < ref.length; i++) {
    d = Math.max(d, Math.abs(engine[n * ref.length + i] - ref[i]));
    s = Math.max(s, Math.abs(ref[i]));
  }
  assert.ok(s > 0.1, `reference output is nearly zero (max ${s})`);
  return d / s;
}

// ---------------------------------------------------------------------------------------------------------------

Deno.test("mobilenet: the folded network has the MobileNetV2 shape", async () => {
  const net = await mobilenet();
  const count = Object.values(net.params).reduce((a, p) => a + p.length, 0);
  // 52 convolutions (35 Conv2D, 17 depthwise), each with a folded bias; the 1280-d head conv is the last.
  assert.equal(Object.keys(net.params).length, 104);
  assert.deepEqual(net.shapes["Conv_1.w"], [1280, 320, 1, 1]);
  assert.deepEqual(net.shapes["block_13_depthwise.w"], [576, 1, 3, 3]);
  assert.equal(count, 2_206_816);
  for (const l of DEFAULT_LEVELS) assert.ok(net.layerNames.includes(l));
  const tr = new Trace();
  const out = net.features(paramInputs(tr, net), tr.input("x", [2, 3, 32, 32]));
  assert.deepEqual(out.pooled.shape, [2, 1280]);
  assert.deepEqual(Object.values(out.levels).map((t) => t.shape), [
    [2, 24, 24, 24],
    [2, 32, 12, 12],
    [2, 96, 6, 6],
    [2, 320, 3, 3],
  ]);
  const y = tr.input("y", [1, 3, 32, 32]), p = paramInputs(tr, net, "again.");
  assert.throws(() => net.features(p, y, { levels: ["nope"] }), /unknown level "nope"/);
  assert.throws(() => net.features({ ...p, "Conv1.w": y }, y), /param "Conv1.w" should be \[32,3,3,3\]/);
});

Deno.test("mobilenet: resize matrices match tfjs's resizeBilinear(alignCorners) and resizeNearestNeighbor", async () => {
  await tf.setBackend("cpu");
  const [h, w] = [7, 5], rng = new Rng(3), img = rng.uniform(h * w);
  for (const [out, mode] of [[13, "bilinear"], [96, "bilinear"], [15, "nearest"], [20, "nearest"]] as const) {
    const mh = resizeMatrix(h, out, mode), mw = resizeMatrix(w, out, mode);
    const x = tf.tensor4d(img, [1, h, w, 1]);
    const y = mode === "bilinear"
      ? tf.image.resizeBilinear(x, [out, out], true)
      : tf.image.resizeNearestNeighbor(x, [out, out], false);
    const want = await y.data();
    tf.dispose([x, y]);
    let worst = 0;
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < out; j++) {
        let v = 0;
        for (let a = 0; a < h; a++) for (let b = 0; b < w; b++) v += mh[i * h + a] * mw[j * w + b] * img[a * w + b];
        worst = Math.max(worst, Math.abs(v - want[i * out + j]));
      }
    }
    assert.ok(worst < 1e-6, `${mode} ${h}×${w}→${out}: max error ${worst}`);
  }
});

Deno.test({
  name: "mobilenet: engine (cpu) matches nsfwjs's infer at 224, nsfwjs's own size and preprocessing",
  ...ORT,
  fn: async () => {
    const net = await mobilenet(), imgs = emojiPixels(SET_A.slice(0, 2));
    const ns = await nsfwjsModel(readNsfwjsArtifacts(), 224);
    const ex = await createExecutor("cpu");
    try {
      const x = toProject(imgs);
      const got = await runOn(ex, featureGraph(net, 2, 224), net, x, 2);
      for (let n = 0; n < imgs.length; n++) {
        const pooled = await nsfwjsAt(ns, imgs[n], FEATURE_LAYER, true);
        assert.ok(pooled.filter((v) => v > 0).length > 300, "most pooled features are active on a real image");
        const e = relErr(got.pooled, n, pooled);
        assert.ok(e < 1e-4, `image ${n} pooled: relative error ${e}`);
        const lvl = await nsfwjsAt(ns, imgs[n], "block_12_add");
        const el = relErr(got.block_12_add, n, lvl);
        assert.ok(el < 1e-4, `image ${n} block_12_add: relative error ${el}`);
      }
      // The comparison is sharp enough to see a preprocessing slip: nearest instead of bilinear resizing.
      const near = await runOn(ex, featureGraph(net, 2, 224, "nearest"), net, x, 2);
      const eNear = relErr(near.pooled, 0, await nsfwjsAt(ns, imgs[0], FEATURE_LAYER, true));
      assert.ok(eNear > 1e-2, `nearest resizing should not match nsfwjs (error ${eNear})`);
    } finally {
      await ex.close();
    }
  },
});

Deno.test({
  name: "mobilenet: engine (cpu, and reference for one image) matches nsfwjs at the default size 96, every level",
  ...ORT,
  fn: async () => {
    const net = await mobilenet(), imgs = emojiPixels(SET_A.slice(2, 6));
    const ns = await nsfwjsModel(truncated(readNsfwjsArtifacts(), 96), 96);
    const ex = await createExecutor("cpu");
    try {
      const g = featureGraph(net, imgs.length, 96);
      const x = toProject(imgs);
      const got = await runOn(ex, g, net, x, imgs.length);
      // fid.ts's own path (weights as graph constants) on the same images.
      const fid = await pooledFeatures(ex, { data: x, shape: [imgs.length, 3, 32, 32] }, { net, batch: 3 });
      for (let n = 0; n < imgs.length; n++) {
        const want = await nsfwjsAt(ns, imgs[n], FEATURE_LAYER, true);
        const e = relErr(got.pooled, n, want), ef = relErr(fid.features, n, want);
        assert.ok(e < 1e-4, `image ${n} pooled: relative error ${e}`);
        assert.ok(ef < 1e-4, `image ${n} pooledFeatures: relative error ${ef}`);
        for (const l of DEFAULT_LEVELS) {
          const el = relErr(got[l], n, await nsfwjsAt(ns, imgs[n], l));
          assert.ok(el < 1e-4, `image ${n} ${l}: relative error ${el}`);
        }
      }
      // The float64 reference interpreter on the first image of the same graph (batch 1).
      const g1 = featureGraph(net, 1, 96);
      const feeds: Record<string, { data: ArrayLike<number>; shape: readonly number[] }> = {
        x: { data: x.subarray(0, 3 * 32 * 32), shape: [1, 3, 32, 32] },
      };
      for (const [k, s] of Object.entries(net.shapes)) feeds[`mobilenet.${k}`] = { data: net.params[k], shape: s };
      const ref = evaluate(g1, feeds);
      const e = relErr(got.pooled, 0, ref.pooled);
      assert.ok(e < 1e-5, `cpu vs reference pooled: relative error ${e}`);
      const eNs = relErr(ref.pooled, 0, await nsfwjsAt(ns, imgs[0], FEATURE_LAYER, true));
      assert.ok(eNs < 1e-4, `reference vs nsfwjs pooled: relative error ${eNs}`);
    } finally {
      await ex.close();
    }
  },
});

Deno.test("mobilenet: input gradients (through the resize, convs and ReLU6) match finite differences", async () => {
  // The ADD discriminator backpropagates through this network into the generator.
  const net = await mobilenet(), rng = new Rng(9);
  const tr = new Trace();
  const x = tr.input("x", [1, 3, 16, 16]), wp = tr.input("w", [1, 1280]), wl = tr.input("wl", [1, 96, 2, 2]);
  const out = net.features(paramInputs(tr, net), x, { size: 32, levels: ["block_12_add"] });
  const loss = add(sum(mul(out.pooled, wp)), sum(mul(out.levels.block_12_add, wl)));
  const [gx] = vjp(loss, [x]);
  const g = tr.build({ loss, gx });
  const feeds: Record<string, { data: ArrayLike<number>; shape: readonly number[] }> = {
    x: { data: Float64Array.from(rng.normal(768), Math.tanh), shape: [1, 3, 16, 16] },
    w: { data: rng.normal(1280), shape: [1, 1280] },
    wl: { data: rng.normal(384), shape: [1, 96, 2, 2] },
  };
  for (const [k, s] of Object.entries(net.shapes)) feeds[`mobilenet.${k}`] = { data: net.params[k], shape: s };
  const base = evaluate(g, feeds), xs = feeds.x.data as Float64Array, h = 1e-5;
  let norm = 0;
  for (const v of base.gx) norm = Math.max(norm, Math.abs(v));
  assert.ok(norm > 1e-3, `gradient is nearly zero (${norm})`);
  for (const i of [5, 300, 555, 700]) {
    const at = (d: number) => {
      const xd = xs.slice();
      xd[i] += d;
      return evaluate(g, { ...feeds, x: { data: xd, shape: [1, 3, 16, 16] } }).loss[0];
    };
    const fd = (at(h) - at(-h)) / (2 * h);
    assert.ok(Math.abs(fd - base.gx[i]) < 1e-4 * norm, `x[${i}]: traced ${base.gx[i]}, finite difference ${fd}`);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Fréchet distance.

function randomCov(rng: Rng, d: number, n: number): Float64Array {
  const x = rng.normal(n * d), c = new Float64Array(d * d);
  for (let s = 0; s < n; s++) {
    for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) c[i * d + j] += (x[s * d + i] * x[s * d + j]) / n;
  }
  return c;
}

function mm(a: Float64Array, b: Float64Array, d: number): Float64Array {
  const c = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < d; k++) for (let j = 0; j < d; j++) c[i * d + j] += a[i * d + k] * b[k * d + j];
  }
  return c;
}

function inverse(a: Float64Array, d: number): Float64Array {
  const m = Float64Array.from(a), inv = new Float64Array(d * d);
  for (let i = 0; i < d; i++) inv[i * d + i] = 1;
  for (let c = 0; c < d; c++) {
    let p = c;
    for (let r = c + 1; r < d; r++) if (Math.abs(m[r * d + c]) > Math.abs(m[p * d + c])) p = r;
    for (let j = 0; j < d; j++) {
      [m[c * d + j], m[p * d + j]] = [m[p * d + j], m[c * d + j]];
      [inv[c * d + j], inv[p * d + j]] = [inv[p * d + j], inv[c * d + j]];
    }
    const piv = m[c * d + c];
    for (let j = 0; j < d; j++) m[c * d + j] /= piv, inv[c * d + j] /= piv;
    for (let r = 0; r < d; r++) {
      if (r === c) continue;
      const f = m[r * d + c];
      for (let j = 0; j < d; j++) m[r * d + j] -= f * m[c * d + j], inv[r * d + j] -= f * inv[c * d + j];
    }
  }
  return inv;
}

/** tr √A for a matrix with positive real eigenvalues, by the Denman–Beavers iteration (no eigenvectors). */
function traceSqrtDenmanBeavers(a: Float64Array, d: number): number {
  let y = Float64Array.from(a), z = new Float64Array(d * d);
  for (let i = 0; i < d; i++) z[i * d + i] = 1;
  for (let it = 0; it < 50; it++) {
    const yi = inverse(y, d), zi = inverse(z, d);
    y = y.map((v, i) => 0.5 * (v + zi[i]));
    z = z.map((v, i) => 0.5 * (v + yi[i]));
  }
  let t = 0;
  for (let i = 0; i < d; i++) t += y[i * d + i];
  return t;
}

Deno.test("symmetricEigen: reconstructs random and rank-deficient symmetric matrices with orthonormal vectors", () => {
  const rng = new Rng(11);
  for (const [d, n] of [[1, 3], [2, 5], [40, 80], [30, 6]]) {
    const a = randomCov(rng, d, n);
    const { values, v } = symmetricEigen(a, d);
    assert.deepEqual(symmetricEigen(a, d, false).values, values);
    let scale = 0;
    for (const x of a) scale = Math.max(scale, Math.abs(x));
    for (let i = 0; i < d; i++) {
      if (i > 0) assert.ok(values[i] >= values[i - 1], "ascending");
      for (let j = 0; j < d; j++) {
        let rec = 0, dot = 0;
        for (let k = 0; k < d; k++) {
          rec += values[k] * v![k * d + i] * v![k * d + j], dot += v![i * d + k] * v![j * d + k];
        }
        assert.ok(Math.abs(rec - a[i * d + j]) < 1e-12 * scale, `d=${d}: A[${i},${j}] ${rec} vs ${a[i * d + j]}`);
        assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-12, `d=${d}: VVᵀ[${i},${j}] = ${dot}`);
      }
    }
    if (n < d) assert.ok(Math.abs(values[d - n - 1]) < 1e-12 * scale, "rank n: the smallest d−n values vanish");
  }
});

Deno.test("frechetDistance: closed forms (diagonal, 2×2 by hand), identical sets, and Denman–Beavers", () => {
  // Diagonal covariances commute: FD = |Δμ|² + Σ (√aᵢ − √bᵢ)².
  const a = [0.5, 2, 3, 0, 7], b = [1, 2, 0.25, 4, 1], mu1 = [1, 0, -2, 3, 0.5], mu2 = [0, 0, 1, 3, -0.5];
  const diag = (v: number[]) => Float64Array.from({ length: 25 }, (_, i) => i % 6 === 0 ? v[i / 6] : 0);
  const want = mu1.reduce((s, m, i) => s + (m - mu2[i]) ** 2 + (Math.sqrt(a[i]) - Math.sqrt(b[i])) ** 2, 0);
  const got = frechetDistance(Float64Array.from(mu1), diag(a), Float64Array.from(mu2), diag(b));
  assert.ok(Math.abs(got - want) < 1e-12 * want, `diagonal: ${got} vs ${want}`);
  // Non-commuting 2×2: C₁ = [[2,1],[1,2]], C₂ = [[1,0],[0,3]]; C₁C₂ = [[2,3],[1,6]], tr 8, det 3·3 = 9, so
  // tr √(C₁C₂) = √(tr + 2√det) = √14 and FD = |Δμ|² + 4 + 4 − 2√14 with |Δμ|² = 1 + 4.
  const fd2 = frechetDistance(
    Float64Array.of(1, 2),
    Float64Array.of(2, 1, 1, 2),
    Float64Array.of(0, 0),
    Float64Array.of(1, 0, 0, 3),
  );
  assert.ok(Math.abs(fd2 - (5 + 8 - 2 * Math.sqrt(14))) < 1e-12, `2×2: ${fd2}`);
  // Random full-rank covariances against an iteration that never diagonalises anything.
  const rng = new Rng(5), d = 12;
  const c1 = randomCov(rng, d, 40), c2 = randomCov(rng, d, 30);
  const ts = traceSqrtProduct(c1, c2, d), db = traceSqrtDenmanBeavers(mm(c1, c2, d), d);
  assert.ok(Math.abs(ts - db) < 1e-9 * db, `tr √(C₁C₂): ${ts} vs Denman–Beavers ${db}`);
  // Identical Gaussians, including a rank-deficient covariance (fewer samples than dimensions): 0.
  const mu = Float64Array.from(rng.normal(d));
  for (const c of [c1, randomCov(rng, d, 5)]) {
    const fd = frechetDistance(mu, c, mu, c);
    assert.ok(Math.abs(fd) < 1e-9 * c.reduce((s, v, i) => s + (i % (d + 1) === 0 ? v : 0), 0), `identical: ${fd}`);
  }
  assert.ok(Math.abs(frechetDistance(mu, c1, mu, c2) - frechetDistance(mu, c2, mu, c1)) < 1e-9, "symmetric");
});

Deno.test("featureStats and the cross-Gram route agree with the covariance route", () => {
  const rng = new Rng(21), d = 20;
  const f = (n: number, shift: number) => Float32Array.from(rng.normal(n * d), (v, i) => v * (1 + (i % d) / 5) + shift);
  // featureStats against the textbook formula, entry by entry.
  const x = f(9, 0.5), st = featureStats(x, 9, d);
  for (const [i, j] of [[0, 0], [3, 17], [19, 19]]) {
    const mi = x.filter((_, k) => k % d === i).reduce((s, v) => s + v, 0) / 9;
    const mj = x.filter((_, k) => k % d === j).reduce((s, v) => s + v, 0) / 9;
    let c = 0;
    for (let s = 0; s < 9; s++) c += (x[s * d + i] - mi) * (x[s * d + j] - mj) / 8;
    assert.ok(
      Math.abs(st.mu[i] - mi) < 1e-12 && Math.abs(st.cov[i * d + j] - c) < 1e-12 &&
        st.cov[j * d + i] === st.cov[i * d + j],
    );
  }
  for (const [n1, n2] of [[7, 12], [13, 5], [30, 25]]) {
    const a = f(n1, 0), b = f(n2, 0.3);
    const sa = featureStats(a, n1, d), sb = featureStats(b, n2, d);
    const want = frechetDistance(sa.mu, sa.cov, sb.mu, sb.cov);
    const got = frechetDistanceOfFeatures(a, n1, b, n2, d);
    assert.ok(want > 1 && Math.abs(got - want) < 1e-9 * want, `n ${n1}, ${n2}: ${got} vs ${want}`);
    assert.ok(Math.abs(frechetDistanceOfFeatures(b, n2, a, n1, d) - got) < 1e-9 * want, "symmetric");
    assert.ok(Math.abs(frechetDistanceOfFeatures(a, n1, a, n1, d)) < 1e-9 * want, "identical sets give 0");
  }
});

Deno.test({
  name: "fidProxy: 0 for the same images, positive for different ones, independent of the batch size",
  ...ORT,
  fn: async () => {
    const net = await mobilenet();
    const a = toProject(emojiPixels(SET_A)), b = toProject(emojiPixels(SET_B));
    const setA = { data: a, shape: [SET_A.length, 3, 32, 32] as const };
    const setB = { data: b, shape: [SET_B.length, 3, 32, 32] as const };
    const ex = await createExecutor("cpu");
    try {
      // 8 images in batches of 3 (the last zero-padded) against one batch of 8.
      const f3 = await pooledFeatures(ex, setA, { net, batch: 3 });
      const f8 = await pooledFeatures(ex, setA, { net, batch: 8 });
      assert.equal(f3.dim, 1280);
      assert.ok(relErr(f3.features, 0, f8.features) < 1e-5, "batching does not change features");
      const same = await fidProxy(ex, setA, setA, { net, batch: 4 });
      const diff = await fidProxy(ex, setA, setB, { net, batch: 4 });
      const fb = await pooledFeatures(ex, setB, { net, batch: 4 });
      const direct = frechetDistanceOfFeatures(f8.features, SET_A.length, fb.features, SET_B.length, 1280);
      assert.ok(diff > 1, `different emoji: FD ${diff}`);
      assert.ok(Math.abs(same) < 1e-6 * diff, `same images: FD ${same} (vs ${diff})`);
      assert.ok(Math.abs(diff - direct) < 1e-4 * diff, `fidProxy ${diff} vs features → FD ${direct}`);
      assert.equal(ex.liveBuffers(), 0, "fidProxy frees its buffers");
    } finally {
      await ex.close();
    }
  },
});
