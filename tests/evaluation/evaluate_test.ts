// The evaluation report: text fidelity and its chance level against brute-force references; an oracle generator
// (the real images themselves) scores top-1 = 1 and FID-proxy ≈ 0 on the judge (InceptionV3) and on the
// discriminator's MobileNetV2, also retrieving among a larger pool; shuffled real images keep FID ≈ 0 but drop top-1
// to exactly the share of prompts whose shuffled image shares their caption; the eval_report stage through a real
// (1-step) pipeline run on tiny random UNets writes a well-formed report whose numbers move with the weights; the
// `deno task evaluate` CLI on a saved UNet folder; the teacher cache's key holds the judge.
import assert from "node:assert/strict";
import { stringify } from "yaml";
import { createExecutor } from "../../engine/executors/auto.ts";
import { Rng } from "../../engine/rng.ts";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { evaluateCli } from "../../evaluate.ts";
import {
  chanceFidelity,
  type EvalReport,
  evaluateGenerators,
  PIXEL_POOL,
  pixelFeatures,
  reportMarkdown,
  textFidelity,
  toDisplayed,
} from "../../evaluation/evaluate.ts";
import { fidProxy, JUDGE_LABELS, JUDGE_SIZES } from "../../evaluation/fid.ts";
import { loadMobileNetV2, type MobileNet } from "../../models/mobilenet_v2.ts";
import { unet } from "../../models/unet.ts";
import { ConfigError, loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { shipTeacherRows } from "../../ship_teacher_rows.ts";
import { runQuiet } from "../helpers/run_quiet.ts";
import { emojiCaptionSets } from "../../evaluation/emoji_report.ts";
import "../../stages/mod.ts";
import { randomTinyUnet, TINY_UNET } from "../helpers/tiny_unet.ts";

const ORT = { sanitizeResources: false, sanitizeOps: false };
let netPromise: Promise<MobileNet> | undefined;
const mobilenet = () => netPromise ??= loadMobileNetV2();

let tmpRoot: string | null = null;
async function tmp(name: string): Promise<string> {
  tmpRoot ??= await Deno.makeTempDir({ dir: "/tmp", prefix: "evaluate_test-" });
  const d = `${tmpRoot}/${name}`;
  await Deno.mkdir(d, { recursive: true });
  return d;
}

// ---------------------------------------------------------------------------------------------------------------
// Pure parts against brute force.

/** Every k-subset of 0..m−1. */
function* subsets(m: number, k: number, from = 0, acc: number[] = []): Generator<number[]> {
  if (acc.length === k) {
    yield acc;
    return;
  }
  for (let i = from; i < m; i++) yield* subsets(m, k, i + 1, [...acc, i]);
}

Deno.test("textFidelity: top-k hits by caption match a full sort; chance level matches enumerating all k-subsets", () => {
  const rng = new Rng(7);
  const d = 5, m = 9, n = 12;
  // Repeated captions, and prompts among them: hits must be counted by caption, not by image.
  const realCaps = ["a", "b", "c", "a", "d", "e", "b", "f", "a"];
  const prompts = Array.from({ length: n }, (_, i) => realCaps[(i * 5) % m]);
  const real = rng.normal(m * d), gen = rng.normal(n * d);
  const ks = [1, 2, 3, 5, 20];
  const got = textFidelity(gen, prompts, real, realCaps, d, ks);
  const want = ks.map((k) => {
    let hits = 0;
    for (let i = 0; i < n; i++) {
      const order = Array.from({ length: m }, (_, j) => j).map((j) => {
        let s = 0;
        for (let t = 0; t < d; t++) s += (gen[i * d + t] - real[j * d + t]) ** 2;
        return { j, s };
      }).sort((a, b) => a.s - b.s);
      if (order.slice(0, k).some((o) => realCaps[o.j] === prompts[i])) hits++;
    }
    return hits / n;
  });
  assert.deepEqual(got, want);
  assert.ok(got[0] < 1 && got[4] === 1, `a real test: ${got}`);
  // A hand-made case in 1-D: 0.9 → real 1 ("x"): hit. 3.1 → 3 ("z"), then 2 ("y"): a top-2 hit only. 2.0 → 2 ("y"),
  // then 1 and 3 at the same distance, and the lower index 1 ("x") must come first: a top-2 hit, not only top-3.
  const r1 = textFidelity([0.9, 3.1, 2.0], ["x", "y", "x"], [0, 1, 2, 3, 10], ["w", "x", "y", "z", "v"], 1, [1, 2, 3]);
  assert.deepEqual(r1, [1 / 3, 1, 1]);

  for (const k of [1, 2, 3, 5]) {
    let sum = 0;
    for (const p of prompts) {
      let hit = 0, all = 0;
      for (const s of subsets(m, k)) {
        all++;
        if (s.some((j) => realCaps[j] === p)) hit++;
      }
      sum += hit / all;
    }
    const want = sum / prompts.length, have = chanceFidelity(prompts, realCaps, k);
    assert.ok(Math.abs(have - want) < 1e-12, `chance top-${k}: ${have} vs ${want}`);
  }
  assert.equal(chanceFidelity(["a", "b"], ["a", "b", "c", "d"], 1), 1 / 4);
});

Deno.test("pixelFeatures: block means per channel, against a loop over output cells; sizes below 8 kept whole", () => {
  const rng = new Rng(5);
  for (const [channels, size] of [[3, 32], [1, 16], [3, 4]]) {
    const n = 3, x = rng.normal(n * channels * size * size);
    const { f, dim } = pixelFeatures(x, channels, size);
    const p = Math.min(PIXEL_POOL, size), k = size / p;
    assert.equal(dim, channels * p * p);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < channels; c++) {
        for (let oy = 0; oy < p; oy++) {
          for (let ox = 0; ox < p; ox++) {
            let s = 0;
            for (let dy = 0; dy < k; dy++) {
              for (let dx = 0; dx < k; dx++) s += x[((i * channels + c) * size + oy * k + dy) * size + ox * k + dx];
            }
            const got = f[i * dim + (c * p + oy) * p + ox];
            assert.ok(Math.abs(got - s / (k * k)) < 1e-6, `${channels}×${size}: ${got} vs ${s / (k * k)}`);
          }
        }
      }
    }
  }
  assert.throws(() => pixelFeatures(new Float32Array(3 * 12 * 12), 3, 12), /not a multiple of 8/);
});

