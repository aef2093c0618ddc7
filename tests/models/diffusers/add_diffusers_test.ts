// configs/add_diffusers.yaml, ADD in latent space on a diffusers-format pipeline folder: on the tiny folder
// `deno task build:tiny-diffusers` writes (built here into a temporary folder), it plans with latents [B, 4, 4, 4] for
// student and teacher, the decoded x̂ [B, 3, 32, 32] for the discriminator and the folder's CLIP text encoder's
// [B, 77, 64] states, trains three steps on cpu with finite losses, its preview and report decode latents into 32²
// pixels, and `deno task diffusers export` of the run is a complete StableDiffusionPipeline folder whose scheduler
// reads back as the folder's (its model_index.json and scheduler_config.json those of the committed export); with
// add.yaml's regression on teacher pairs added (test_pairs below) the pairs are latents [4, 4, 4] sampled by the
// teacher, regressed on in latent space and remade from the student at a refresh; the same file with a hub id that is
// not downloaded is one config line telling how to fetch it.
import assert from "node:assert/strict";
import "../../../stages/mod.ts";
import { buildTinyDiffusers } from "../../../models/diffusers/build_tiny.ts";
import { readSchedulerConfig } from "../../../models/diffusers/scheduler_config.ts";
import { diffusersCli } from "../../../diffusers.ts";
import { loadConfig } from "../../../pipeline/config.ts";
import { planPipeline } from "../../../pipeline/plan.ts";
import { readSafetensors } from "../../../engine/safetensors.ts";
import { cli, expectCode, ROOT, rows, tmp } from "../../helpers/cli_run.ts";
import { FIXTURES } from "./diffusers_reference.ts";

const CONFIG = `${ROOT}configs/add_diffusers.yaml`;

/** The config's YAML with every `.cache/tiny_diffusers` path pointing at `dir`. */
const retargeted = (dir: string) => Deno.readTextFileSync(CONFIG).replaceAll(".cache/tiny_diffusers", dir);

Deno.test({
  name: "add_diffusers: ADD in latent space on a tiny diffusers folder trains 3 steps, reports in pixels, exports",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("add_diffusers"), folder = `${root}/tiny`, file = `${root}/add_diffusers.yaml`;
    await buildTinyDiffusers(folder);
    await Deno.writeTextFile(file, retargeted(folder));
    const plan = planPipeline(loadConfig(file, await Deno.readTextFile(file)));
    assert.deepEqual(plan.models.vae.shapes["decoder.conv_out.weight"], [3, 8, 3, 3]);
    assert.deepEqual(plan.stages.text.outputs.tokens.shape, [8, 77, 64]);
    const out = `${root}/out`;
    const r = await cli([
      file,
      ...["--executor", "cpu", "--steps", "3", "--out", out, "--set", `run.cache=${root}/cache`],
      ...["--set", "run.log_every=1", "--set", "stages.plot=null"],
      ...["--set", "stages.report.params.limit=4", "--set", "stages.report.params.teacher_steps=[1]"],
      ...["--set", "stages.report.params.student_steps=[1]", "--set", "stages.report.params.judge_size=75"],
      ...["--set", "stages.report.params.disc_fid=false", "--set", "stages.preview.params.seeds=[0,1]"],
    ]);
    expectCode(r, 0, "add_diffusers");
    assert.match(r.stdout + r.stderr, /batch: encoded \d+ images into latents \[4,4,4\]/);
    const got = await rows(out);
    assert.deepEqual(got.map((row) => row.step), [1, 2, 3]);
    for (const row of got) {
      for (const k of ["opt_d.loss", "opt_g.loss", "generator_loss.distill"]) assert.ok(Number.isFinite(row[k]), k);
    }
    const legend = JSON.parse(await Deno.readTextFile(`${out}/samples/step-00000003.json`));
    assert.deepEqual(legend.cols, [0, 1]);
    const png = await Deno.readFile(`${out}/samples/step-00000003.png`);
    // PNG IHDR: width and height of a 4-prompt × 2-seed grid of 32² images (with the grid's padding).
    const view = new DataView(png.buffer, png.byteOffset);
    assert.ok(
      view.getUint32(16) >= 2 * 32 && view.getUint32(20) >= 4 * 32,
      `${view.getUint32(16)}×${view.getUint32(20)}`,
    );
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    assert.deepEqual(report.rows.map((x: { name: string }) => x.name), ["teacher 1-step", "student 1-step"]);

    const exported = `${root}/export`;
    assert.equal(await diffusersCli(["export", out, "--out", exported]), 0);
    const parts = ["scheduler", "text_encoder", "tokenizer", "unet", "vae"];
    for (const p of parts) assert.ok((await Deno.stat(`${exported}/${p}`)).isDirectory, p);
    const index = JSON.parse(await Deno.readTextFile(`${exported}/model_index.json`));
    assert.equal(index._class_name, "StableDiffusionPipeline");
    assert.deepEqual(index.text_encoder, ["transformers", "CLIPTextModel"]);
    assert.deepEqual(index.tokenizer, ["transformers", "CLIPTokenizer"]);
    assert.deepEqual(index.vae, ["diffusers", "AutoencoderKL"]);
    for (const f of ["text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"]) {
      assert.deepEqual(await Deno.readFile(`${exported}/${f}`), await Deno.readFile(`${folder}/${f}`), f);
    }
    const trained = await readSchedulerConfig(folder), back = await readSchedulerConfig(exported);
    assert.deepEqual(back.alphasCumprod, trained.alphasCumprod);
    assert.equal(back.prediction, trained.prediction);
    // The committed export of a narrower folder (export_pipeline_test.ts checks it against diffusers) is what the
    // exporter writes today, where the folder's size does not enter.
    for (const f of ["model_index.json", "scheduler/scheduler_config.json"]) {
      const want = await Deno.readTextFile(`${FIXTURES}exported_pipeline/${f}`);
      assert.equal(await Deno.readTextFile(`${exported}/${f}`), want, f);
    }
  },
});

