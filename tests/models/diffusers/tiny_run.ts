// A tiny diffusers_unet student run for the export tests: a small UNet2DConditionModel folder (3 channels, 64-wide
// cross-attention: the committed text encoder's width) with random fp16 weights, four captioned 8×8 PNGs, and an
// ADD-style pipeline (add_noise on a zero-terminal-SNR schedule, add_student with v-prediction, x̂ regressed on the
// image) with an EMA and a checkpoint every step.
import { encode } from "fast-png";
import { Rng } from "../../../engine/rng.ts";
import { encodeSafetensors, readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { unetShapes } from "../../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../../models/diffusers/unet2d_condition_config.ts";

/** The fixture SD 1.x UNet's config, shrunk to a few thousand parameters. */
export function tinyUnetConfig(): Record<string, unknown> {
  const base = JSON.parse(
    Deno.readTextFileSync(new URL("../../fixtures/diffusers/unet_sd1/config.json", import.meta.url)),
  );
  return {
    ...base,
    in_channels: 3,
    out_channels: 3,
    cross_attention_dim: 64,
    block_out_channels: [8, 16],
    norm_num_groups: 4,
    attention_head_dim: 2,
    layers_per_block: 1,
  };
}

/** Writes the tiny UNet folder (config.json and fp16 weights drawn from `seed`). */
export async function tinyUnetFolder(dir: string, seed = 1): Promise<void> {
  const cfg = tinyUnetConfig();
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg, null, 2));
  const rng = new Rng(seed), tensors: Record<string, { data: Float32Array; shape: number[]; dtype: "F16" }> = {};
  for (const [k, s] of Object.entries(unetShapes(unetConfig(cfg)))) {
    const n = s.reduce((a, b) => a * b, 1);
    const data = /norm.*\.weight$/.test(k) ? new Float32Array(n).fill(1) : rng.fold(k).normal(n).map((v) => 0.1 * v);
    tensors[k] = { data, shape: s, dtype: "F16" };
  }
  await Deno.writeFile(`${dir}/diffusion_pytorch_model.fp16.safetensors`, encodeSafetensors(tensors));
}

/** Four captioned 8×8 PNGs. */
export async function imageFolder(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const [i, caption] of ["red apple", "sun", "blue heart", "rocket"].entries()) {
    const data = new Uint8Array(8 * 8 * 3).map((_, j) => (j * 37 + i * 91) % 256);
    await Deno.writeFile(`${dir}/${i}.png`, encode({ width: 8, height: 8, data, channels: 3 }));
    await Deno.writeTextFile(`${dir}/${i}.txt`, caption);
  }
}

/** The ADD-style student pipeline on the diffusers folder `unet` (params as YAML flow) and the images in `images`. */
export function studentYaml(unet: string, images: string, steps = 2): string {
  return `version: 1
run:
  name: diffusers_export_tiny
  executor: cpu
  steps: ${steps}
  log_every: 1
models:
  unet:
    kind: diffusers_unet
    params: ${unet}
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
    kind: add_noise
    inputs: { x0: batch.image }
  student:
    kind: add_student
    inputs: { x_s: noise.x_s, t: noise.t, alpha: noise.alpha, sigma: noise.sigma, tokens: text.tokens }
    params: { model: unet, prediction: v }
  loss:
    kind: mse
    inputs: { pred: student.x0_hat, target: batch.image }
  opt:
    kind: optimizer
    inputs: { loss: loss.loss }
    params: { models: [unet], lr: 0.001 }
  ema:
    kind: ema
    params: { model: unet, decay: 0.5 }
  ckpt:
    kind: checkpoint
    every: 1
`;
}

/** A checkpoint folder written by hand: `config.yaml` and the student's weights (the folder's own, as float32). */
export async function handCheckpoint(dir: string, config: string, weightsOf: string, variant: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.yaml`, config);
  const t = (await readSafetensors(`${weightsOf}/diffusion_pytorch_model.${variant}.safetensors`)).tensors;
  const f32 = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, { shape: v.shape, data: toFloat32(v) }]));
  await Deno.writeFile(`${dir}/unet.safetensors`, encodeSafetensors(f32));
}
