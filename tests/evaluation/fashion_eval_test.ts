// The Fashion-MNIST evaluation (models/fashion_eval.ts) and its stage (stages/fashion_report.ts): real test images
// served as a generator score high accuracy and a small Fréchet distance, the same images ignoring the prompt score
// chance accuracy with a small distance still, noise a large distance; the floor is class-balanced training images; a
// 1-step run of tiny random UNets writes fashion_report.json/md with one row per (steps, guidance) and finite numbers,
// and a rerun reuses the stored teacher rows and reproduces the student's; config errors name the key;
// add_fashion.yaml and teacher_fashion.yaml plan with the stage.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { stringify } from "yaml";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Executor } from "../../engine/executors/executor.ts";
import { Rng } from "../../engine/rng.ts";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { evaluateFashion, FASHION_JUDGE_LABEL, type FashionReport } from "../../evaluation/fashion_eval.ts";
import { type FashionJudge, fashionTestImages, loadFashionJudge } from "../../models/fashion_judge.ts";
import { unet } from "../../models/unet.ts";
import { ConfigError, loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { runQuiet } from "../helpers/run_quiet.ts";
import { FASHION_MNIST_CLASSES, FASHION_MNIST_DIR } from "../../datasets/fashion_mnist.ts";
import "../../stages/mod.ts";
import { randomTinyUnet, TINY_UNET } from "../helpers/tiny_unet.ts";

const ORT = { sanitizeResources: false, sanitizeOps: false };
const haveFashion = existsSync(`${FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz`) &&
  existsSync(`${FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz`);
if (!haveFashion) {
  console.warn(
    `fashion eval tests on real images skipped: ${FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)`,
  );
}

let exPromise: Promise<Executor> | undefined;
const cpu = () => exPromise ??= createExecutor("cpu");
let judgePromise: Promise<FashionJudge> | undefined;
const shipped = () => judgePromise ??= loadFashionJudge();
const PER = 3 * 32 * 32;

Deno.test({
  name: "evaluateFashion: real images as a generator score high; ignoring the prompt, chance; noise, a large FD",
  ignore: !haveFashion,
  ...ORT,
  fn: async () => {
    const { images, labels } = await fashionTestImages(3);
    const byClass: number[][] = FASHION_MNIST_CLASSES.map(() => []);
    labels.forEach((l, i) => byClass[l].push(i));
    const pick = (idx: number[]) => {
      const out = new Float32Array(idx.length * PER);
      idx.forEach((src, dst) => out.set(images.data.subarray(src * PER, (src + 1) * PER), dst * PER));
      return Promise.resolve(out);
    };
    const seen: { captions: string[]; seeds: number[] }[] = [];
    const report = await evaluateFashion({
      executor: await cpu(),
      judge: await shipped(),
      perClass: 50,
      generators: [
        {
          name: "oracle",
          generate: (captions, seeds) => {
            seen.push({ captions: [...captions], seeds: [...seeds] });
            return pick(captions.map((c, i) => byClass[FASHION_MNIST_CLASSES.indexOf(c)][Math.floor(seeds[i] / 10)]));
          },
        },
        { name: "deaf", generate: (_c, seeds) => pick(seeds.map((s) => s)) },
        { name: "noise", generate: (c) => Promise.resolve(new Rng(4).uniform(c.length * PER).map((v) => 2 * v - 1)) },
      ],
    });
    // Prompt k is class k mod 10 with seed k.
    assert.deepEqual(seen[0].seeds, [...Array(500).keys()]);
    assert.deepEqual(seen[0].captions.slice(0, 11), [...FASHION_MNIST_CLASSES, FASHION_MNIST_CLASSES[0]]);
    const [oracle, deaf, noise] = report.rows, floor = report.floor!;
    console.log(
      `fd: floor ${floor.fd.toFixed(2)}, oracle ${oracle.fd.toFixed(2)}, deaf ${deaf.fd.toFixed(2)}, ` +
        `noise ${
          noise.fd.toFixed(2)
        }; accuracy floor ${floor.accuracy}, oracle ${oracle.accuracy}, deaf ${deaf.accuracy}`,
    );
    assert.equal(report.realN, 10_000);
    assert.equal(report.judge, "a fashion_cnn given by the caller");
    assert.ok(oracle.accuracy >= 0.85, `oracle accuracy ${oracle.accuracy}`);
    assert.ok(Math.min(...oracle.perClass) > 0.5, `oracle per class ${oracle.perClass}`);
    // 500 images whose labels are those of test images 0..499, not k mod 10: chance ≈ 10% (σ ≈ 1.3 points).
    assert.ok(deaf.accuracy > 0.05 && deaf.accuracy < 0.16, `deaf accuracy ${deaf.accuracy}`);
    // Real images at the sample size of the floor: distances of its order, far below noise's.
    assert.ok(floor.n === 500 && floor.fd > 0 && floor.fd < 20, `floor ${floor.n} images, fd ${floor.fd}`);
    assert.ok(oracle.fd > 0 && oracle.fd < 2 * floor.fd, `oracle fd ${oracle.fd}`);
    // Not class-balanced (test images 0..499 as they come), so somewhat further; measured 4.25 against a floor of 2.35.
    assert.ok(deaf.fd > 0 && deaf.fd < 3 * floor.fd, `deaf fd ${deaf.fd}`);
    assert.ok(noise.fd > 20 * floor.fd, `noise fd ${noise.fd}`);
    // Training images, which the judge was trained on, class-balanced like the generators' sets.
    assert.ok(floor.accuracy >= 0.9 && floor.perClass.length === 10, `floor accuracy ${floor.accuracy}`);
    assert.deepEqual([oracle.sampler, oracle.steps, oracle.guidance, oracle.nonFinite], ["custom", null, null, 0]);
  },
});

async function saveUnet(path: string, w: Record<string, Float32Array>): Promise<string> {
  const shapes = unet.shapes(unet.params.parse(TINY_UNET));
  await writeSafetensors(
    path,
    Object.fromEntries(Object.entries(w).map(([k, v]) => [k, { data: v, shape: shapes[k] }])),
  );
  return path;
}

function configText(out: string, report: Record<string, unknown>, models?: Record<string, unknown>): string {
  return stringify({
    version: 1,
    run: { seed: 0, executor: "cpu", steps: 1, out, log_every: 1, cache: `${out}/../run_cache` },
    models: models ?? { teacher: { kind: "unet", params: TINY_UNET }, student: { kind: "unet", params: TINY_UNET } },
    stages: { fashion_report: { kind: "fashion_report", at: "end", params: report } },
  });
}

Deno.test({
  name: "fashion_report: tiny random UNets write fashion_report.json/md with every row; a rerun reuses teacher rows",
  ignore: !haveFashion,
  ...ORT,
  fn: async () => {
    const out = await Deno.makeTempDir({ dir: "/tmp", prefix: "fashion_eval_test-" });
    const cache = `.cache/fashion_eval_test-${crypto.randomUUID()}.json`;
    try {
      const model = async (who: string, seed: number) => ({
        kind: "unet",
        params: TINY_UNET,
        init: await saveUnet(`${out}/${who}.safetensors`, randomTinyUnet(seed)),
      });
      const models = { teacher: await model("teacher", 1), student: await model("student", 2) };
      const run = async (dir: string, extra: Record<string, unknown>) => {
        const params = {
          teacher: "teacher",
          student: "student",
          per_class: 2,
          batch: 8,
          teacher_cache: cache,
          ...extra,
        };
        const loaded = loadConfig("fashion.yaml", configText(`${out}/${dir}`, params, models));
        await runQuiet(loaded);
        assert.deepEqual([...Deno.readDirSync(`${out}/${dir}`)].filter((e) => e.name.includes(".tmp-")), [], "atomic");
        return {
          r: JSON.parse(await Deno.readTextFile(`${out}/${dir}/fashion_report.json`)) as FashionReport & {
            step: number;
          },
          md: await Deno.readTextFile(`${out}/${dir}/fashion_report.md`),
        };
      };
      const { r, md } = await run("a", { teacher_steps: [2], teacher_guidance: [1, 2], student_steps: [1, 2] });
      const names = ["teacher 2-step", "teacher 2-step cfg 2", "student 1-step", "student 2-step"];
      assert.deepEqual(r.rows.map((x) => x.name), names);
      assert.deepEqual(r.rows.map((x) => [x.sampler, x.steps, x.guidance]), [
        ["ddim", 2, 1],
        ["ddim", 2, 2],
        ["add", 1, 1],
        ["add", 2, 1],
      ]);
      assert.equal(r.step, 1);
      assert.equal(r.judge, FASHION_JUDGE_LABEL);
      assert.equal(r.floor!.n, 20);
      for (const x of r.rows) {
        assert.equal(x.n, 20);
        assert.equal(x.cached, undefined);
        assert.ok(Number.isFinite(x.fd) && x.fd > 0, `${x.name} fd ${x.fd}`);
        assert.ok(Number.isFinite(x.msPerImage) && x.msPerImage > 0, `${x.name} ms ${x.msPerImage}`);
        assert.ok(Number.isInteger(x.accuracy * 20) && x.perClass.every((v) => Number.isInteger(v * 2)));
        const row = md.split("\n").find((l) => l.startsWith(`| ${x.name} | ${x.sampler} |`));
        assert.ok(row?.includes(` ${x.fd.toFixed(2)} | ${x.msPerImage.toFixed(1)} |`), `markdown row of ${x.name}`);
      }
      // Guidance changes the images, so the numbers.
      assert.notEqual(r.rows[0].fd, r.rows[1].fd);
      assert.ok(md.includes("| generator | sampler | steps | guidance | accuracy | FD | ms/image |"));
      assert.ok(md.includes(`| generator | ${FASHION_MNIST_CLASSES.join(" | ")} |`));
      assert.ok(md.includes(`Judge: ${FASHION_JUDGE_LABEL}.`) && md.includes("| real training images (floor) |"));
      assert.ok(md.includes("- floor: 20 training images, fixed and class-balanced"), "the floor is described");
      const cached = () => [...Deno.readDirSync(`${out}/run_cache/teacher_rows`)].length;
      assert.equal(cached(), 2, "two teacher rows stored in the run's cache");
      await assert.rejects(() => Deno.stat(cache), Deno.errors.NotFound, "a run never writes the shipped file");

      // Same weights and settings: the teacher rows come from the store; the student's are computed again, and the
      // fixed seeds make them the same numbers.
      const b = (await run("b", { teacher_steps: [2], teacher_guidance: [2, 3], student_steps: [1] })).r;
      assert.deepEqual(b.rows.map((x) => [x.name, x.cached !== undefined]), [
        ["teacher 2-step cfg 2", true],
        ["teacher 2-step cfg 3", false],
        ["student 1-step", false],
      ]);
      assert.ok(b.rows[0].cached?.startsWith(`computed ${r.date} on cpu`), `${b.rows[0].cached}`);
      assert.deepEqual([b.rows[0].fd, b.rows[0].accuracy], [r.rows[1].fd, r.rows[1].accuracy]);
      assert.deepEqual([b.rows[2].fd, b.rows[2].perClass], [r.rows[2].fd, r.rows[2].perClass]);
      assert.equal(b.floor!.fd, r.floor!.fd);
      assert.equal(cached(), 3, "the new row added");
    } finally {
      await Deno.remove(out, { recursive: true });
      await Deno.remove(cache).catch(() => {});
    }
  },
});

Deno.test("fashion_report: config errors name the key; the Fashion-MNIST configs plan with the stage", async () => {
  const tiny = (extra: Record<string, unknown>) => ({ kind: "unet", params: { ...TINY_UNET, ...extra } });
  // [what, params, models, the start of the line the error's position points at, the message]
  const cases: [string, Record<string, unknown>, Record<string, unknown>, string, RegExp][] = [
    [
      "kind",
      { teacher: "t" },
      { t: { kind: "mlp", params: { in: 2, out: 2 } } },
      "teacher:",
      /is a mlp, not a denoiser/,
    ],
    ["size", { student: "s" }, { s: tiny({ size: 16 }) }, "student:", /"s" makes 3×16×16 images; .* takes 3×32×32/],
    ["channels", { teacher: "t" }, { t: tiny({ in_channels: 1 }) }, "teacher:", /"t" makes 1×32×32 images/],
    ["text", { teacher: "t" }, { t: tiny({ context_dim: 32 }) }, "teacher:", /text of width 32\/64; .* gives 64\/64/],
    ["nothing", { student: "s", student_steps: [] }, { s: tiny({}) }, "params:", /nothing to evaluate/],
    [
      "guidance",
      { teacher: "t", teacher_guidance: [0.5] },
      { t: tiny({}) },
      "- 0.5",
      /params\.teacher_guidance\.0": must be ≥ 1/,
    ],
    ["undeclared", { teacher: "nope" }, { t: tiny({}) }, "teacher:", /undeclared model "nope"/],
  ];
  for (const [what, params, models, key, re] of cases) {
    const text = configText("/tmp/unused", params, models);
    assert.throws(() => planPipeline(loadConfig("fashion.yaml", text)), (e) => {
      assert.ok(e instanceof ConfigError && e.lines.length === 1, `${what}: one line: ${e}`);
      const m = /^fashion\.yaml:(\d+):\d+: /.exec(e.lines[0]);
      assert.ok(m && re.test(e.lines[0]), `${what}: ${e.lines[0]}`);
      const at = text.split("\n")[Number(m[1]) - 1].trim();
      assert.ok(at.startsWith(key), `${what}: points at "${at}"`);
      return true;
    });
  }
  // The controls: a teacher alone, and a student alone, plan.
  planPipeline(loadConfig("fashion.yaml", configText("/tmp/unused", { teacher: "t" }, { t: tiny({}) })));
  planPipeline(loadConfig("fashion.yaml", configText("/tmp/unused", { student: "s" }, { s: tiny({}) })));

  const plan = async (f: string) => planPipeline(loadConfig(f, await Deno.readTextFile(f)));
  const tf = await plan("configs/teacher_fashion.yaml");
  // The teacher alone, with and without guidance (the report's teacher at its best scale and unguided).
  const tr = tf.stages.fashion_report.params as { teacher: string; student: null; teacher_guidance: number[] };
  assert.equal(tr.teacher, "unet");
  assert.equal(tr.student, null);
  assert.ok(tr.teacher_guidance.includes(1) && tr.teacher_guidance.some((g) => g > 1), `${tr.teacher_guidance}`);
  // The ADD config plans before the teacher's weights exist (planning reads no weights).
  const af = await plan("configs/add_fashion.yaml");
  assert.deepEqual(Object.keys(af.stages).filter((s) => /report|eval/.test(s)), ["fashion_report"]);
  assert.deepEqual(af.phases.map((p) => p.updates), [["disc"], ["student"]]);
  assert.deepEqual(af.stages.batch.outputs.image, { dtype: "f32", shape: [16, 3, 32, 32] });
  assert.equal(af.models.student.init, "../models/teacher_fashion/unet.safetensors");
  assert.deepEqual(af.models.student.params, af.models.teacher.params);
  assert.deepEqual((af.models.teacher.params as { attention_levels: number[] }).attention_levels, [2]);
  const prompts = (af.stages.preview.params as { prompts: string[] }).prompts;
  assert.deepEqual(prompts, [...FASHION_MNIST_CLASSES]);
  // The default's recipe (add.yaml's regression on teacher pairs, from the fashion data) and the paper's alone.
  assert.deepEqual((af.stages.pairs.params as { dataset: string }).dataset, "fashion");
  const paper = await plan("configs/add_fashion_paper.yaml");
  assert.ok(!("pairs" in paper.stages) && !("regression" in paper.stages));
  assert.deepEqual(Object.keys(paper.stages.generator_loss.inputs).sort(), ["a", "b"]);
  assert.deepEqual(paper.models.teacher, af.models.teacher);
  const ag = (af.stages.fashion_report.params as { teacher_guidance: number[] }).teacher_guidance;
  assert.ok(
    ag.every((g) => tr.teacher_guidance.includes(g)),
    "the ADD report's teacher rows come from the teacher's cache",
  );
});
