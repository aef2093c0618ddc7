// The Fashion-MNIST judge (models/fashion_judge.ts) and what trains it: the fashion_cnn forward on the cpu executor
// against a plain float64 loop forward of the same (shipped) weights; the cross_entropy stage against a hand-written
// log-sum-exp; the shipped classifier's accuracy on real test images; the judge's class accuracy on real images with
// their labels (high) and with the labels shuffled (chance); its Fréchet distance between two halves of the real
// test set (small) and between real images and noise (large); a file that is not a fashion_cnn fails in one line;
// the two Fashion-MNIST configs plan (the classifier's model matches the shipped weights' shapes).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Executor } from "../../engine/executors/executor.ts";
import { Rng } from "../../engine/rng.ts";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { Trace } from "../../engine/tensor.ts";
import { fashionCnnShapes } from "../../models/fashion_cnn.ts";
import {
  argmaxRows,
  FASHION_JUDGE_WEIGHTS,
  type FashionJudge,
  fashionTestImages,
  judgeFashion,
  judgeRunner,
  loadFashionJudge,
} from "../../models/fashion_judge.ts";
import { loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import type { TraceContext } from "../../pipeline/stage.ts";
import { crossEntropyStage } from "../../stages/cross_entropy.ts";
import { FASHION_MNIST_CLASSES, FASHION_MNIST_DIR } from "../../datasets/fashion_mnist.ts";
import "../../stages/mod.ts";

const ORT = { sanitizeResources: false, sanitizeOps: false };
const haveFashion = existsSync(`${FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz`);
if (!haveFashion) {
  console.warn(
    `fashion judge tests on real images skipped: ${FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)`,
  );
}

let exPromise: Promise<Executor> | undefined;
const cpu = () => exPromise ??= createExecutor("cpu");
let judgePromise: Promise<FashionJudge> | undefined;
const shipped = () => judgePromise ??= loadFashionJudge();

/** The classifier in float64 loops: conv 3×3 (pad 1) → ReLU → 2×2 max-pool per level, dense → ReLU, dense. */
function referenceForward(
  j: FashionJudge,
  x: Float32Array,
  n: number,
): { logits: Float64Array; features: Float64Array } {
  const p = j.params, w = j.weights;
  const logits = new Float64Array(n * p.classes), features = new Float64Array(n * p.hidden);
  for (let s = 0; s < n; s++) {
    let c: number = p.channels, side: number = p.size;
    let h = Float64Array.from(x.subarray(s * c * side * side, (s + 1) * c * side * side));
    p.convs.forEach((o, l) => {
      const k = w[`c${l}.w`], b = w[`c${l}.b`], conv = new Float64Array(o * side * side);
      for (let oc = 0; oc < o; oc++) {
        for (let y = 0; y < side; y++) {
          for (let xx = 0; xx < side; xx++) {
            let acc = b[oc];
            for (let ic = 0; ic < c; ic++) {
              for (let dy = -1; dy <= 1; dy++) {
                for (let dx = -1; dx <= 1; dx++) {
                  const yy = y + dy, xs = xx + dx;
                  if (yy < 0 || yy >= side || xs < 0 || xs >= side) continue;
                  acc += k[((oc * c + ic) * 3 + dy + 1) * 3 + dx + 1] * h[(ic * side + yy) * side + xs];
                }
              }
            }
            conv[(oc * side + y) * side + xx] = Math.max(0, acc);
          }
        }
      }
      const half = side / 2, pooled = new Float64Array(o * half * half);
      for (let oc = 0; oc < o; oc++) {
        for (let y = 0; y < half; y++) {
          for (let xx = 0; xx < half; xx++) {
            let m = -Infinity;
            for (let d = 0; d < 4; d++) m = Math.max(m, conv[(oc * side + 2 * y + (d >> 1)) * side + 2 * xx + (d & 1)]);
            pooled[(oc * half + y) * half + xx] = m;
          }
        }
      }
      h = pooled;
      c = o;
      side = half;
    });
    for (let i = 0; i < p.hidden; i++) {
      let acc = w["fc.b"][i];
      for (let t = 0; t < h.length; t++) acc += w["fc.w"][i * h.length + t] * h[t];
      features[s * p.hidden + i] = Math.max(0, acc);
    }
    for (let i = 0; i < p.classes; i++) {
      let acc = w["out.b"][i];
      for (let t = 0; t < p.hidden; t++) acc += w["out.w"][i * p.hidden + t] * features[s * p.hidden + t];
      logits[s * p.classes + i] = acc;
    }
  }
  return { logits, features };
}

Deno.test({
  name: "fashion_cnn: the shipped weights' forward on cpu matches a float64 loop forward (logits and features)",
  ...ORT,
  fn: async () => {
    const j = await shipped(), n = 6, per = j.params.channels * 32 * 32;
    // Uniform noise in [-1, 1] and, where the dataset is installed, real test images: both ReLU regimes get used.
    const x = new Rng(3).uniform(n * per).map((v) => 2 * v - 1);
    if (haveFashion) x.set((await fashionTestImages(j.params.channels, 3)).images.data);
    const runner = await judgeRunner(await cpu(), j, 4); // 6 images in batches of 4: the padded last batch too
    try {
      const got = await runner.run({ data: x, shape: [n, j.params.channels, 32, 32] });
      const want = referenceForward(j, x, n);
      const check = (a: Float32Array, b: Float64Array, what: string) => {
        const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        const err = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
        assert.ok(scale > 0.1, `${what}: a non-trivial reference (max |v| ${scale})`);
        assert.ok(err <= 1e-5 * scale + 1e-6, `${what}: max error ${err} at scale ${scale}`);
      };
      check(got.logits, want.logits, "logits");
      check(got.features, want.features, "features");
      // Some features are 0 (the ReLU) and some are not: the comparison covers both.
      const zeros = got.features.filter((v) => v === 0).length;
      assert.ok(zeros > 0 && zeros < got.features.length, `${zeros} zero features of ${got.features.length}`);
    } finally {
      await runner.close();
    }
  },
});

Deno.test({
  name: "cross_entropy stage: loss and accuracy against log-sum-exp and argmax loops",
  ...ORT,
  fn: async () => {
    const b = 7, c = 5, rng = new Rng(11);
    const logits = rng.normal(b * c).map((v) => 3 * v);
    // Every other label is its row's argmax, the others are off by a random non-zero shift: hits and misses both.
    const shift = rng.randint(b, 1, c), labels = argmaxRows(logits, c).map((a, i) => i % 2 ? (a + shift[i]) % c : a);
    const tr = new Trace(), metrics: Record<string, ReturnType<Trace["input"]>> = {};
    const ctx = { metric: (k: string, v: ReturnType<Trace["input"]>) => (metrics[k] = v) } as unknown as TraceContext;
    const out = crossEntropyStage.trace!(ctx, {}, {
      logits: tr.input("logits", [b, c]),
      labels: tr.input("labels", [b], "i32"),
    });
    const ex = await cpu(), prep = await ex.prepare(tr.build({ loss: out.loss, accuracy: metrics.accuracy }));
    const res = await prep.run({ logits: ex.upload(logits, [b, c], "f32"), labels: ex.upload(labels, [b], "i32") });
    const loss = (await ex.read(res.loss))[0], acc = (await ex.read(res.accuracy))[0];
    await prep.dispose();
    let want = 0, hits = 0;
    const am = argmaxRows(logits, c);
    for (let i = 0; i < b; i++) {
      const row = Array.from(logits.subarray(i * c, (i + 1) * c)), m = Math.max(...row);
      want += m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0)) - row[labels[i]];
      if (am[i] === labels[i]) hits++;
    }
    assert.ok(Math.abs(loss - want / b) < 1e-5, `loss ${loss} vs ${want / b}`);
    assert.equal(acc, Math.fround(hits / b));
    assert.ok(hits > 0 && hits < b, `a mix of hits and misses: ${hits}/${b}`);
  },
});

