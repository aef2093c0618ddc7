// teacher_pairs (stages/teacher_pairs.ts): every drawn pair is (the bank's noise, its caption, the teacher's DDIM
// sample from exactly that noise and caption) — checked against the teacher sampled alone on each pair, so the
// batching and the padding of the last chunk cannot mix pairs up; the student's inputs are pure noise at T−1; the cache
// is read back for the same teacher and not for another; wrong models and schedules are rejected at typing.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Executor } from "../../engine/executors/executor.ts";
import { Rng } from "../../engine/rng.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { cfg, sampleAdd, sampleDdim } from "../../models/diffusion/samplers.ts";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { unet } from "../../models/unet.ts";
import type { Dataset, HostContext, ModelInfo } from "../../pipeline/stage.ts";
import { RunMemory } from "../../pipeline/stage_state.ts";
import { hostContext } from "../helpers/host_context.ts";
import { StageTypeError } from "../../pipeline/stage.ts";
import { teacherPairs } from "../../stages/teacher_pairs.ts";
import { loadCaptionEncoder } from "../../models/caption_encoder.ts";
import { randomTinyUnet, TINY_UNET } from "../helpers/tiny_unet.ts";

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

/** Each run's memory: a test's run is its executor (a new one is a new run, or a resume). */
const memories = new WeakMap<Executor, RunMemory>();
const memoryOf = (ex: Executor) => {
  let m = memories.get(ex);
  if (!m) memories.set(ex, m = new RunMemory());
  return m;
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
  return hostContext("pairs", {
    seed: 3,
    step,
    rng: new Rng(3).fold("host/pairs").fold(step),
    dataset: () => Promise.resolve(dataset),
    executor,
    models,
    readModel: () => Promise.resolve(weights),
    log: (l) => logs.push(l),
    memory: memoryOf(executor),
  });
}

/** Which of a 5-pair bank's noises (seed 3) this row is: each pair's noise comes from its own stream. */
const pairOf = (row: Float32Array): number | undefined =>
  [0, 1, 2, 3, 4].find((k) => new Rng(3).fold("teacher_pairs/noise").fold(k).normal(PER).every((v, n) => v === row[n]));

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
    const enc = await loadCaptionEncoder(p.text_encoder.model);
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
          const j = pairOf(row);
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
        const j = pairOf(row)!;
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

Deno.test(
  "teacher_pairs with guidance: each target is the teacher's guided DDIM sample (cfg with the empty caption)",
  opts,
  async () => {
    const cache = await Deno.makeTempDir({ prefix: "teacher_pairs_test-" });
    const base = { model: "teacher", dataset: "d", pairs: 5, batch: 5, steps: 2, gen_batch: 2, cache };
    const weights = teacherWeights(5);
    const plain = await newRun(weights, U, teacherPairs.params.parse(base));
    // The guided bank is keyed apart from the unguided one in the same cache.
    const guided = await newRun(weights, U, teacherPairs.params.parse({ ...base, guidance: 3 }));
    assert.ok(guided.logs.some((l) => l.includes("made 5 teacher pairs")), guided.logs.join("\n"));
    assert.ok(guided.logs.some((l) => l.includes("guidance 3")), guided.logs.join("\n"));
    const ex = await createExecutor("cpu");
    const enc = await loadCaptionEncoder("models/text_encoder");
    const runner = await UNetRunner.create(ex, U, weights, 1, enc.dims.length);
    const schedule = makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true });
    try {
      const empty = await enc.encode([""]);
      const xs = guided.out.x_s as Float32Array, cid = guided.out.caption_id as Int32Array;
      const got = guided.out.target as Float32Array;
      for (let i = 0; i < 5; i++) {
        const row = xs.subarray(i * PER, (i + 1) * PER);
        const text = await enc.encode([captions[cid[i]]]);
        const d = cfg(
          runner.denoiser("v", { ...text, length: enc.dims.length }),
          runner.denoiser("v", { ...empty, length: enc.dims.length }),
          3,
        );
        const want = await sampleDdim(d, Float32Array.from(row), schedule, { steps: 2 });
        let worst = 0;
        for (let n = 0; n < PER; n++) {
          worst = Math.max(worst, Math.abs(got[i * PER + n] - Math.max(-1, Math.min(1, want[n]))));
        }
        assert.ok(worst < 1e-4, `pair ${i}: target differs from the guided sample by ${worst}`);
      }
      assert.deepEqual(guided.out.x_s, plain.out.x_s);
      assert.notDeepEqual(guided.out.target, plain.out.target);
    } finally {
      await runner.dispose();
      await ex.close();
      await Deno.remove(cache, { recursive: true });
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
  assert.throws(
    () => types({ model: "mlp" }),
    (e) => e instanceof StageTypeError && /is a mlp, not a denoiser/.test(e.message),
  );
  assert.throws(
    () => types({}, { d: { name: "d", kind: "emoji", params: { split: "train", size: 16 } } }),
    (e) => e instanceof StageTypeError && /holds images \[3,16,16\]/.test(e.message),
  );
  assert.throws(
    () => types({ schedule: { kind: "cosine", T: 1000, zeroTerminalSnr: false } }),
    (e) => e instanceof StageTypeError && /pure noise/.test(e.message),
  );
  assert.equal(t.teacher_target, undefined, "teacher_target only with refresh");
  assert.deepEqual(types({ refresh: { at: [5], model: "teacher" } }).teacher_target, t.target);
  assert.throws(
    () => types({ refresh: { at: [5], model: "mlp" } }),
    (e) =>
      e instanceof StageTypeError && /must be a denoiser/.test(e.message) && e.at.join(".") === "params.refresh.model",
  );
  assert.throws(
    () => types({ refresh: { at: [5, 5], model: "teacher" } }),
    (e) => e instanceof StageTypeError && /not ascending/.test(e.message),
  );
});

