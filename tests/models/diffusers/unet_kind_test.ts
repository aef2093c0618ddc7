// The diffusers_unet model kind: params check the folder while the config is planned (a bad path, variant or config
// value is one file:line:col line at the key), shapes and the pretrained init come from the folder, the ports type
// as the unet kind's (pooled accepted, unused), and a small pipeline of data, text_encode, diffusion_noise, model
// (diffusers_unet), mse and optimizer plans and trains two steps on cpu from a tiny folder with 3 channels and
// 64-wide cross-attention (the committed text encoder's width), written here with random weights, and resumes from a
// checkpoint to the same losses.
import assert from "node:assert/strict";
import { encode } from "fast-png";
import "../../../stages/mod.ts";
import { readSafetensors } from "../../../engine/safetensors.ts";
import { encodeSafetensors } from "../../../engine/safetensors.ts";
import { Rng } from "../../../engine/rng.ts";
import { diffusersUnet } from "../../../models/diffusers/unet_kind.ts";
import { unetShapes } from "../../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../../models/diffusers/unet2d_condition_config.ts";
import { type ConfigError, loadConfig } from "../../../pipeline/config.ts";
import { planPipeline } from "../../../pipeline/plan.ts";
import { StageTypeError } from "../../../pipeline/stage.ts";
import { cli, expectCode, rows, tmp } from "../../helpers/cli_run.ts";

const FIXTURE = new URL("../../fixtures/diffusers/unet_sd1", import.meta.url).pathname;
const CONFIG = JSON.parse(Deno.readTextFileSync(`${FIXTURE}/config.json`));

Deno.test("diffusers_unet: shapes and the pretrained init from the folder; ports typed as the unet kind's", async () => {
  const p = diffusersUnet.params.parse({ path: FIXTURE, variant: "bf16" });
  assert.deepEqual(p, { path: FIXTURE, variant: "bf16" });
  assert.deepEqual(diffusersUnet.shapes(p), unetShapes(unetConfig(CONFIG)));
  const init = diffusersUnet.init(p, new Rng(0));
  const bf16 = (await readSafetensors(`${FIXTURE}/diffusion_pytorch_model.bf16.safetensors`)).tensors;
  for (const [k, v] of Object.entries(init)) assert.deepEqual(v, bf16[k].data, k);
  const f32 = (shape: number[]) => ({ dtype: "f32" as const, shape });
  const ins = { x: f32([2, 4, 8, 8]), t: f32([2]), tokens: f32([2, 5, 16]) };
  assert.deepEqual(diffusersUnet.types(p, ins), { out: f32([2, 4, 8, 8]) });
  assert.deepEqual(diffusersUnet.types(p, { ...ins, pooled: f32([2, 64]) }), { out: f32([2, 4, 8, 8]) });
  const refused = (inputs: Record<string, ReturnType<typeof f32>>, re: RegExp, at: string[]) => {
    assert.throws(() => diffusersUnet.types(p, inputs), (e) => {
      assert.ok(e instanceof StageTypeError, String(e));
      assert.match(e.message, re);
      assert.deepEqual(e.at, at);
      return true;
    });
  };
  refused({ ...ins, x: f32([2, 3, 8, 8]) }, /^input "x" \(sample\) is \[2,3,8,8\], expected \[B,4,H,W\]/, [
    "inputs",
    "x",
  ]);
  refused({ ...ins, tokens: f32([2, 5, 64]) }, /input "tokens" \(encoder_hidden_states\) is .*\[2,L,16\]/, [
    "inputs",
    "tokens",
  ]);
  refused({ x: ins.x, t: ins.t }, /input "tokens" is not connected/, ["inputs"]);
  refused({ ...ins, mask: f32([2]) }, /diffusers_unet has no input "mask"/, ["inputs", "mask"]);
});

/** A config of the small training pipeline on the diffusers folder `model` (params written as YAML flow). */
function pipelineYaml(model: string, images: string): string {
  return `version: 1
run:
  name: diffusers_tiny
  executor: cpu
  steps: 2
  log_every: 1
models:
  unet:
    kind: diffusers_unet
    params: ${model}
data:
  pics:
    kind: image_folder
    params: { path: ${images}, size: 8 }
stages:
  batch:
    kind: data
    params: { dataset: pics, batch: 2 }
  text:
    kind: text_encode
    inputs: { caption_id: batch.caption_id }
    params: { dataset: pics }
  noise:
    kind: diffusion_noise
    inputs: { x0: batch.image }
    params: { prediction: eps }
  denoise:
    kind: model
    inputs: { x: noise.x_t, t: noise.t, tokens: text.tokens, pooled: text.pooled }
    params: { model: unet }
  loss:
    kind: mse
    inputs: { pred: denoise.out, target: noise.target }
  opt:
    kind: optimizer
    inputs: { loss: loss.loss }
    params: { models: [unet], lr: 0.0001 }
`;
}

/** The fixture's config with 3 channels and 64-wide cross-attention, and small random weights under its keys. */
async function tinyFolder(dir: string): Promise<void> {
  const cfg = { ...CONFIG, in_channels: 3, out_channels: 3, cross_attention_dim: 64 };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg, null, 2));
  const rng = new Rng(1), tensors: Record<string, { data: Float32Array; shape: number[]; dtype: "F16" }> = {};
  for (const [k, s] of Object.entries(unetShapes(unetConfig(cfg)))) {
    const n = s.reduce((a, b) => a * b, 1);
    const data = /norm.*\.weight$/.test(k) ? new Float32Array(n).fill(1) : rng.fold(k).normal(n).map((v) => 0.05 * v);
    tensors[k] = { data, shape: s, dtype: "F16" };
  }
  await Deno.writeFile(`${dir}/diffusion_pytorch_model.fp16.safetensors`, encodeSafetensors(tensors));
}