Deno.test("toDisplayed: clamps to [-1, 1] and rounds to the 8-bit grid; grid values pass unchanged", () => {
  const grid = Float32Array.from({ length: 256 }, (_, v) => v / 127.5 - 1);
  assert.deepEqual(toDisplayed(Float32Array.from(grid)), grid);
  const x = toDisplayed(Float32Array.of(-7, 3, 0.001, -Infinity, NaN));
  assert.deepEqual(Array.from(x), [-1, 1, Math.fround(128 / 127.5 - 1), -1, NaN], "NaN stays visible");
});

// ---------------------------------------------------------------------------------------------------------------
// Oracle and shuffled generators on real emoji.

Deno.test({
  name: "evaluate: the real images score top-1 1.0 and FID ≈ 0 on both networks; shuffled ones keep FID ≈ 0 and " +
    "lose top-1; a retrieval pool",
  ...ORT,
  fn: async () => {
    const net = await mobilenet();
    const base = await emojiCaptionSets({ size: 32 }, { limit: 12 });
    assert.deepEqual(base.map((s) => [s.name, s.captions.length]), [["heldout", 12], ["train", 12]]);
    const n = 12, per = 3 * 32 * 32;
    // Text fidelity retrieves among both sets' real images: 24, so the chance level halves.
    const pool = {
      images: Float32Array.from([...base[0].images, ...base[1].images]),
      captions: [...base[0].captions, ...base[1].captions],
    };
    const sets = base.map((s) => ({ ...s, retrieval: pool }));
    const perm = new Rng(3).permutation(n);
    const ex = await createExecutor("cpu");
    try {
      const report = await evaluateGenerators({
        executor: ex,
        sets,
        generators: [
          { name: "oracle", generate: (_c, _s, set) => Promise.resolve(Float32Array.from(set.images)) },
          {
            name: "shuffled",
            generate: (_c, _s, set) => {
              const out = new Float32Array(set.images.length);
              for (let i = 0; i < n; i++) out.set(set.images.subarray(perm[i] * per, (perm[i] + 1) * per), i * per);
              return Promise.resolve(out);
            },
          },
        ],
      });
      // The default judge is InceptionV3; the discriminator's MobileNetV2 is the second FID.
      assert.deepEqual(report.judge, {
        net: "inception_v3",
        label: JUDGE_LABELS.inception_v3,
        size: JUDGE_SIZES.inception_v3,
        dim: 2048,
      });
      assert.deepEqual(report.discNet, { net: "mobilenet_v2", label: JUDGE_LABELS.mobilenet_v2, size: 96, dim: 1280 });
      assert.equal(report.featureDim, 2048);
      const [ha, ta] = sets.map((s) => ({ data: s.images, shape: [n, 3, 32, 32] as const }));
      const floor = report.floor!.fid, floorDisc = report.floor!.discFid!;
      const direct = await fidProxy(ex, ha, ta), directDisc = await fidProxy(ex, ha, ta, { net });
      assert.ok(floor > 1 && floorDisc > 1, `held-out vs train real images differ: floors ${floor}, ${floorDisc}`);
      assert.ok(Math.abs(floor - direct) < 1e-4 * direct, `floor ${floor} vs fidProxy ${direct}`);
      assert.ok(Math.abs(floorDisc - directDisc) < 1e-4 * directDisc, `disc floor ${floorDisc} vs ${directDisc}`);
      assert.notEqual(floor, floorDisc, "two networks, two distances");
      const [oracle, shuffled] = report.rows;
      for (const s of sets) {
        const o = oracle.sets[s.name], sh = shuffled.sets[s.name];
        assert.equal(o.top1, 1, `oracle top-1 on ${s.name}`);
        assert.equal(o.top5, 1);
        assert.ok(Math.abs(o.fid) < 1e-6 * floor, `oracle FID ${o.fid} on ${s.name}`);
        assert.ok(Math.abs(o.discFid!) < 1e-6 * floorDisc, `oracle disc FID ${o.discFid} on ${s.name}`);
        // The same images in another order: the FID proxy cannot tell, text fidelity can.
        assert.ok(Math.abs(sh.fid) < 1e-6 * floor, `shuffled FID ${sh.fid} on ${s.name}`);
        assert.ok(Math.abs(o.pixelFd) < 1e-9 && Math.abs(sh.pixelFd) < 1e-9, `pixel FD ${o.pixelFd}, ${sh.pixelFd}`);
        const same = s.captions.filter((c, i) => s.captions[perm[i]] === c).length;
        assert.equal(sh.top1, same / n, `shuffled top-1 on ${s.name}`);
        assert.ok(sh.top1 <= 0.25, `shuffled top-1 ${sh.top1} near chance`);
        const info = report.sets.find((x) => x.name === s.name)!;
        assert.equal(info.retrieval, 2 * n);
        assert.ok(Math.abs(info.chanceTop1 - chanceFidelity(s.captions, pool.captions, 1)) < 1e-15);
        assert.ok(info.chanceTop1 >= 1 / (2 * n) - 1e-12 && info.chanceTop1 < 0.1, `chance ${info.chanceTop1}`);
      }
      // The judge chosen by options: MobileNetV2 as judge has no second column (it would be the same network).
      const mob = await evaluateGenerators({
        executor: ex,
        sets: base,
        fid: { net },
        generators: [{ name: "oracle", generate: (_c, _s, set) => Promise.resolve(Float32Array.from(set.images)) }],
      });
      assert.equal(mob.judge.net, "mobilenet_v2");
      assert.equal(mob.discNet, null);
      assert.equal(mob.rows[0].sets.heldout.discFid, null);
      assert.ok(Math.abs(mob.floor!.fid - directDisc) < 1e-4 * directDisc, "MobileNetV2 judge floor");
      assert.equal(ex.liveBuffers(), 0, "evaluate frees its buffers");
    } finally {
      await ex.close();
    }
  },
});

