// deno task diffusers export: a tiny diffusers_unet student (tiny_run.ts) trained two steps and exported reads back
// through folder.ts with the checkpoint's keys, shapes and values (EMA, raw, fp16), and through scheduler_config.ts
// with the run's ᾱ and timesteps; the committed export (tests/fixtures/diffusers/exported_sd1/, made by
// make_exported.ts) is what the exporter writes today, and the project's forward and schedule of it equal what the
// real diffusers computed from it (check_export.py); bad input is one line, exit 1, nothing written.
import assert from "node:assert/strict";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { makeSchedule, studentTimesteps } from "../../../models/diffusion/schedules.ts";
import { exportDiffusers } from "../../../models/diffusers/export.ts";
import { loadModel, runForward } from "../../../models/diffusers/forward.ts";
import { loadWeights, openFolder, readHeader, weightMap } from "../../../models/diffusers/folder.ts";
import { eulerSigmas, readSchedulerConfig, scheduleFromDiffusers } from "../../../models/diffusers/scheduler_config.ts";
import { diffusersUnet } from "../../../models/diffusers/unet_kind.ts";
import { cli, expectCode, ROOT, tmp } from "../../helpers/cli_run.ts";
import { FIXTURES, maxRel } from "./diffusers_reference.ts";
import { handCheckpoint, imageFolder, studentYaml, tinyUnetFolder } from "./tiny_run.ts";

const CLI = `${ROOT}diffusers.ts`;
const EXPORTED = `${FIXTURES}exported_sd1`;

/** Trains the tiny student two steps in `root`; returns the run folder. */
async function tinyRun(root: string): Promise<string> {
  await tinyUnetFolder(`${root}/unet`);
  await imageFolder(`${root}/images`);
  const file = `${root}/tiny.yaml`;
  await Deno.writeTextFile(file, studentYaml(`{ path: ${root}/unet, variant: fp16 }`, `${root}/images`));
  expectCode(await cli([file, "--out", `${root}/run`]), 0, "the tiny student run");
  return `${root}/run`;
}

async function tensorsOf(file: string): Promise<Record<string, { shape: number[]; data: Float32Array }>> {
  const t = (await readSafetensors(file)).tensors;
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, { shape: v.shape, data: toFloat32(v) }]));
}

/** The export's UNet read back as the diffusers_unet kind reads a folder. */
function readBack(out: string, variant?: string) {
  const p = diffusersUnet.params.parse({ path: out, subfolder: "unet", ...(variant ? { variant } : {}) });
  const shapes = diffusersUnet.shapes(p);
  return { shapes, weights: loadWeights(weightMap(`${out}/unet`, variant), shapes) };
}

function assertSame(got: ReturnType<typeof readBack>, want: Record<string, { shape: number[]; data: Float32Array }>) {
  assert.deepEqual(Object.keys(got.weights).sort(), Object.keys(want).sort());
  for (const [k, w] of Object.entries(want)) {
    assert.deepEqual(got.shapes[k], w.shape, k);
    assert.deepEqual(got.weights[k], w.data, k);
  }
}

Deno.test({
  name: "diffusers export: import → train → export → import gives the checkpoint's tensors and the run's schedule",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_export_roundtrip"), run = await tinyRun(root);
    const ckpt = `${run}/checkpoints/step-00000002`;
    const ema = await tensorsOf(`${ckpt}/unet.ema.safetensors`), raw = await tensorsOf(`${ckpt}/unet.safetensors`);
    assert.notDeepEqual(ema["conv_in.weight"].data, raw["conv_in.weight"].data, "EMA and weights must differ");

    const r = await exportDiffusers(run, `${root}/export`);
    assert.deepEqual(r.files, [
      "README.md",
      "scheduler/scheduler_config.json",
      "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors",
    ]);
    assertSame(readBack(`${root}/export`), ema);
    await exportDiffusers(`${ckpt}/`, `${root}/export_raw`, { ema: false });
    assertSame(readBack(`${root}/export_raw`), raw);
    // fp16: the variant's file, each value the checkpoint's rounded to float16.
    await exportDiffusers(run, `${root}/export_fp16`, { fp16: true });
    const half = readBack(`${root}/export_fp16`, "fp16");
    assert.equal(
      readHeader(`${root}/export_fp16/unet/diffusion_pytorch_model.fp16.safetensors`)["conv_in.bias"].dtype,
      "F16",
    );
    for (const [k, w] of Object.entries(ema)) assert.ok(maxRel(half.weights[k], w.data) < 1e-3, k);

    // The scheduler reads back as the run's schedule: the same ᾱ bits, the ADD sampler's timesteps, v-prediction.
    const s = await readSchedulerConfig(`${root}/export`);
    assert.deepEqual(s.alphasCumprod, makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true }).alphasCumprod);
    assert.equal(s.prediction, "v");
    assert.equal(s.finalAlphaCumprod, 1);
    assert.equal(s.clipSample, null);
    for (const n of [1, 2, 3, 4]) assert.deepEqual(Array.from(s.timesteps(n)), Array.from(studentTimesteps(n, 1000)));
    const card = await Deno.readTextFile(`${root}/export/README.md`);
    assert.match(card, /at step 2 of 2 \(EMA weights\)/);
    assert.match(card, /student timesteps \[999, 749, 499, 249\]/);

    // The committed export is what the exporter writes today (the weights differ only by the training's rounding).
    for (const f of ["unet/config.json", "scheduler/scheduler_config.json"]) {
      assert.equal(await Deno.readTextFile(`${root}/export/${f}`), await Deno.readTextFile(`${EXPORTED}/${f}`), f);
    }
    const header = (dir: string) => readHeader(`${dir}/unet/diffusion_pytorch_model.safetensors`);
    assert.deepEqual(header(`${root}/export`), header(EXPORTED));
  },
});