async function imageFolder(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const [i, caption] of ["red apple", "sun", "blue heart", "rocket"].entries()) {
    const data = new Uint8Array(8 * 8 * 3).map((_, j) => (j * 37 + i * 91) % 256);
    await Deno.writeFile(`${dir}/${i}.png`, encode({ width: 8, height: 8, data, channels: 3 }));
    await Deno.writeTextFile(`${dir}/${i}.txt`, caption);
  }
}

/** The first line of the config error planning `yaml` (written as `file`) gives. */
function planError(file: string, yaml: string): string {
  try {
    planPipeline(loadConfig(file, yaml));
  } catch (e) {
    return (e as Error).message.split("\n")[0];
  }
  throw new Error("expected a config error");
}

Deno.test("diffusers_unet: a bad path, variant or folder is one config line at the key", async () => {
  const root = await tmp("diffusers_unet_errors"), file = `${root}/c.yaml`, images = `${root}/images`;
  await imageFolder(images);
  const at = (yaml: string, key: string) => {
    const lines = yaml.split("\n"), i = lines.findIndex((l) => l.includes("kind: diffusers_unet")) + 1;
    // Value errors are told at the value.
    return `${file}:${i + 1}:${lines[i].indexOf(`${key}: `) + key.length + 3}: "models.unet.params.${key}"`;
  };
  let yaml = pipelineYaml(`{ path: ${root}/nope }`, images);
  assert.equal(planError(file, yaml), `${at(yaml, "path")}: ${root}/nope: no such folder`);
  yaml = pipelineYaml(`{ path: ${FIXTURE}, variant: fp16 }`, images);
  assert.equal(
    planError(file, yaml),
    `${at(yaml, "variant")}: ${FIXTURE}: no diffusion_pytorch_model.fp16.safetensors or ` +
      `diffusion_pytorch_model.safetensors.index.fp16.json; the folder has the variant bf16`,
  );
  yaml = pipelineYaml(`{ path: ${root}/nope, varient: fp16 }`, images);
  assert.throws(() => planPipeline(loadConfig(file, yaml)), (e) => {
    assert.deepEqual((e as ConfigError).lines.map((l) => l.replace(/^.*?: /, "")), [
      `"models.unet.params": unknown key "varient" (did you mean "variant"?)`,
    ]);
    return true;
  });
  yaml = pipelineYaml(`{ path: nobody/nothing }`, images);
  assert.match(planError(file, yaml), /"models\.unet\.params\.path": hub id "nobody\/nothing": not downloaded/);
  await Deno.mkdir(`${root}/bad`);
  await Deno.writeTextFile(`${root}/bad/config.json`, JSON.stringify({ ...CONFIG, class_embed_type: "timestep" }));
  yaml = pipelineYaml(`{ path: ${root}/bad }`, images);
  assert.equal(
    planError(file, yaml),
    `${at(yaml, "path")}: ${root}/bad/config.json: class_embed_type "timestep" is not supported (expected null)`,
  );
  // The fixture's own folder plans as far as the ports, where its 4 channels and 16-wide text do not fit.
  yaml = pipelineYaml(`{ path: ${FIXTURE}, variant: bf16 }`, images);
  assert.match(planError(file, yaml), /input "x" \(sample\) is \[2,3,8,8\], expected \[B,4,H,W\]/);
});

Deno.test({
  name: "diffusers_unet: a small pipeline plans, trains two steps on cpu from a diffusers folder, resumes",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_unet_run"), file = `${root}/tiny.yaml`;
    await tinyFolder(`${root}/unet`);
    await imageFolder(`${root}/images`);
    const yaml = pipelineYaml(`{ path: ${root}/unet, variant: fp16 }`, `${root}/images`);
    await Deno.writeTextFile(file, yaml);
    const plan = planPipeline(loadConfig(file, yaml));
    assert.deepEqual(plan.models.unet.shapes["conv_in.weight"], [16, 3, 3, 3]);
    assert.deepEqual(plan.phases.map((p) => p.optimizer), ["opt"]);
    const r = await cli([file, "--out", `${root}/out`]);
    expectCode(r, 0, "the diffusers_unet pipeline");
    const got = await rows(`${root}/out`);
    assert.deepEqual(got.map((row) => row.step), [1, 2]);
    for (const row of got) assert.ok(Number.isFinite(row["opt.loss"]) && row["opt.loss"] > 0, JSON.stringify(row));
    // A checkpoint's resolved config names the folder again: a resume re-reads it and loses nothing.
    const ckpt = `${file}.ckpt.yaml`;
    await Deno.writeTextFile(ckpt, `${yaml}  ckpt:\n    kind: checkpoint\n    every: 1\n`);
    expectCode(await cli([ckpt, "--out", `${root}/resumed`, "--steps", "1"]), 0, "one step and a checkpoint");
    expectCode(await cli([ckpt, "--out", `${root}/resumed`, "--resume"]), 0, "the resume");
    assert.deepEqual(await rows(`${root}/resumed`), got);
  },
});
