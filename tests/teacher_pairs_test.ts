// teacher_pairs (stages/add/teacher_pairs.ts): every drawn pair is (the bank's noise, its caption, the teacher's DDIM
// sample from exactly that noise and caption) — checked against the teacher sampled alone on each pair, so the
// batching and the padding of the last chunk cannot mix pairs up; the student's inputs are pure noise at T−1; the cache
// is read back for the same teacher and not for another; wrong models and schedules are rejected at typing.
import assert from "node:assert/strict";
import "../stages/mod.ts";
import { createExecutor } from "../engine/executors/auto.ts";
import type { Executor } from "../engine/executors/executor.ts";
import { Rng } from "../engine/rng.ts";
import { UNetRunner } from "../models/diffusion/generate.ts";
import { sampleAdd, sampleDdim } from "../models/diffusion/samplers.ts";
import { makeSchedule } from "../models/diffusion/schedules.ts";
import { unet } from "../models/unet.ts";
import type { Dataset, HostContext, ModelInfo } from "../pipeline/stage.ts";
import { StageTypeError } from "../pipeline/stage.ts";
import { teacherPairs } from "../stages/add/teacher_pairs.ts";
import { loadCaptionEncoder } from "../stages/text_encode.ts";
import { randomTinyUnet, TINY_UNET } from "./tiny_unet.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

const U = unet.params.parse(TINY_UNET);
const PER = 3 * 32 * 32;
const teacherWeights = randomTinyUnet;

// Seven examples over four captions; caption ids index `captions`.
const captions = ["red apple", "sun", "rocket", "blue heart"];
const exampleCaption = [0, 1, 2, 3, 0, 2, 1];
const dataset: Dataset = {
  size: exampleCaption.length,
  captions,
  captionOf: (i) => captions[exampleCaption[i]],
  batch: (idx) => ({
    image: new Float32Array(idx.length * PER),
    caption_id: Int32Array.from(idx, (i) => exampleCaption[i]),
  }),
};

function context(
  executor: Executor,
  weights: Record<string, Float32Array>,
  logs: string[],
  step = 1,
  u: typeof U = U,
): HostContext {
  const models: Record<string, ModelInfo> = {
    teacher: { name: "teacher", kind: "unet", params: u, shapes: unet.shapes(u) },
  };
  return {
    stage: "pairs",
    seed: 3,
    step,
    rng: new Rng(3).fold("host/pairs").fold(step),
    out: "out/unused",
    dataset: () => Promise.resolve(dataset),
    executor,
    models,
    readModel: () => Promise.resolve(weights),
    log: (l) => logs.push(l),
  };
}

/** Step 1 of a new run (its own executor, so its own bank) with these weights, architecture and params. */
async function newRun(
  weights: Record<string, Float32Array>,
  u: typeof U,
  p: ReturnType<typeof teacherPairs.params.parse>,
) {
  const ex = await createExecutor("cpu"), logs: string[] = [];
  try {
    return { out: await teacherPairs.host!(context(ex, weights, logs, 1, u), p, {}), logs };
  } finally {
    await ex.close();
  }
}