Deno.test({
  name: "diffusers export: the committed export's forward and schedule equal the real diffusers' (check_export.py)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const io = await tensorsOf(`${EXPORTED}_io.safetensors`);
    const model = await loadModel(EXPORTED, { subfolder: "unet" });
    const inputs = Object.fromEntries(
      ["sample", "timestep", "encoder_hidden_states"].map((k) => [k, { ...io[k], dtype: "F32" as const }]),
    );
    const out = await runForward(model, inputs);
    const err = maxRel(out.sample.data, io.out.data);
    assert.ok(err < 1e-4, `forward: max |Δ| / max |ref| = ${err}`);

    // DDIM as written; Euler as diffusers reads the same file (its own keys only).
    const ddim = await readSchedulerConfig(EXPORTED);
    const json = JSON.parse(await Deno.readTextFile(`${EXPORTED}/scheduler/scheduler_config.json`));
    const { clip_sample: _c, clip_sample_range: _r, set_alpha_to_one: _a, thresholding: _t, ...common } = json;
    const { dynamic_thresholding_ratio: _d, sample_max_value: _m, ...eulerJson } = common;
    const euler = scheduleFromDiffusers({ ...eulerJson, _class_name: "EulerDiscreteScheduler" });
    for (const [name, s] of [["ddim", ddim], ["euler", euler]] as const) {
      // diffusers' float32 cumulative product drifts by a few ulps per step.
      const e = maxRel(s.alphasCumprod, io[`${name}.alphas_cumprod`].data);
      assert.ok(e < 1e-4, `${name} ᾱ: ${e}`);
      for (const n of [1, 2, 4]) {
        assert.deepEqual(Array.from(s.timesteps(n)), Array.from(io[`${name}.timesteps.${n}`].data), `${name} ${n}`);
      }
    }
    for (const n of [1, 2, 4]) assert.ok(maxRel(eulerSigmas(euler, n), io[`euler.sigmas.${n}`].data) < 1e-5, `σ ${n}`);
  },
});

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

Deno.test({
  name: "diffusers export: the CLI writes the folder; not a run, no checkpoint, kind unet, a bad --out: one line",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_export_cli"), run = await tinyRun(root);
    const ok = await cli(["export", run, "--out", `${root}/dist/student`, "--fp16"], CLI);
    expectCode(ok, 0, "diffusers export");
    assert.match(
      ok.stdout,
      /^wrote .*\/dist\/student\/ \(UNet2DConditionModel "unet" from .*unet\.ema\.safetensors; 4 files/,
    );
    assert.deepEqual(await listing(`${root}/dist/student/unet`), [
      "config.json",
      "diffusion_pytorch_model.fp16.safetensors",
    ]);
    await Deno.mkdir(`${root}/empty_run/checkpoints`, { recursive: true });
    await Deno.mkdir(`${root}/busy`);
    await Deno.writeTextFile(`${root}/busy/notes.txt`, "mine");
    const cases: [string[], RegExp][] = [
      [[`${root}/nope`], /\/nope: no such folder$/],
      [[`${root}/images`], /images: neither a run folder \(checkpoints\/\) nor a checkpoint folder \(config\.yaml\)$/],
      [[`${root}/empty_run`], /empty_run\/checkpoints: no complete checkpoint to export$/],
      [
        [`${ROOT}models/teacher`],
        /config\.yaml: models\.unet is kind unet: its attention block has no exact UNet2DConditionModel equivalent/,
      ],
      [[run, "--model", "disc"], /config\.yaml: no model "disc" \(models: unet\)$/],
      [[run, "--out", `${root}/busy`], /--out .*\/busy: a folder with other files in it/],
    ];
    for (const [args, re] of cases) {
      const before = await listing(root);
      const r = await cli(["export", ...args, ...(args.includes("--out") ? [] : ["--out", `${root}/x`])], CLI);
      const lines = r.stderr.trim().split("\n");
      assert.equal(r.code, 1, `exit ${r.code}\n${r.stdout}\n${r.stderr}`);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], re);
      assert.deepEqual(await listing(root), before, "nothing may be written");
      assert.deepEqual(await listing(`${root}/busy`), ["notes.txt"]);
    }
    // An earlier export is replaced whole.
    expectCode(await cli(["export", run, "--out", `${root}/dist/student`], CLI), 0, "the export again");
    assert.deepEqual(await listing(`${root}/dist/student/unet`), [
      "config.json",
      "diffusion_pytorch_model.safetensors",
    ]);
    assert.deepEqual(await listing(`${root}/dist`), ["student"]);
  },
});