// ---------------------------------------------------------------------------------------------------------------
// The stage in a pipeline run, and the CLI.

const TINY = TINY_UNET, randomUnet = randomTinyUnet;

async function saveUnet(path: string, w: Record<string, Float32Array>): Promise<string> {
  const shapes = unet.shapes(unet.params.parse(TINY));
  await writeSafetensors(
    path,
    Object.fromEntries(Object.entries(w).map(([k, v]) => [k, { data: v, shape: shapes[k] }])),
  );
  return path;
}

function configText(
  out: string,
  seed: number,
  report: Record<string, unknown>,
  student: Record<string, unknown> = { kind: "unet", params: TINY },
  teacher: Record<string, unknown> = { kind: "unet", params: TINY },
): string {
  return stringify({
    version: 1,
    // The run's cache folder beside the outputs: runs of one test share it, and nothing lands in the project's.
    run: { seed, executor: "cpu", steps: 1, out, log_every: 1, cache: `${out}/../run_cache` },
    models: { teacher, student },
    stages: {
      report: { kind: "eval_report", at: "end", params: { student: "student", teacher: "teacher", ...report } },
    },
  });
}

const ROWS = ["teacher 1-step", "teacher 2-step", "student 1-step", "student 2-step"];
const PARAMS = { teacher_steps: [1, 2], student_steps: [1, 2], limit: 8, batch: 5 };