// The shipped weights score 92.15% on all 10,000 test images and 92.70% on the first 2,000 (README in
// models/fashion_classifier/). This fixed subset makes the check deterministic; its binomial standard error would be
// 0.6 points, and 90% sits over 3 of them below the measured figure, while a broken lowering, a wrong value range or
// a channel mix-up lands far lower (near 10%).
Deno.test({
  name: "fashion judge: the shipped classifier is ≥ 90% accurate on the first 2,000 test images",
  ignore: !haveFashion,
  ...ORT,
  fn: async () => {
    const j = await shipped(), { images, labels } = await fashionTestImages(j.params.channels, 2000);
    const r = await judgeFashion(await cpu(), images, labels, { judge: j, real: images });
    assert.ok(r.accuracy >= 0.9, `accuracy ${r.accuracy}`);
    // Every class is recognised well above chance, the weakest (shirt) included.
    assert.ok(Math.min(...r.perClass) > 0.5, `per class ${r.perClass.map((v) => v.toFixed(2))}`);
    // Same images, same network: the distance is rounding alone.
    assert.ok(Math.abs(r.fd) < 1e-3, `fd of a set to itself ${r.fd}`);
  },
});

Deno.test({
  name: "fashion judge: class accuracy high with the true labels, near chance with them shuffled",
  ignore: !haveFashion,
  ...ORT,
  fn: async () => {
    const j = await shipped(), { images, labels } = await fashionTestImages(j.params.channels, 2000);
    const per = j.params.channels * 32 * 32, idx = [...labels.keys()].filter((i) => labels[i] === 1); // trousers
    const trousers = new Float32Array(idx.length * per);
    idx.forEach((src, dst) => trousers.set(images.data.subarray(src * per, (src + 1) * per), dst * per));
    const ex = await cpu(),
      real = { data: images.data.subarray(0, 1000 * per), shape: [1000, j.params.channels, 32, 32] };
    const one = await judgeFashion(
      ex,
      { data: trousers, shape: [idx.length, j.params.channels, 32, 32] },
      idx.map(() => 1),
      {
        judge: j,
        real,
      },
    );
    assert.ok(idx.length > 150 && one.accuracy > 0.95, `trousers: ${one.accuracy} of ${idx.length}`);
    // A permutation keeps each label's count, so chance is Σ_c share_c · predicted-share_c ≈ 10% (σ ≈ 0.7 points).
    const perm = new Rng(5).permutation(labels.length), shuffled = Int32Array.from(perm, (i) => labels[i]);
    const sh = await judgeFashion(ex, images, shuffled, { judge: j, real });
    assert.ok(sh.accuracy > 0.06 && sh.accuracy < 0.14, `shuffled labels: ${sh.accuracy}`);
  },
});