Deno.test(
  "teacher_pairs: each drawn pair is its noise, caption and the teacher's DDIM sample from them",
  opts,
  async () => {
    const cache = await Deno.makeTempDir({ prefix: "teacher_pairs_test-" });
    // 5 pairs made 2 at a time: the last chunk is padded.
    const p = teacherPairs.params.parse({
      model: "teacher",
      dataset: "d",
      pairs: 5,
      batch: 6,
      steps: 2,
      gen_batch: 2,
      cache,
    });
    const weights = teacherWeights(1);
    const ex = await createExecutor("cpu");
    const enc = await loadCaptionEncoder(p.text_encoder);
    const runner = await UNetRunner.create(ex, U, weights, 1, enc.dims.length);
    const schedule = makeSchedule(p.schedule);
    try {
      const logs: string[] = [];
      const seen = new Set<number>();
      for (const step of [1, 2, 3]) {
        const out = await teacherPairs.host!(context(ex, weights, logs, step), p, {});
        const xs = out.x_s as Float32Array, target = out.target as Float32Array, cid = out.caption_id as Int32Array;
        assert.deepEqual([...(out.t as Float32Array)], new Array(6).fill(999));
        assert.deepEqual([...(out.alpha as Float32Array)], new Array(6).fill(0));
        assert.deepEqual([...(out.sigma as Float32Array)], new Array(6).fill(1));
        for (let i = 0; i < 6; i++) {
          const row = xs.subarray(i * PER, (i + 1) * PER);
          // Which of the bank's 5 noises this is (each pair's noise comes from its own stream).
          const j = [0, 1, 2, 3, 4].find((k) => {
            const z = new Rng(3).fold("teacher_pairs/noise").fold(k).normal(PER);
            return z.every((v, n) => v === row[n]);
          });
          assert.ok(j !== undefined, `step ${step} row ${i}: x_s is none of the bank's noises`);
          seen.add(j);
          const example = new Rng(3).fold("teacher_pairs").permutation(dataset.size)[j];
          assert.equal(cid[i], exampleCaption[example], `pair ${j}: caption id`);
          const text = await enc.encode([captions[cid[i]]]);
          const want = await sampleDdim(
            runner.denoiser("v", { ...text, length: enc.dims.length }),
            Float32Array.from(row),
            schedule,
            { steps: 2 },
          );
          const got = target.subarray(i * PER, (i + 1) * PER);
          let worst = 0;
          for (let n = 0; n < PER; n++) worst = Math.max(worst, Math.abs(got[n] - Math.max(-1, Math.min(1, want[n]))));
          assert.ok(worst < 1e-4, `pair ${j}: target differs from the teacher's sample by ${worst}`);
        }
      }
      assert.ok(seen.size >= 4, `18 draws of 5 pairs hit only ${[...seen]}`);
      assert.equal(logs.filter((l) => l.includes("made 5 teacher pairs")).length, 1, logs.join("\n"));

      const first = await teacherPairs.host!(context(ex, weights, logs, 1), p, {});
      // A new run (another executor) with the same teacher reads the cache and draws the same pairs.
      const again = await newRun(weights, U, p);
      assert.ok(again.logs.some((l) => l.includes("teacher pairs from")), again.logs.join("\n"));
      assert.deepEqual(again.out.target, first.target);
      assert.deepEqual(again.out.x_s, first.x_s);
      // Another teacher: the cache does not match, the bank is made again with other targets.
      const other = await newRun(teacherWeights(2), U, p);
      assert.ok(other.logs.some((l) => l.includes("made 5 teacher pairs")), other.logs.join("\n"));
      assert.notDeepEqual(other.out.target, first.target);
      assert.deepEqual(other.out.x_s, first.x_s);
      // The same weights in another architecture (one attention head instead of two): a new bank too.
      const heads = await newRun(weights, { ...U, heads: 1 }, p);
      assert.ok(heads.logs.some((l) => l.includes("made 5 teacher pairs")), heads.logs.join("\n"));
      // A cache folder that cannot be made (a file is in the way): the bank is made and used, just not cached.
      await Deno.writeTextFile(`${cache}/file`, "");
      const blocked = await newRun(weights, U, { ...p, cache: `${cache}/file/sub` });
      assert.ok(blocked.logs.some((l) => /made 5 teacher pairs in .* \(not cached: /.test(l)), blocked.logs.join("\n"));
      assert.deepEqual(blocked.out.target, first.target);
    } finally {
      await runner.dispose();
      await ex.close();
      await Deno.remove(cache, { recursive: true });
    }
  },
);

Deno.test(
  "teacher_pairs with the ADD sampler: each pair's sample from its own noise streams, whatever the chunking",
  opts,
  async () => {
    const base = { model: "teacher", dataset: "d", pairs: 5, batch: 5, sampler: "add", steps: 3, cache: false };
    const weights = teacherWeights(4);
    // Made 2 at a time (the last chunk padded) and all 5 at once: the same bank.
    const by2 = await newRun(weights, U, teacherPairs.params.parse({ ...base, gen_batch: 2 }));
    const by5 = await newRun(weights, U, teacherPairs.params.parse({ ...base, gen_batch: 5 }));
    assert.ok(by2.logs.some((l) => l.includes("(ADD 3 steps)")), by2.logs.join("\n"));
    const ex = await createExecutor("cpu");
    const enc = await loadCaptionEncoder("models/text_encoder");
    const runner = await UNetRunner.create(ex, U, weights, 1, enc.dims.length);
    const schedule = makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true });
    try {
      const xs = by2.out.x_s as Float32Array, cid = by2.out.caption_id as Int32Array;
      const got = by2.out.target as Float32Array, other = by5.out.target as Float32Array;
      for (let i = 0; i < 5; i++) {
        const row = xs.subarray(i * PER, (i + 1) * PER);
        const j = [0, 1, 2, 3, 4].find((k) =>
          new Rng(3).fold("teacher_pairs/noise").fold(k).normal(PER).every((v, n) => v === row[n])
        )!;
        // Pair j's re-noising draws: stream (seed, "teacher_pairs/add", j, draw).
        let draw = 0;
        const rng = { normal: (n: number) => new Rng(3).fold("teacher_pairs/add").fold(j).fold(draw++).normal(n) };
        const text = await enc.encode([captions[cid[i]]]);
        const d = runner.denoiser("v", { ...text, length: enc.dims.length });
        const want = await sampleAdd(d, Float32Array.from(row), schedule, { steps: 3, rng });
        assert.equal(draw, 2, "3 ADD steps re-noise twice");
        let worst = 0, vsChunk = 0;
        for (let n = 0; n < PER; n++) {
          worst = Math.max(worst, Math.abs(got[i * PER + n] - Math.max(-1, Math.min(1, want[n]))));
          vsChunk = Math.max(vsChunk, Math.abs(got[i * PER + n] - other[i * PER + n]));
        }
        assert.ok(worst < 1e-4, `pair ${j}: target differs from its ADD sample by ${worst}`);
        assert.ok(vsChunk < 1e-4, `pair ${j}: made 2 or 5 at a time differs by ${vsChunk}`);
      }
      // DDIM from the same noise is another bank.
      const ddim = await newRun(weights, U, teacherPairs.params.parse({ ...base, sampler: "ddim", gen_batch: 5 }));
      assert.notDeepEqual(ddim.out.target, by5.out.target);
    } finally {
      await runner.dispose();
      await ex.close();
    }
  },
);