/** Fréchet distances as the markdown shows them: 2 decimals, 3 below 1. */
const fd = (v: number) => v.toFixed(Math.abs(v) < 1 ? 3 : 2);

function checkReport(r: EvalReport & { step: number }, md: string, n: number): void {
  assert.equal(r.step, 1);
  assert.equal(r.executor, "cpu");
  assert.ok(!Number.isNaN(Date.parse(r.date)));
  assert.deepEqual(r.sets.map((s) => [s.name, s.images]), [["heldout", n], ["train", n]]);
  assert.deepEqual(r.rows.map((x) => x.name), ROWS);
  assert.ok(Number.isFinite(r.floor!.fid) && r.floor!.fid > 0);
  assert.ok(Number.isFinite(r.floor!.discFid) && r.floor!.discFid! > 0);
  assert.equal(r.judge.net, "inception_v3");
  assert.equal(r.discNet?.net, "mobilenet_v2");
  for (const row of r.rows) {
    assert.ok(row.msPerImage > 0 && Number.isFinite(row.msPerImage), `${row.name} ms/image ${row.msPerImage}`);
    for (const s of ["heldout", "train"]) {
      const x = row.sets[s];
      assert.equal(x.images, n);
      assert.ok(Number.isFinite(x.fid) && x.fid > 0, `${row.name} ${s} FID ${x.fid}`);
      assert.ok(Number.isFinite(x.discFid) && x.discFid! > 0, `${row.name} ${s} disc FID ${x.discFid}`);
      for (const v of [x.top1, x.top5]) assert.ok(Number.isInteger(v * n) && v >= 0 && v <= 1, `${v}`);
      assert.ok(x.top5 >= x.top1);
      assert.equal(x.nonFinite, 0);
    }
  }
  const header = md.split("\n").find((l) => l.startsWith("| generator"))!;
  assert.equal(
    header,
    "| generator | held-out FID-proxy (InceptionV3) | train FID-proxy (InceptionV3) " +
      "| held-out FID on the discriminator's own network (MobileNetV2) " +
      "| train FID on the discriminator's own network (MobileNetV2) | held-out pixel FD | train pixel FD " +
      "| held-out top-1 (InceptionV3) | held-out top-5 (InceptionV3) | train top-1 (InceptionV3) " +
      "| train top-5 (InceptionV3) | ms/image |",
  );
  for (const name of ROWS) {
    const line = md.split("\n").find((l) => l.startsWith(`| ${name} |`));
    assert.ok(line && line.split("|").length === 14, `markdown row of ${name}`);
    // The markdown shows the JSON's numbers.
    const row = r.rows.find((x) => x.name === name)!;
    assert.ok(
      line.includes(` ${fd(row.sets.heldout.fid)} `) && line.includes(` ${row.msPerImage.toFixed(1)} |`) &&
        line.includes(` ${fd(row.sets.train.pixelFd)} `) && line.includes(` ${fd(row.sets.train.discFid!)} `),
    );
  }
  assert.ok(
    md.includes(
      `floors (held-out real vs train real): FID-proxy ${fd(r.floor!.fid)}, FID on the discriminator's ` +
        `network ${fd(r.floor!.discFid!)}, pixel FD ${fd(r.floor!.pixelFd)}`,
    ),
  );
  assert.ok(md.includes("- executor: cpu") && md.includes("- step: 1"));
  assert.ok(md.includes(`FID-proxy: Fréchet distance of the judge's features: ${r.judge.label}, 2048-d`));
  assert.ok(md.includes(`FID on the discriminator's own network: the same distance on ${r.discNet!.label}`));
}