Deno.test({
  name: "fashion judge: Fréchet distance small between two halves of the real images, large against noise",
  ignore: !haveFashion,
  ...ORT,
  fn: async () => {
    const j = await shipped(), ch = j.params.channels, per = ch * 32 * 32;
    const { images, labels } = await fashionTestImages(ch, 2000);
    const half = (k: number) => ({
      data: images.data.subarray(k * 1000 * per, (k + 1) * 1000 * per),
      shape: [1000, ch, 32, 32],
    });
    const ex = await cpu();
    const rr = await judgeFashion(ex, half(0), labels.subarray(0, 1000), { judge: j, real: half(1) });
    const noise = { data: new Rng(9).uniform(1000 * per).map((v) => 2 * v - 1), shape: [1000, ch, 32, 32] };
    const rn = await judgeFashion(ex, noise, labels.subarray(0, 1000), { judge: j, real: half(1) });
    // A single class against all of them: far too, a distance that sees the classes' balance.
    const idx = [...labels.keys()].filter((i) => labels[i] === 7).slice(0, 150),
      sneakers = new Float32Array(idx.length * per);
    idx.forEach((src, dst) => sneakers.set(images.data.subarray(src * per, (src + 1) * per), dst * per));
    const rs = await judgeFashion(ex, { data: sneakers, shape: [idx.length, ch, 32, 32] }, idx.map(() => 7), {
      judge: j,
      real: half(1),
    });
    console.log(`fd: real halves ${rr.fd.toFixed(3)}, sneakers vs all ${rs.fd.toFixed(2)}, noise ${rn.fd.toFixed(2)}`);
    assert.ok(rr.fd > 0, `two different samples: ${rr.fd}`);
    assert.ok(rs.fd > 20 * rr.fd, `one class ${rs.fd} vs halves ${rr.fd}`);
    assert.ok(rn.fd > 20 * rr.fd, `noise ${rn.fd} vs halves ${rr.fd}`);
  },
});