/** add.yaml's regression on teacher pairs over add_diffusers.yaml, in latent space, the targets remade at step 2. */
const pairsYaml = (folder: string) =>
  `extends: add_diffusers.yaml
stages:
  pairs:
    kind: teacher_pairs
    params:
      model: teacher
      dataset: emoji
      pairs: 4
      batch: 2
      steps: 2
      gen_batch: 4
      latent: true
      text_encoder: ${folder}
      schedule: { diffusers: ${folder} }
      prediction: v
      refresh: { at: [2], model: student, steps: 1 }
  pair_text:
    kind: text_encode
    inputs: { caption_id: pairs.caption_id }
    params: { dataset: emoji, model: ${folder} }
  pair_student:
    kind: add_student
    inputs: { x_s: pairs.x_s, t: pairs.t, alpha: pairs.alpha, sigma: pairs.sigma, tokens: pair_text.tokens }
    params: { model: student, prediction: v }
  regression:
    kind: mse
    inputs: { pred: pair_student.x0_hat, target: pairs.target }
  generator_loss:
    inputs: { c: regression.loss }
    params: { weights: { c: 1 }, names: { c: regression } }
`;

Deno.test({
  name: "add_diffusers: teacher pairs in latent space are made, regressed on and remade over 3 steps",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("add_diffusers_pairs"), folder = `${root}/tiny`, out = `${root}/out`;
    await buildTinyDiffusers(folder);
    await Deno.writeTextFile(`${root}/add_diffusers.yaml`, retargeted(folder));
    await Deno.writeTextFile(`${root}/pairs.yaml`, pairsYaml(folder));
    const plan = planPipeline(loadConfig(`${root}/pairs.yaml`, pairsYaml(folder)));
    assert.deepEqual(plan.stages.pairs.outputs.x_s.shape, [2, 4, 4, 4]);
    const r = await cli([
      `${root}/pairs.yaml`,
      ...["--executor", "cpu", "--steps", "3", "--out", out, "--set", `run.cache=${root}/cache`],
      ...["--set", "run.log_every=1", "--set", "stages.ckpt=null", "--set", "stages.plot=null"],
      ...["--set", "stages.report=null", "--set", "stages.preview=null"],
    ]);
    expectCode(r, 0, "add_diffusers pairs");
    const log = r.stdout + r.stderr;
    assert.match(log, /pairs: made 4 teacher pairs in [\d.]+ s, cached in /);
    assert.match(log, /pairs: remade 4 targets after step 2/);
    const got = await rows(out);
    assert.deepEqual(got.map((row) => row.step), [1, 2, 3]);
    for (const row of got) assert.ok(Number.isFinite(row["generator_loss.regression"]), JSON.stringify(row));
    const bank = [...Deno.readDirSync(`${root}/cache/teacher_pairs`)].map((e) => e.name);
    assert.equal(bank.length, 1);
    const t = (await readSafetensors(`${root}/cache/teacher_pairs/${bank[0]}`)).tensors.target;
    assert.deepEqual(t.shape, [4, 4, 4, 4]);
  },
});

Deno.test("add_diffusers: a hub id that is not downloaded is one config line naming the fetch", async () => {
  const root = await tmp("add_diffusers_hub"), file = `${root}/hub.yaml`;
  const yaml = Deno.readTextFileSync(CONFIG).replaceAll(".cache/tiny_diffusers", "nobody/sd-nothing");
  assert.throws(() => planPipeline(loadConfig(file, yaml)), (e) => {
    const lines = (e as Error).message.split("\n").filter((l) => l.includes("not downloaded"));
    assert.ok(lines.length >= 1, (e as Error).message);
    assert.match(lines[0], /hub id "nobody\/sd-nothing": not downloaded.*deno task diffusers fetch nobody\/sd-nothing/);
    return true;
  });
});