Deno.test({
  name: "eval_report: a 1-step run of tiny random UNets writes report.md/json; other weights give other numbers",
  ...ORT,
  fn: async () => {
    const reports: (EvalReport & { step: number })[] = [];
    for (const seed of [0, 1]) {
      const out = await tmp(`run-${seed}`);
      const init = async (who: string, s: number) => ({
        kind: "unet",
        params: TINY,
        init: await saveUnet(`${out}/${who}-init.safetensors`, randomUnet(s)),
      });
      const loaded = loadConfig(
        "eval.yaml",
        configText(out, seed, PARAMS, await init("student", 10 + seed), await init("teacher", 20 + seed)),
      );
      await runQuiet(loaded);
      const r = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
      checkReport(r, await Deno.readTextFile(`${out}/report.md`), 8);
      assert.deepEqual([...Deno.readDirSync(out)].filter((e) => e.name.includes(".tmp-")), [], "atomic writes");
      reports.push(r);
    }
    const [a, b] = reports;
    assert.equal(a.floor!.fid, b.floor!.fid, "the real images do not depend on the weights");
    for (let i = 0; i < ROWS.length; i++) {
      assert.notEqual(a.rows[i].sets.heldout.fid, b.rows[i].sets.heldout.fid, `${ROWS[i]} moves with the weights`);
    }
    // One weights set, different samplers and step counts: different images.
    assert.notEqual(a.rows[0].sets.heldout.fid, a.rows[1].sets.heldout.fid);
  },
});

Deno.test({
  name: "eval_report: the teacher's rows are cached keyed by the judge, in the run's cache; shipped only by the task",
  ...ORT,
  fn: async () => {
    const root = await tmp("cache");
    const rel = `.cache/evaluate_test-${crypto.randomUUID()}.json`;
    const file = new URL(`../../${rel}`, import.meta.url);
    const config = async (judge: string, tag: string) => {
      const out = await tmp(`cache/${tag}`);
      const params = { teacher_steps: [1], student_steps: [1], limit: 4, teacher_cache: rel, judge };
      return { out, loaded: loadConfig("eval.yaml", configText(out, 0, params)) };
    };
    const run = async (judge: string, tag: string) => {
      const { out, loaded } = await config(judge, tag);
      await runQuiet(loaded);
      return JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    };
    try {
      const a = await run("mobilenet_v2", "a");
      assert.equal(a.teacher_rows, "computed in this run");
      await assert.rejects(() => Deno.stat(file), Deno.errors.NotFound, "a run never writes the shipped file");
      assert.equal([...Deno.readDirSync(`${root}/run_cache/teacher_rows`)].length, 1, "the rows are cached");
      const b = await run("mobilenet_v2", "b");
      assert.ok(b.teacher_rows.startsWith(`cached ${a.date} on cpu (${root}/run_cache/teacher_rows/`), b.teacher_rows);
      assert.equal(b.rows[0].sets.heldout.fid, a.rows[0].sets.heldout.fid);
      assert.notEqual(b.rows[1].sets.heldout.fid, undefined, "the student row is computed");
      const c = await run("inception_v3", "c");
      assert.equal(c.teacher_rows, "computed in this run", "another judge does not reuse the rows");
      assert.equal(c.judge.net, "inception_v3");
      assert.notEqual(c.rows[0].sets.heldout.fid, a.rows[0].sets.heldout.fid);

      // The task ships both row sets; with the cache gone, a run reads them from the shipped file.
      const ship = await config("mobilenet_v2", "d");
      const shipped = await shipTeacherRows(ship.loaded, planPipeline(ship.loaded));
      assert.deepEqual(shipped.map((s) => [s.stage, s.keys.length]), [["report", 2]]);
      assert.equal(Object.keys(JSON.parse(await Deno.readTextFile(file))).length, 2);
      await Deno.remove(`${root}/run_cache`, { recursive: true });
      await runQuiet(ship.loaded);
      const d = JSON.parse(await Deno.readTextFile(`${ship.out}/report.json`));
      assert.ok(d.teacher_rows.startsWith(`cached ${a.date} on cpu (`) && d.teacher_rows.endsWith(`${rel})`));
      assert.equal(d.rows[0].sets.heldout.fid, a.rows[0].sets.heldout.fid);
      // Another teacher's rows are not shipped: nothing is cached for it.
      const other = loadConfig("eval.yaml", configText(ship.out, 1, { teacher_cache: rel }));
      assert.deepEqual((await shipTeacherRows(other, planPipeline(other))).map((s) => s.keys.length), [0]);
    } finally {
      await Deno.remove(file).catch(() => {});
    }
  },
});