Deno.test("fashion judge: a file that is not a fashion_cnn fails in one line naming it", async () => {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "fashion_judge_test-" });
  try {
    const shapes = fashionCnnShapes({ channels: 3, size: 32, classes: 10, convs: [8, 8], hidden: 16 });
    const t = Object.fromEntries(
      Object.entries(shapes).map(([k, s]) => [k, {
        data: new Float32Array(s.reduce((a, b) => a * b, 1)),
        shape: s,
      }]),
    );
    await writeSafetensors(`${dir}/ok.safetensors`, t);
    const j = await loadFashionJudge(`${dir}/ok.safetensors`);
    assert.deepEqual(j.params, { channels: 3, size: 32, classes: 10, convs: [8, 8], hidden: 16 });
    const { ["fc.b"]: _, ...missing } = t;
    await writeSafetensors(`${dir}/missing.safetensors`, missing);
    await assert.rejects(loadFashionJudge(`${dir}/missing.safetensors`), /missing\.safetensors: no tensor "fc\.b"/);
    await writeSafetensors(`${dir}/wrong.safetensors`, {
      ...t,
      "fc.w": { data: new Float32Array(16 * 10), shape: [16, 10] },
    });
    await assert.rejects(
      loadFashionJudge(`${dir}/wrong.safetensors`),
      /wrong\.safetensors: tensor "fc\.w" is \[16,10\]/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.ok(existsSync(FASHION_JUDGE_WEIGHTS), `${FASHION_JUDGE_WEIGHTS} is shipped`);
});

Deno.test("configs: fashion_classifier.yaml trains the judge's architecture; teacher_fashion.yaml plans a guided teacher", async () => {
  const plan = async (f: string) => planPipeline(loadConfig(f, await Deno.readTextFile(f)));
  const fc = await plan("configs/fashion_classifier.yaml");
  assert.deepEqual(fc.phases.map((p) => [p.optimizer, p.updates, p.stages]), [["opt", ["cnn"], ["classify", "loss"]]]);
  // The shipped weights are what this config's model makes: same kind settings, so the same shapes.
  const j = await shipped(), m = fc.models.cnn;
  assert.deepEqual(m.shapes, fashionCnnShapes(j.params));
  assert.deepEqual(fc.stages.classify.inputTypes.x, { dtype: "f32", shape: [128, 3, 32, 32] });
  const tf = await plan("configs/teacher_fashion.yaml");
  assert.deepEqual(tf.phases.map((p) => p.updates), [["unet"]]);
  assert.deepEqual(tf.stages.text.params, { ...(tf.stages.text.params as object), dataset: "fashion", dropout: 0.1 });
  assert.deepEqual(tf.stages.denoise.inputTypes.x.shape, [32, 3, 32, 32]);
  const prompts = (tf.stages.preview.params as { prompts: string[] }).prompts;
  assert.ok(prompts.every((p) => FASHION_MNIST_CLASSES.includes(p)), `prompts are class names: ${prompts}`);
});
