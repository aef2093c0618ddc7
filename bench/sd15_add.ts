/**
 * Part (c) of bench/sd15.ts: one whole ADD step at SD 1.5 size through the real pipeline (`main.ts`, the scheduler's
 * fused phases on the cpu executor): a rank-4 LoRA student on the attention projections of the frozen teacher's
 * base weights, the VAE decoder with the gradient through it, and the project's add_discriminator on MobileNetV2
 * features at 224², on 256×256 images (32×32 latents), batch 1.
 *
 * The pipeline reads diffusers folders, so an SD-layout folder is written once into the git-ignored
 * `.cache/sd15_bench/`: the UNet and VAE of bench/sd15_config.ts with random weights in fp16 (1.7 GB + 0.17 GB), a
 * one-layer CLIPTextModel 768 wide (the real one has 12 layers; it runs on the host, outside the step) with the
 * fixture tokenizer, and two 256² PNGs as the dataset. The run's config, output and images go to `out/sd15_tmp/`,
 * removed afterwards; the folder is removed too unless `--keep-folder` is given.
 *
 * The run's peak RSS is GNU time's maximum resident set size of the child; its compile time and node count are its
 * own `compiled phase` line, its step time its closing `time:` line (which counts every step, the first included;
 * the `batch` stage's share is the VAE encoding of the two images at the first step).
 *
 * @module
 */
import { encode as encodePng } from "fast-png";
import { stringify } from "yaml";
import { encodeSafetensors } from "../engine/safetensors.ts";
import { vaeShapes } from "../models/diffusers/autoencoder_kl.ts";
import { vaeConfig } from "../models/diffusers/autoencoder_kl_config.ts";
import { clipTextConfigFromJson } from "../models/diffusers/clip_text_folder.ts";
import { unetShapes } from "../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../models/diffusers/unet2d_condition_config.ts";
import { clipTextShapes } from "../models/clip_text.ts";
import { findTimeLine } from "./time_line.ts";
import { memory, randomWeights } from "./sd15_host.ts";
import { SD15_UNET_CONFIG, SD15_VAE_CONFIG } from "./sd15_config.ts";

const root = new URL("../", import.meta.url).pathname;
const FOLDER = ".cache/sd15_bench", TMP = "out/sd15_tmp";
const FIXTURE_CLIP = "tests/fixtures/diffusers/clip";

async function writeWeights(file: string, shapes: Record<string, number[]>, seed: number, dtype: "F16" | "F32") {
  const w = randomWeights(shapes, seed);
  const tensors = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, { data: w[k], shape: s, dtype }]));
  await Deno.writeFile(file, encodeSafetensors(tensors));
}

/** The text encoder: the fixture CLIP's config made 768 wide (SD 1.x's width), one layer; its tokenizer as is. */
async function writeTextEncoder(dir: string) {
  const json = JSON.parse(await Deno.readTextFile(`${root}${FIXTURE_CLIP}/text_encoder/config.json`));
  Object.assign(json, { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, num_hidden_layers: 1 });
  await Deno.mkdir(`${dir}/text_encoder`, { recursive: true });
  await Deno.mkdir(`${dir}/tokenizer`, { recursive: true });
  await Deno.writeTextFile(`${dir}/text_encoder/config.json`, JSON.stringify(json, null, 2));
  const { config } = clipTextConfigFromJson(json, "config.json");
  await writeWeights(`${dir}/text_encoder/model.safetensors`, clipTextShapes(config), 2, "F32");
  for await (const f of Deno.readDir(`${root}${FIXTURE_CLIP}/tokenizer`)) {
    await Deno.copyFile(`${root}${FIXTURE_CLIP}/tokenizer/${f.name}`, `${dir}/tokenizer/${f.name}`);
  }
}