Deno.test({
  name: "eval_report: a list of teacher guidance scales gives one teacher row per scale, each sampled with it",
  ...ORT,
  fn: async () => {
    const out = await tmp("guidance");
    const params = { teacher_steps: [2], student_steps: [], teacher_guidance: [1, 3], limit: 4, judge: "mobilenet_v2" };
    // Random weights everywhere: zero-initialised output projections would make the text, and guidance, inert.
    const teacher = { kind: "unet", params: TINY, init: await saveUnet(`${out}/teacher.safetensors`, randomUnet(7)) };
    const loaded = loadConfig("eval.yaml", configText(out, 0, params, undefined, teacher));
    await runQuiet(loaded);
    const r = JSON.parse(await Deno.readTextFile(`${out}/report.json`)) as EvalReport;
    assert.deepEqual(r.rows.map((x) => [x.name, x.guidance]), [["teacher 2-step cfg 1", 1], [
      "teacher 2-step cfg 3",
      3,
    ]]);
    // Guidance mixes in the empty caption's prediction, so the images, and their scores, differ.
    assert.notEqual(r.rows[0].sets.heldout.fid, r.rows[1].sets.heldout.fid);
  },
});

Deno.test("eval_report: config errors name the key (not a unet, wrong size, a split given, nothing to evaluate)", () => {
  const cases: [string, Record<string, unknown>, Record<string, unknown> | undefined, RegExp][] = [
    [
      "size",
      {},
      { kind: "unet", params: { ...TINY, size: 16 } },
      /eval\.yaml:\d+:\d+: .*model "student" makes 3×16×16 images; the emoji sets are 3×32×32/,
    ],
    ["kind", {}, { kind: "mlp", params: { in: 2, out: 2 } }, /model "student" is a mlp, not a denoiser/],
    ["split", { dataset: { split: "train" } }, undefined, /dataset\.split.*picks the splits itself/],
    ["bad emoji param", { dataset: { size: 3 } }, undefined, /dataset\.size/],
    ["empty", { teacher_steps: [], student_steps: [] }, undefined, /nothing to evaluate/],
    [
      "text width",
      { text_encoder: "use-lite" },
      undefined,
      /eval\.yaml:\d+:\d+: .*model "student" takes text of width 64\/64; the text encoder "use-lite" gives 512\/512/,
    ],
  ];
  for (const [what, params, student, re] of cases) {
    const loaded = loadConfig("eval.yaml", configText("/tmp/unused", 0, params, student));
    assert.throws(() => planPipeline(loaded), (e) => e instanceof ConfigError && re.test(e.message), what);
  }
  // The control: the same config without the fault plans.
  planPipeline(loadConfig("eval.yaml", configText("/tmp/unused", 0, {})));
});