Deno.test("teacher_pairs: typed outputs; a non-unet model, a wrong image size or no zero terminal SNR are rejected", () => {
  const datasets = { d: { name: "d", kind: "emoji", params: { split: "train", size: 32 } } };
  const models: Record<string, ModelInfo> = {
    teacher: { name: "teacher", kind: "unet", params: U, shapes: {} },
    mlp: { name: "mlp", kind: "mlp", params: {}, shapes: {} },
  };
  const types = (over: Record<string, unknown>, ds = datasets) =>
    teacherPairs.types({
      params: teacherPairs.params.parse({ model: "teacher", dataset: "d", batch: 4, ...over }),
      inputs: {},
      models,
      datasets: ds,
    });
  const t = types({});
  assert.deepEqual(t.x_s, { dtype: "f32", shape: [4, 3, 32, 32] });
  assert.deepEqual(t.target, { dtype: "f32", shape: [4, 3, 32, 32] });
  assert.deepEqual(t.caption_id, { dtype: "i32", shape: [4] });
  assert.deepEqual(t.alpha, { dtype: "f32", shape: [4, 1, 1, 1] });
  assert.throws(() => types({ model: "mlp" }), (e) => e instanceof StageTypeError && /must be a unet/.test(e.message));
  assert.throws(
    () => types({}, { d: { name: "d", kind: "emoji", params: { split: "train", size: 16 } } }),
    (e) => e instanceof StageTypeError && /holds images \[3,16,16\]/.test(e.message),
  );
  assert.throws(
    () => types({ schedule: { kind: "cosine", T: 1000, zeroTerminalSnr: false } }),
    (e) => e instanceof StageTypeError && /pure noise/.test(e.message),
  );
});