/** Writes `.cache/sd15_bench/` unless a complete one is there (its marker file is written last). */
async function ensureFolder(): Promise<void> {
  const dir = `${root}${FOLDER}`, done = `${dir}/.complete`;
  try {
    await Deno.stat(done);
    return;
  } catch { /* not there yet */ }
  const t0 = performance.now();
  for (const sub of ["unet", "vae"]) await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  await Deno.writeTextFile(`${dir}/unet/config.json`, JSON.stringify(SD15_UNET_CONFIG, null, 2));
  await writeWeights(
    `${dir}/unet/diffusion_pytorch_model.fp16.safetensors`,
    unetShapes(unetConfig(SD15_UNET_CONFIG)),
    0,
    "F16",
  );
  await Deno.writeTextFile(`${dir}/vae/config.json`, JSON.stringify(SD15_VAE_CONFIG, null, 2));
  await writeWeights(
    `${dir}/vae/diffusion_pytorch_model.fp16.safetensors`,
    vaeShapes(vaeConfig(SD15_VAE_CONFIG)),
    1,
    "F16",
  );
  await writeTextEncoder(dir);
  await Deno.writeTextFile(done, "");
  console.log(`wrote ${FOLDER}/ (random fp16 weights) in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
}

/** Two 256² RGB gradients with captions: enough for a batch of 1, and quick to encode through the VAE. */
async function writeImages(dir: string) {
  await Deno.mkdir(dir, { recursive: true });
  for (const [i, caption] of ["red apple", "blue heart"].entries()) {
    const n = 256, data = new Uint8Array(n * n * 3);
    for (let p = 0; p < n * n; p++) {
      data[3 * p + i * 2] = 255 - (p % n);
      data[3 * p + 1] = Math.floor(p / n);
    }
    await Deno.writeFile(`${dir}/${i}.png`, encodePng({ width: n, height: n, data, channels: 3 }));
    await Deno.writeTextFile(`${dir}/${i}.txt`, caption);
  }
}

/** configs/add_diffusers.yaml's recipe on the SD-size folder, LoRA student, batch 1, without the side effects. */
function config(steps: number): Record<string, unknown> {
  const unet = { path: FOLDER, subfolder: "unet", variant: "fp16" };
  const schedule = { kind: "scaled_linear", T: 1000, zeroTerminalSnr: true };
  const levels = ["block_2_add", "block_5_add", "block_12_add", "block_16_project_BN"];
  return {
    version: 1,
    // The run's caches (the converted text encoder) go with the rest of out/sd15_tmp/.
    run: { seed: 0, executor: "cpu", steps, log_every: 1, cache: `${TMP}/cache` },
    models: {
      teacher: { kind: "diffusers_unet", params: unet },
      student: {
        kind: "diffusers_unet",
        params: unet,
        lora: { rank: 4, alpha: 4, targets: ["attn[12]\\.to_(q|k|v|out\\.0)\\.weight$"], base: "teacher" },
      },
      vae: { kind: "diffusers_vae", params: { path: FOLDER, subfolder: "vae", variant: "fp16" } },
      features: { kind: "mobilenet_v2", params: { size: 224, levels } },
      disc: {
        kind: "add_discriminator",
        params: { channels: [24, 32, 96, 320], hidden: 32, text_dim: 768, image_dim: 1280 },
      },
    },
    data: { images: { kind: "image_folder", params: { path: `${TMP}/images`, size: 256 } } },
    stages: {
      batch: {
        kind: "latent_data",
        params: { dataset: "images", vae: "vae", batch: 1, cache: false, encode_batch: 1 },
      },
      text: {
        kind: "text_encode",
        inputs: { caption_id: "batch.caption_id" },
        params: { dataset: "images", model: FOLDER },
      },
      noise: {
        kind: "add_noise",
        inputs: { x0: "batch.latent" },
        params: { schedule, timesteps: [999, 749, 499, 249] },
      },
      student: {
        kind: "add_student",
        inputs: { x_s: "noise.x_s", t: "noise.t", alpha: "noise.alpha", sigma: "noise.sigma", tokens: "text.tokens" },
        params: { model: "student", prediction: "v" },
      },
      decode: { kind: "model", inputs: { latent: "student.x0_hat" }, params: { model: "vae" } },
      adversarial: {
        kind: "add_discriminator",
        inputs: { fake: "decode.image", real: "batch.image", text: "text.pooled", alpha: "noise.alpha" },
        params: { model: "disc", features: "features", r1_gamma: 0.00001, image_condition: "unless_pure_noise" },
      },
      distill: {
        kind: "add_distill",
        inputs: { x0_hat: "student.x0_hat", tokens: "text.tokens" },
        params: { model: "teacher", weighting: "exponential", schedule, prediction: "v" },
      },
      generator_loss: {
        kind: "sum",
        inputs: { a: "adversarial.loss_g", b: "distill.loss" },
        params: { weights: { a: 1, b: 2.5 }, names: { a: "adv", b: "distill" } },
      },
      opt_d: {
        kind: "optimizer",
        inputs: { loss: "adversarial.loss_d" },
        params: { models: ["disc"], lr: 0.0001, beta1: 0, beta2: 0.99 },
      },
      opt_g: {
        kind: "optimizer",
        inputs: { loss: "generator_loss.loss" },
        params: { models: ["student"], lr: 0.00002, beta1: 0, beta2: 0.99, clip_norm: 1.0 },
      },
    },
  };
}

const GNU_TIME = "/usr/bin/time";

/**
 * Runs the pipeline for `steps` steps in a child process; its output and peak RSS: GNU time's %M (the child's
 * ru_maxrss) where /usr/bin/time exists, else VmHWM of /proc/<pid>/status polled while it runs.
 */
async function runPipeline(cfgFile: string, steps: number): Promise<{ out: string; peak: number; ok: boolean }> {
  const perms = ["--allow-read=.,/usr/share/datasets", "--allow-write=.", "--allow-env", "--allow-ffi", "--allow-sys"];
  const run = ["deno", "run", ...perms, "main.ts", cfgFile, "--out", `${TMP}/run`, "--steps", String(steps)];
  const timed = await Deno.stat(GNU_TIME).then(() => true, () => false);
  const [cmd, ...args] = timed ? [GNU_TIME, "-f", "MAXRSS_KB %M", ...run] : run;
  const child = new Deno.Command(cmd, { args, cwd: root, env: { NO_COLOR: "1" }, stdout: "piped", stderr: "piped" })
    .spawn();
  let polled = 0;
  const poll = setInterval(() => {
    try {
      polled = Math.max(polled, memory(child.pid).hwm);
    } catch { /* exited */ }
  }, 250);
  const r = await child.output();
  clearInterval(poll);
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  const kb = /MAXRSS_KB (\d+)/.exec(out);
  return { out, peak: kb ? Number(kb[1]) * 1024 : polled, ok: r.success };
}

/** Part (c); returns its RESULT and PEAK lines. */
export async function addStep(runs: number, warmup: number): Promise<string[]> {
  await ensureFolder();
  await writeImages(`${root}${TMP}/images`);
  const steps = runs + warmup, cfgFile = `${TMP}/add_sd15.yaml`;
  await Deno.writeTextFile(`${root}${cfgFile}`, stringify(config(steps)));
  try {
    const t0 = performance.now();
    const r = await runPipeline(cfgFile, steps);
    const wall = (performance.now() - t0) / 1e3;
    const keep = r.out.split("\n").filter((l) => /compiled phase|^time:|memory|plan|error|Error|step /.test(l));
    for (const l of (r.ok ? keep : r.out.split("\n").slice(-40))) console.log(`  | ${l}`);
    const time = findTimeLine(r.out);
    const compiled = /compiled phase "([^"]+)": (\d+) nodes on \w+ in ([\d.]+) s/.exec(r.out);
    console.log(`sd15 ADD run: ${r.ok ? "done" : "FAILED"} in ${wall.toFixed(0)} s of wall time`);
    const ms = time ? time.total : NaN, phase = time?.phases["opt_d+opt_g"] ?? NaN;
    return [
      `RESULT sd15_add_step executor=cpu ms=${ms.toFixed(0)} phase_ms=${phase.toFixed(0)} compile_s=${
        compiled?.[3] ?? "NaN"
      } nodes=${compiled?.[2] ?? "NaN"} steps=${time?.steps ?? 0}`,
      `PEAK sd15_add_step gb=${(r.peak / 1e9).toFixed(2)}`,
    ];
  } finally {
    await Deno.remove(`${root}${TMP}`, { recursive: true }).catch(() => {});
    if (!Deno.args.includes("--keep-folder")) await Deno.remove(`${root}${FOLDER}`, { recursive: true });
  }
}