Deno.test({
  name: "deno task evaluate: a saved UNet folder gives the same report shape, teacher and student rows",
  ...ORT,
  fn: async () => {
    const dir = await tmp("folder"), out = await tmp("cli-out");
    await saveUnet(`${dir}/unet.safetensors`, randomUnet(5));
    await Deno.writeTextFile(
      `${dir}/config.yaml`,
      stringify({
        version: 1,
        models: { unet: { kind: "unet", params: TINY } },
        data: { emoji: { kind: "emoji", params: { split: "train", size: 32 } } },
        stages: {
          noise: {
            kind: "diffusion_noise",
            params: { schedule: { kind: "cosine", zeroTerminalSnr: true }, prediction: "v" },
          },
        },
      }),
    );
    await Deno.writeTextFile(`${dir}/state.json`, JSON.stringify({ step: 1 }));
    const code = await evaluateCli([
      "--teacher",
      dir,
      "--student",
      dir,
      "--steps-teacher",
      "1,2",
      "--steps-student",
      "1,2",
      "--limit",
      "8",
      "--batch",
      "5",
      "--executor",
      "cpu",
      "--out",
      out,
    ]);
    assert.equal(code, 0);
    const r = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    checkReport(r, await Deno.readTextFile(`${out}/report.md`), 8);
    assert.equal(r.teacher, `${dir}/unet.safetensors`);
    // Teacher and student are the same UNet here, but DDIM and the ADD sampler differ after the first step only.
    assert.equal(r.rows[0].sets.heldout.fid, r.rows[2].sets.heldout.fid, "1-step DDIM = 1-step ADD = x̂0(xT)");
    assert.notEqual(r.rows[1].sets.heldout.fid, r.rows[3].sets.heldout.fid);
    assert.equal(await evaluateCli(["--teacher", dir, "--limit", "1"]), 1, "a limit below 2 is refused");
  },
});

Deno.test("reportMarkdown: every set's columns in order, networks named, meta lines, non-finite numbers shown", () => {
  const r: EvalReport = {
    executor: "x",
    date: "2026-01-01T00:00:00.000Z",
    featureDim: 4,
    judge: { net: "inception_v3", label: "J", size: 160, dim: 4 },
    discNet: { net: "mobilenet_v2", label: "D", size: 96, dim: 3 },
    sets: [{ name: "a", label: "A", images: 2, captions: 2, retrieval: 5, chanceTop1: 0.5, chanceTop5: 1 }],
    floor: null,
    rows: [{
      name: "g",
      sampler: "ddim",
      steps: 3,
      guidance: 2,
      msPerImage: 1.25,
      sets: { a: { fid: NaN, discFid: 4.5, pixelFd: 0.35, top1: 0.5, top5: 1, images: 2, nonFinite: 1 } },
    }],
  };
  const md = reportMarkdown(r, { step: 7 });
  assert.ok(md.includes(
    "| generator | A FID-proxy (InceptionV3) | A FID on the discriminator's own network (MobileNetV2) | A pixel FD " +
      "| A top-1 (InceptionV3) | A top-5 (InceptionV3) | ms/image |",
  ));
  assert.ok(
    md.includes("| g | NaN | 4.50 | 0.350 | 50.0% | 100.0% | 1.3 |") ||
      md.includes("| g | NaN | 4.50 | 0.350 | 50.0% | 100.0% | 1.2 |"),
  );
  assert.ok(md.includes("g = ddim 3 steps, guidance 2") && md.includes("- step: 7") && !md.includes("floor"));
  assert.ok(md.includes("**g produced NaN or infinite values** in 1 A images."));
  assert.ok(md.includes("judge's features: J, 4-d pooled features, images upsampled 32² → 160²"));
  assert.ok(md.includes("same distance on D, 3-d pooled features, images upsampled 32² → 96²"));
  assert.ok(md.includes("- A: 2 images, 2 distinct captions, retrieved among 5 real images; chance top-1 50.0%"));
  // Without the second network its columns go.
  const md2 = reportMarkdown({ ...r, discNet: null }, {});
  assert.ok(md2.includes("| generator | A FID-proxy (InceptionV3) | A pixel FD | A top-1 (InceptionV3) |"));
  assert.ok(md2.includes("| g | NaN | 0.350 | 50.0% |") && !md2.includes("discriminator's own network"));
});
