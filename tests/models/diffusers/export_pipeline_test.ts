// The whole exported pipeline against the real diffusers, end to end: tests/fixtures/diffusers/exported_pipeline/ is
// configs/add_diffusers.yaml's student exported by `deno task diffusers export` (make_exported_pipeline.ts), and
// exported_pipeline_io.safetensors is what diffusers' StableDiffusionPipeline.from_pretrained of it drew
// (check_pipeline.py, which also fails on any key that did not load) from the noise the project's sampler draws for a
// prompts × seeds grid (exported_pipeline_in.safetensors); exported_pipeline_fp16/ and its io file are the same
// checkpoint's `--fp16` export and what diffusers drew from it loaded with variant="fp16" (`check_pipeline.py --fp16`). Here the project's own path reads the same folder: the text
// encoder through its loader, the UNet through the diffusers_unet kind and generate() (the sample stage's sampler),
// the schedule through `schedule: { diffusers: folder }`, the VAE decode through latentDecoder, and sampleGrid whole.
//
// What must agree, and does: the prompt states; the 1-step sample, where ADD's sampler and diffusers' DDIM with the
// exported scheduler_config are the same map (t = 999, ᾱ = 0: x̂0 = −v, and DDIM's last step to ᾱ = 1 returns x̂0);
// the project's DDIM at 4 steps and the pipeline's (the same trailing timesteps, x̂0 and ε̂ of v). Where they
// legitimately differ: ADD's 4-step sampler re-noises x̂0 with fresh noise, DDIM reuses its ε̂, so the project's ADD
// sample is compared with the same sampler built from diffusers' parts (add_noise, the UNet, step()'s x̂0).
//
// Tolerances: diffusers computed in float64, the project in float32 (onnxruntime's cpu kernels, transformers.js for the
// text). A float32 UNet, VAE or text forward differs from float64 by about 1e-6 of its output's scale; through
// 4 steps and the decoder that grows to a few 1e-6. TOL = 1e-5 of each output's largest magnitude leaves a margin
// while a wrong timestep, ᾱ, scaling factor, key or layer norm is off by 1e-2 or more. The fp16 export needs no wider
// one: both sides read the same float16 values and compute in float32 or float64 (torch 1.13 has no float16
// convolution on the CPU); rounding the weights to float16 moves the outputs by 7e-4 to 2e-3, so a part read from
// the fp32 files instead fails there.
import assert from "node:assert/strict";
import "../../../stages/mod.ts";
import { createExecutor } from "../../../engine/executors/auto.ts";
import { Rng } from "../../../engine/rng.ts";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { generate, type SampleSettings, UNetRunner } from "../../../models/diffusion/generate.ts";
import { sampleGrid } from "../../../models/diffusion/sample_grid.ts";
import { makeSchedule, studentTimesteps } from "../../../models/diffusion/schedules.ts";
import { loadWeights, weightMap } from "../../../models/diffusers/folder.ts";
import { ScheduleSpec } from "../../../models/diffusers/schedule_param.ts";
import { readSchedulerConfig, scheduleFromDiffusers } from "../../../models/diffusers/scheduler_config.ts";
import { TINY_SCHEDULER_CONFIG } from "../../../models/diffusers/build_tiny.ts";
import { diffusersUnet } from "../../../models/diffusers/unet_kind.ts";
import { diffusersVae } from "../../../models/diffusers/vae_kind.ts";
import { latentDecoder } from "../../../models/diffusers/vae_runner.ts";
import { loadTextEncoder, TextEncoderSpec } from "../../../models/text_encoder_spec.ts";
import { tmp } from "../../helpers/cli_run.ts";
import { FIXTURES, maxRel } from "./diffusers_reference.ts";

const TOL = 1e-5;

const input = await readSafetensors(`${FIXTURES}exported_pipeline_in.safetensors`);
const PROMPTS: string[] = JSON.parse(input.metadata.prompts), SEEDS: number[] = JSON.parse(input.metadata.seeds);
// sample_grid.ts's layout: prompt-major rows, each prompt with every seed.
const CAPTIONS = PROMPTS.flatMap((p) => SEEDS.map(() => p)), GRID_SEEDS = PROMPTS.flatMap(() => SEEDS);
const N = CAPTIONS.length;

