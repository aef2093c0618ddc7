/**
 * Which input size for the report's InceptionV3 judge (`JUDGE_SIZES` in models/fid.ts): for each size, the cpu
 * executor's ms/image of `pooledFeatures` (batch 16, compilation excluded), then the FIDs of a ladder of corrupted
 * copies of the emoji held-out images against the originals, their ratio to the real-vs-real floor (held-out vs train
 * real), their Spearman rank agreement with 299, and how often a corrupted image retrieves its own original as
 * nearest neighbour (top-1 self-retrieval).
 *
 *   deno run --allow-read --allow-env --allow-ffi --allow-sys bench/judge_sizes.ts [inception_v3:299,…,mobilenet_v2:96]
 *
 * About 10 minutes on the 2-core development machine.
 *
 * @module
 */
import { createExecutor } from "../engine/executors/auto.ts";
import { Rng } from "../engine/rng.ts";
import { textFidelity, toDisplayed } from "../evaluation/eval_metrics.ts";
import { frechetDistanceOfFeatures, type JudgeName, pooledFeatures } from "../evaluation/fid.ts";
import { emojiCaptionSets } from "../evaluation/emoji_report.ts";

const S = 32, PER = 3 * S * S, PLANE = S * S;

function blur(img: Float32Array, out: Float32Array): void {
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        let s = 0, k = 0;
        for (let dy = -1; dy <= 1; dy++) {
          for (let dx = -1; dx <= 1; dx++) {
            const yy = y + dy, xx = x + dx;
            if (yy >= 0 && yy < S && xx >= 0 && xx < S) s += img[c * PLANE + yy * S + xx], k++;
          }
        }
        out[c * PLANE + y * S + x] = s / k;
      }
    }
  }
}

/** The corruption ladder: name → per-image map (input, output), both [3, 32, 32] in [-1, 1]. */
function corruptions(rng: Rng): [string, (a: Float32Array, o: Float32Array) => void][] {
  const noise = (sigma: number) => (a: Float32Array, o: Float32Array) => {
    const z = rng.normal(PER);
    for (let i = 0; i < PER; i++) o[i] = a[i] + sigma * z[i];
  };
  return [
    ["blur 3×3", blur],
    ["blur 3×3 twice", (a, o) => {
      const t = new Float32Array(PER);
      blur(a, t);
      blur(t, o);
    }],
    ["noise 0.05", noise(0.05)],
    ["noise 0.15", noise(0.15)],
    ["swap R/B", (a, o) => {
      o.set(a.subarray(2 * PLANE), 0);
      o.set(a.subarray(PLANE, 2 * PLANE), PLANE);
      o.set(a.subarray(0, PLANE), 2 * PLANE);
    }],
    ["half grey", (a, o) => {
      for (let i = 0; i < PLANE; i++) {
        const g = (a[i] + a[PLANE + i] + a[2 * PLANE + i]) / 3;
        for (let c = 0; c < 3; c++) o[c * PLANE + i] = 0.5 * a[c * PLANE + i] + 0.5 * g;
      }
    }],
    ["pixelate 2×", (a, o) => {
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < S; y++) {
          for (let x = 0; x < S; x++) o[c * PLANE + y * S + x] = a[c * PLANE + (y & ~1) * S + (x & ~1)];
        }
      }
    }],
  ];
}

function ranks(v: number[]): number[] {
  const r = new Array<number>(v.length);
  v.map((x, i) => [x, i]).sort((a, b) => a[0] - b[0]).forEach(([, i], k) => r[i] = k);
  return r;
}
function spearman(a: number[], b: number[]): number {
  const ra = ranks(a), rb = ranks(b), m = a.length;
  return 1 - 6 * ra.reduce((s, x, i) => s + (x - rb[i]) ** 2, 0) / (m * (m * m - 1));
}

const [held, train] = await emojiCaptionSets({});
const n = held.captions.length;
const ladder = corruptions(new Rng(5)).map(([name, f]): [string, Float32Array] => {
  const out = new Float32Array(held.images.length);
  for (let i = 0; i < n; i++) f(held.images.subarray(i * PER, (i + 1) * PER), out.subarray(i * PER, (i + 1) * PER));
  return [name, toDisplayed(out)];
});
const sets: [string, Float32Array][] = [["train real", train.images], ...ladder];
const all = new Float32Array((1 + sets.length) * n * PER);
all.set(held.images, 0);
sets.forEach(([, d], i) => all.set(d, (i + 1) * n * PER));
const specs = (Deno.args[0] ?? "inception_v3:299,inception_v3:224,inception_v3:160,inception_v3:139,mobilenet_v2:96")
  .split(",").map((s) => s.split(":")).map(([j, size]) => ({ judge: j as JudgeName, size: Number(size) }));
const ex = await createExecutor("cpu");
const fids = new Map<string, number[]>();
try {
  for (const { judge, size } of specs) {
    const opts = { judge, size, batch: 16 };
    const time = async (k: number) => {
      const t0 = performance.now();
      await pooledFeatures(ex, { data: all.subarray(0, k * PER), shape: [k, 3, S, S] }, opts);
      return performance.now() - t0;
    };
    const ms = (await time(80) - Math.min(await time(16), await time(16))) / 64;
    const { features, dim } = await pooledFeatures(ex, { data: all, shape: [(1 + sets.length) * n, 3, S, S] }, opts);
    const f = (i: number) => features.subarray(i * n * dim, (i + 1) * n * dim);
    const fd = sets.map((_, i) => frechetDistanceOfFeatures(f(i + 1), n, f(0), n, dim));
    const self = ladder.map((_, i) => textFidelity(f(i + 2), held.captions, f(0), held.captions, dim, [1])[0]);
    fids.set(`${judge}:${size}`, fd);
    console.log(`${judge} ${size}²: ${ms.toFixed(1)} ms/image; floor (train real) ${fd[0].toFixed(2)}`);
    ladder.forEach(([name], i) => {
      const r = fd[i + 1] / fd[0], top1 = (100 * self[i]).toFixed(1);
      console.log(`  ${name}: FID ${fd[i + 1].toFixed(2)} = ${r.toFixed(2)}× floor; self-retrieval top-1 ${top1}%`);
    });
  }
  const ref = fids.get("inception_v3:299");
  if (ref) {
    for (const [k, v] of fids) {
      console.log(`Spearman(${k}, inception_v3:299) over the ${v.length} sets: ${spearman(v, ref).toFixed(3)}`);
    }
  }
} finally {
  await ex.close();
}