Deno.test(
  "teacher_pairs refresh: after each `at` step the targets are the model's EMA ADD samples; a resume reads them back",
  opts,
  async () => {
    const out = await Deno.makeTempDir({ prefix: "teacher_pairs_refresh-" });
    const p = teacherPairs.params.parse({
      model: "teacher",
      dataset: "d",
      pairs: 5,
      batch: 4,
      steps: 2,
      gen_batch: 5,
      cache: false,
      refresh: { at: [2], model: "student", steps: 2 },
    });
    const teacherW = teacherWeights(5), studentW = teacherWeights(6), laterW = teacherWeights(7);
    const asked: string[] = [];
    /** A run's step: its own executor when `ex` is not given (a new run, or a resume), the student's weights `sw`. */
    const stepOf = (ex: Executor, step: number, sw: Record<string, Float32Array>, logs: string[]) => {
      const ctx = context(ex, teacherW, logs, step);
      ctx.out = out;
      ctx.models.student = { ...ctx.models.teacher, name: "student" };
      ctx.readModel = (m, o) => {
        asked.push(`${m}${o?.ema ? ".ema" : ""}`);
        return Promise.resolve(m === "student" ? sw : teacherW);
      };
      return teacherPairs.host!(ctx, p, {});
    };
    const ex = await createExecutor("cpu");
    const enc = await loadCaptionEncoder("models/text_encoder");
    const runner = await UNetRunner.create(ex, U, studentW, 1, enc.dims.length);
    const teacherRunner = await UNetRunner.create(ex, U, teacherW, 1, enc.dims.length);
    const schedule = makeSchedule(p.schedule);
    /**
     * Checks every row of a step's `port` against the student's own ADD sample (2 steps, the pair's stream) or the
     * teacher's DDIM sample from the row's noise and caption.
     */
    const checkRows = async (o: Record<string, unknown>, port: string, who: "student" | "teacher", what: string) => {
      const xs = o.x_s as Float32Array, cid = o.caption_id as Int32Array, got = o[port] as Float32Array;
      for (let i = 0; i < 4; i++) {
        const row = xs.subarray(i * PER, (i + 1) * PER);
        const j = pairOf(row)!;
        let draw = 0;
        const rng = { normal: (n: number) => new Rng(3).fold("teacher_pairs/add").fold(j).fold(draw++).normal(n) };
        const text = { ...(await enc.encode([captions[cid[i]]])), length: enc.dims.length };
        const want = who === "student"
          ? await sampleAdd(runner.denoiser("v", text), row, schedule, { steps: 2, rng })
          : await sampleDdim(teacherRunner.denoiser("v", text), row, schedule, { steps: 2 });
        let worst = 0;
        for (let n = 0; n < PER; n++) {
          worst = Math.max(worst, Math.abs(got[i * PER + n] - Math.max(-1, Math.min(1, want[n]))));
        }
        assert.ok(worst < 1e-4, `${what}, pair ${j}: ${port} differs from the ${who}'s sample by ${worst}`);
      }
    };
    try {
      const logs: string[] = [];
      // Steps 1 and 2: the teacher's targets, also given as teacher_target.
      const s1 = await stepOf(ex, 1, studentW, logs), s2 = await stepOf(ex, 2, studentW, logs);
      assert.deepEqual(s1.teacher_target, s1.target);
      assert.deepEqual(s2.teacher_target, s2.target);
      assert.deepEqual(asked, ["teacher"]);
      // Step 3, after the refresh step: the student's EMA samples; teacher_target still the teacher's.
      const s3 = await stepOf(ex, 3, studentW, logs);
      assert.deepEqual(asked, ["teacher", "student.ema"]);
      await checkRows(s3, "target", "student", "step 3");
      await checkRows(s3, "teacher_target", "teacher", "step 3");
      await checkRows(s2, "target", "teacher", "step 2");
      // Step 4 of the same run: the same remade targets, not made again.
      await stepOf(ex, 4, laterW, logs);
      assert.equal(asked.length, 2);
      // The remade targets are the stage's state, which a checkpoint saves.
      const saved = memoryOf(ex).entries();
      assert.deepEqual(saved.map(([k]) => k).sort(), ["stage.pairs.target", "stage.pairs.target_after"]);
      assert.deepEqual([...saved.find(([k]) => k === "stage.pairs.target_after")![1]], [2]);

      // A resume at step 4 (a new executor) with other current weights: the restored targets are used, not remade.
      const ex2 = await createExecutor("cpu"), logs2: string[] = [];
      try {
        memoryOf(ex2).restore(saved);
        const r4 = await stepOf(ex2, 4, laterW, logs2);
        assert.equal(asked.length, 3, "the resumed run reads the teacher for its bank, not the student");
        assert.ok(!logs2.some((l) => l.includes("warning")), logs2.join("\n"));
        await checkRows(r4, "target", "student", "resumed at step 4");
      } finally {
        await ex2.close();
      }
      // Without that state the resume remakes them from the weights it has, and says so.
      const ex3 = await createExecutor("cpu"), logs3: string[] = [];
      try {
        const r4 = await stepOf(ex3, 4, laterW, logs3);
        assert.ok(logs3.some((l) => /warning: .* not in the run's state/.test(l)), logs3.join("\n"));
        await assert.rejects(() => checkRows(r4, "target", "student", "remade from other weights"), /differs from/);
      } finally {
        await ex3.close();
      }
    } finally {
      await runner.dispose();
      await teacherRunner.dispose();
      await ex.close();
      await Deno.remove(out, { recursive: true });
    }
  },
);