Deno.test("diffusers export: a diffusers folder that is not a run is not an export source", async () => {
  const root = await tmp("diffusers_export_notrun");
  await assert.rejects(
    () => exportDiffusers(openFolder(`${FIXTURES}unet_sd1`).dir, `${root}/x`),
    /unet_sd1: neither a run folder/,
  );
  assert.deepEqual(await listing(root), []);
});

Deno.test("diffusers export: a UNet2DModel gets a DDIMPipeline index; a diffusers text encoder and VAE are copied", async () => {
  const root = await tmp("diffusers_export_parts");
  const noise = "noise: { kind: diffusion_noise, params: { schedule: { kind: linear, T: 1000 }, prediction: eps } }";
  await handCheckpoint(
    `${root}/uncond`,
    `models:\n  unet: { kind: diffusers_unet, params: { path: ${FIXTURES}unet2d, variant: fp16 } }\nstages:\n  ${noise}\n`,
    `${FIXTURES}unet2d`,
    "fp16",
  );
  const u = await exportDiffusers(`${root}/uncond`, `${root}/uncond_out`);
  assert.deepEqual(u.files, [
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
  ]);
  const index = JSON.parse(await Deno.readTextFile(`${root}/uncond_out/model_index.json`));
  assert.deepEqual(index, {
    _class_name: "DDIMPipeline",
    _diffusers_version: "0.31.0",
    scheduler: ["diffusers", "DDIMScheduler"],
    unet: ["diffusers", "UNet2DModel"],
  });
  const s = await readSchedulerConfig(`${root}/uncond_out`);
  assert.deepEqual(s.alphasCumprod, makeSchedule({ kind: "linear", T: 1000 }).alphasCumprod);
  assert.equal(s.prediction, "eps");

  // A text-conditioned student whose run encoded with a diffusers pipeline's text encoder, beside a VAE.
  const sd = `models:
  unet: { kind: diffusers_unet, params: { path: ${FIXTURES}unet_sd1, variant: bf16 } }
  vae: { kind: diffusers_vae, params: { path: ${FIXTURES}vae } }
stages:
  text: { kind: text_encode, params: { dataset: d, model: ${FIXTURES}clip/text_encoder } }
  ${noise}
`;
  await handCheckpoint(`${root}/sd`, sd, `${FIXTURES}unet_sd1`, "bf16");
  // In fp32 the text encoder's files are the source's, byte for byte (export_fp16_test.ts: --fp16 re-encodes them).
  const r = await exportDiffusers(`${root}/sd`, `${root}/sd_out`);
  for (const f of ["text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json"]) {
    assert.ok(r.files.includes(f), f);
    const a = await Deno.readFile(`${root}/sd_out/${f}`), b = await Deno.readFile(`${FIXTURES}clip/${f}`);
    assert.deepEqual(a, b, f);
  }
  assert.ok(r.files.includes("vae/diffusion_pytorch_model.safetensors"));
  const sdIndex = JSON.parse(await Deno.readTextFile(`${root}/sd_out/model_index.json`));
  assert.equal(sdIndex._class_name, "StableDiffusionPipeline");
  assert.deepEqual(sdIndex.text_encoder, ["transformers", "CLIPTextModel"]);
  assert.deepEqual(sdIndex.tokenizer, ["transformers", "CLIPTokenizer"]);
  assert.deepEqual(sdIndex.vae, ["diffusers", "AutoencoderKL"]);
  assert.match(await Deno.readTextFile(`${root}/sd_out/README.md`), /Text encoder: .*clip\/text_encoder \(copied\)/);
});