/** Decoded pixels [n, C, S, S] in [−1, 1] as the pipeline's output_type "np" gives them: [n, S, S, C] in [0, 1]. */
function asPipelineImage(x: Float32Array, c: number, s: number): Float32Array {
  const out = new Float32Array(x.length), n = x.length / (c * s * s);
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < s * s; p++) {
        const v = x[(i * c + ch) * s * s + p] / 2 + 0.5;
        out[(i * s * s + p) * c + ch] = Math.min(1, Math.max(0, v));
      }
    }
  }
  return out;
}

/** An exported folder, the weights variant its files are, and what diffusers drew from it. */
interface Case {
  folder: string;
  variant?: string;
  io: Record<string, Float32Array>;
}

async function fixtureCase(name: string, variant?: string): Promise<Case> {
  const io = (await readSafetensors(`${FIXTURES}${name}_io.safetensors`)).tensors;
  return {
    folder: `${FIXTURES}${name}`,
    variant,
    io: Object.fromEntries(Object.entries(io).map(([k, t]) => [k, toFloat32(t)])),
  };
}

/**
 * The project's parts, read from the exported folder as a run's stages would read a pipeline folder: the UNet and VAE
 * with the case's variant, the text encoder without one (the project's loader falls back to an fp16 file, as a run's
 * text_encode would).
 */
async function projectParts({ folder, variant }: Case) {
  const v = variant ? { variant } : {};
  const unetP = diffusersUnet.params.parse({ path: folder, subfolder: "unet", ...v });
  const u = diffusersUnet.denoiser(unetP);
  const vae = { kind: "diffusers_vae", params: diffusersVae.params.parse({ path: folder, subfolder: "vae", ...v }) };
  const settings = ScheduleSpec.parse({ diffusers: folder });
  const text_encoder = TextEncoderSpec.parse(folder), cache = await tmp("export_pipeline_cache");
  return {
    u,
    weights: loadWeights(weightMap(`${folder}/unet`, variant), u.shapes),
    vae,
    vaeWeights: diffusersVae.init(vae.params, new Rng(0)),
    settings,
    text_encoder,
    // The converted text encoder goes to a test folder, not the project's .cache/.
    cache,
    enc: await loadTextEncoder(text_encoder, cache),
  };
}

/** Each comparison's max |Δ| / max |ref| and max |Δ|, printed at the end. */
type Errs = Record<string, [number, number]>;

/** Compares the project's `got` with the pipeline's `key`, recording the error in `errs`. */
function closeTo(errs: Errs, io: Case["io"]) {
  return (name: string, got: Float32Array, key: string) => {
    const want = io[key];
    assert.equal(got.length, want.length, `${name}: ${got.length} values, the pipeline's ${want.length}`);
    const rel = maxRel(got, want);
    errs[name] = [rel, got.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i])), 0)];
    assert.ok(rel < TOL, `${name}: max |Δ| / max |ref| = ${rel}`);
  };
}

type Parts = Awaited<ReturnType<typeof projectParts>>;
type Text = Awaited<ReturnType<Parts["enc"]["encode"]>> & { length: number };

/** The project's samplers, decoder and sampleGrid on the grid, each compared with the fixture. */
async function compareDraws(t: Deno.TestContext, parts: Parts, text: Text, close: ReturnType<typeof closeTo>) {
  const { u } = parts, ex = await createExecutor("cpu");
  const runner = await UNetRunner.create(ex, u, parts.weights, N, text.length);
  const decoder = await latentDecoder(ex, parts.vae, parts.vaeWeights, [u.in_channels, u.size, u.size], N);
  try {
    const schedule = makeSchedule(parts.settings);
    const draw = async (sampler: SampleSettings["sampler"], steps: number, ref: string) => {
      const settings = { sampler, steps, guidance: 1, prediction: "v" as const };
      const latents = await generate(runner, schedule, settings, GRID_SEEDS, text);
      close(`latents ${sampler} ${steps}`, latents, `latents.${ref}`);
      const image = asPipelineImage(await decoder.decode(latents, N), decoder.channels, decoder.size);
      close(`image ${sampler} ${steps}`, image, `image.${ref}`);
    };
    await t.step("1 step: ADD's sampler and DDIM give the pipeline's latents and image", async () => {
      await draw("add", 1, "ddim.1");
      await draw("ddim", 1, "ddim.1");
    });
    await t.step("4 steps: DDIM gives the pipeline's; ADD the ADD sampler of diffusers' parts", async () => {
      await draw("ddim", 4, "ddim.4");
      await draw("add", 4, "add.4");
    });
    await t.step("sampleGrid, the sample stage's path, draws the pipeline's 1-step images", async () => {
      const grid = await sampleGrid(ex, u, parts.weights, {
        prompts: PROMPTS,
        seeds: SEEDS,
        sampler: "add",
        steps: 1,
        guidance: 1,
        prediction: "v",
        schedule: parts.settings,
        text_encoder: parts.text_encoder,
        cache: parts.cache,
        decode: decoder,
      });
      const flat = new Float32Array(grid.images.reduce((a, x) => a + x.length, 0));
      grid.images.forEach((x, i) => flat.set(x, i * x.length));
      close("sampleGrid add 1", asPipelineImage(flat, decoder.channels, decoder.size), "image.ddim.1");
    });
  } finally {
    await runner.dispose();
    await decoder.dispose();
    await ex.close();
  }
}

/** The checks of one exported folder against what diffusers drew from it. */
async function checkCase(t: Deno.TestContext, c: Case) {
  const parts = await projectParts(c), { u, enc } = parts, per = u.in_channels * u.size * u.size;
  const errs: Errs = {}, close = closeTo(errs, c.io);

  await t.step("the fixture's noise is what the project's sampler draws for the grid", () => {
    const xT = toFloat32(input.tensors.latents), noise = toFloat32(input.tensors.add_noise);
    SEEDS.forEach((seed, i) =>
      assert.deepEqual(xT.subarray(i * per, (i + 1) * per), new Rng(seed).fold("xT").normal(per))
    );
    const rng = new Rng(SEEDS[0]).fold("sampler");
    for (let s = 0; s < noise.length / (N * per); s++) {
      assert.deepEqual(noise.subarray(s * N * per, (s + 1) * N * per), rng.normal(N * per), `re-noising draw ${s}`);
    }
  });

  await t.step("the exported scheduler reads back as the student's schedule and timesteps", async () => {
    const s = await readSchedulerConfig(c.folder);
    assert.equal(s.prediction, "v");
    // Against the schedule the run trained on (the tiny source folder's), not a second read of the exported file.
    assert.deepEqual(s.alphasCumprod, scheduleFromDiffusers(TINY_SCHEDULER_CONFIG).alphasCumprod);
    for (const n of [1, 4]) assert.deepEqual(Array.from(s.timesteps(n)), Array.from(studentTimesteps(n)));
  });

  const text = { ...(await enc.encode(CAPTIONS)), length: enc.dims.length };
  await t.step("the text encoder gives the pipeline's prompt_embeds", () => {
    close("prompt_embeds", text.tokens, "prompt_embeds");
  });

  await compareDraws(t, parts, text, close);
  const shown = Object.entries(errs).map(([k, [r, a]]) => `${k}: rel ${r.toExponential(2)}, abs ${a.toExponential(2)}`);
  console.log(`${c.folder}:\n${shown.join("\n")}`);
}

Deno.test({
  name: "diffusers export: the exported pipeline draws what diffusers' StableDiffusionPipeline draws from it",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => await checkCase(t, await fixtureCase("exported_pipeline")),
});

Deno.test({
  name: 'diffusers export --fp16: the fp16 export draws what diffusers draws from it loaded with variant="fp16"',
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => await checkCase(t, await fixtureCase("exported_pipeline_fp16", "fp16")),
});
