/**
 * `teacher_pairs`: regression pairs for the 1-step student: pure noise z with a caption, and the frozen teacher's
 * deterministic DDIM sample (η = 0) from that z for that caption. Regressing the student's 1-step output x̂(z) on the
 * teacher's sample is the regression loss of DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching
 * Distillation", §3.3): it ties each noise to one image, so the student uses its noise instead of drawing one image
 * per prompt, and gives the 1-step output a direct signal from the first step on. It is not part of ADD; a config
 * adds it by wiring this stage, an `add_student` on its outputs and a distance to `target` (`mse`, `feature_mse`) into
 * the generator's loss, as configs/add.yaml does.
 *
 * The bank of `pairs` pairs is made once per run from the run's seed (examples of the dataset, each with its own
 * noise), on the run's executor, and cached under `cache` keyed by the teacher's weights and every setting, so a
 * rerun or a resume reads it back. Each step then draws `batch` pairs from the bank.
 *
 * @module
 */
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import type { Executor } from "../../engine/executors/executor.ts";
import { Rng } from "../../engine/rng.ts";
import { readSafetensors, writeSafetensors } from "../../engine/safetensors.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { sampleAdd, sampleDdim } from "../../models/diffusion/samplers.ts";
import { makeSchedule, ScheduleParams } from "../../models/diffusion/schedules.ts";
import type { UNetParams } from "../../models/unet.ts";
import { weightsKey } from "../../models/weights_key.ts";
import { datasetKinds, type HostContext, type StageDef, StageTypeError } from "../../pipeline/stage.ts";
import { loadCaptionEncoder } from "../text_encode.ts";

const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));

const Params = z.strictObject({
  /** The teacher: a declared `unet` model that no optimizer updates (the bank is made once, from its weights). */
  model: z.string(),
  /** A declared captioned dataset (`image` and `caption_id` fields) whose examples give the captions. */
  dataset: z.string(),
  /** Pairs in the bank (examples drawn without repeats while the dataset has enough). */
  pairs: z.number().int().positive().default(1024),
  /** Pairs per step. */
  batch: z.number().int().positive().default(16),
  /**
   * How the teacher samples from each pair's noise: `ddim` (η = 0, deterministic) or `add` (ADD's sampler, for a
   * distilled few-step model: re-noised between steps with noise drawn from the run's seed, so the bank is still
   * reproducible).
   */
  sampler: z.enum(["ddim", "add"]).default("ddim"),
  /** The sampler's steps (trailing spacing). */
  steps: z.number().int().positive().default(25),
  schedule: ScheduleParams.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /** Text encoder folder or hub id, as in `text_encode`. */
  text_encoder: z.string().default("models/text_encoder"),
  /**
   * Folder (absolute, or relative to the project root) caching banks by key; false: make the bank every run. Where
   * the folder cannot be written the run goes on without caching.
   */
  cache: z.union([z.string(), z.literal(false)]).default(".cache/teacher_pairs"),
  /** Images per teacher run while the bank is made. */
  gen_batch: z.number().int().positive().default(16),
});
type P = z.output<typeof Params>;

/** The bank: per pair its caption id, noise and teacher sample ([pairs, C, S, S], flattened). */
interface Bank {
  captionId: Int32Array;
  noise: Float32Array;
  target: Float32Array;
  per: number;
  /** The schedule's length: the pairs' timestep is T − 1. */
  T: number;
}

// One bank per run (a run has its own executor) and stage.
const banks = new WeakMap<Executor, Map<string, Promise<Bank>>>();

/** The teacher_pairs stage. */
export const teacherPairs: StageDef<P> = {
  kind: "teacher_pairs",
  doc: "pure noise, caption and the frozen teacher's DDIM sample from them (DMD's regression pairs), from a bank",
  role: "host",
  params: Params,
  inputs: [],
  models: (p) => [p.model],
  datasets: (p) => [p.dataset],
  types: ({ params, models, datasets }) => {
    const m = models[params.model], info = datasets[params.dataset];
    if (m?.kind !== "unet") throw new StageTypeError(`model "${params.model}" must be a unet`, ["params", "model"]);
    if (!info) throw new StageTypeError(`dataset "${params.dataset}" is not declared`, ["params", "dataset"]);
    const f = datasetKinds().get(info.kind)!.fields(info.params);
    if (!f.image || !f.caption_id) {
      throw new StageTypeError(`dataset "${params.dataset}" has no image and caption_id fields`, ["params", "dataset"]);
    }
    const u = m.params as UNetParams, img = [u.in_channels, u.size, u.size];
    if (f.image.shape.join() !== img.join()) {
      throw new StageTypeError(
        `dataset "${params.dataset}" holds images [${f.image.shape}], model "${params.model}" makes [${img}]`,
        ["params", "dataset"],
      );
    }
    const s = makeSchedule(params.schedule), T = s.alphasCumprod.length;
    if (s.alphasCumprod[T - 1] !== 0) {
      throw new StageTypeError(
        `ᾱ at T−1 = ${T - 1} is ${s.alphasCumprod[T - 1]}, not 0: the pairs start from pure noise, use ` +
          `schedule.zeroTerminalSnr`,
        ["params", "schedule"],
      );
    }
    const b = params.batch, x = { dtype: "f32" as const, shape: [b, ...img] };
    return {
      caption_id: { dtype: "i32", shape: [b] },
      x_s: x,
      t: { dtype: "f32", shape: [b] },
      alpha: { dtype: "f32", shape: [b, 1, 1, 1] },
      sigma: { dtype: "f32", shape: [b, 1, 1, 1] },
      target: x,
    };
  },
  host: async (ctx, p) => {
    let mine = banks.get(ctx.executor);
    if (!mine) banks.set(ctx.executor, mine = new Map());
    let bank = mine.get(ctx.stage);
    if (!bank) {
      bank = makeBank(ctx, p);
      mine.set(ctx.stage, bank);
    }
    const { captionId, noise, target, per, T } = await bank;
    const idx = ctx.rng.randint(p.batch, 0, p.pairs), b = p.batch;
    const x_s = new Float32Array(b * per), tgt = new Float32Array(b * per);
    idx.forEach((j, i) => {
      x_s.set(noise.subarray(j * per, (j + 1) * per), i * per);
      tgt.set(target.subarray(j * per, (j + 1) * per), i * per);
    });
    return {
      caption_id: Int32Array.from(idx, (j) => captionId[j]),
      x_s,
      t: new Float32Array(b).fill(T - 1),
      alpha: new Float32Array(b),
      sigma: new Float32Array(b).fill(1),
      target: tgt,
    };
  },
};

/** Makes the run's bank, or reads it from the cache. */
async function makeBank(ctx: HostContext, p: P): Promise<Bank> {
  const ds = await ctx.dataset(p.dataset);
  if (!ds.captionOf) throw new Error(`${ctx.stage}: dataset "${p.dataset}" has no captions`);
  const u = ctx.models[p.model].params as UNetParams, per = u.in_channels * u.size * u.size;
  const order = new Rng(ctx.seed).fold("teacher_pairs").permutation(ds.size);
  const examples = Int32Array.from({ length: p.pairs }, (_, i) => order[i % ds.size]);
  const captionId = ds.batch(examples).caption_id as Int32Array;
  const captions = Array.from(examples, (i) => ds.captionOf!(i));
  const noiseRng = new Rng(ctx.seed).fold("teacher_pairs/noise");
  const noise = new Float32Array(p.pairs * per);
  for (let i = 0; i < p.pairs; i++) noise.set(noiseRng.fold(i).normal(per), i * per);

  const weights = await ctx.readModel(p.model);
  const schedule = makeSchedule(p.schedule);
  const enc = await loadCaptionEncoder(p.text_encoder);
  const text = await enc.encode(captions);
  const settings = {
    version: 1,
    seed: ctx.seed,
    executor: ctx.executor.name,
    unet: u,
    steps: p.steps,
    ...(p.sampler === "ddim" ? {} : { sampler: p.sampler }),
    schedule: p.schedule,
    prediction: p.prediction,
  };
  // The conditioning itself is keyed (not the encoder's name), so a changed encoder or caption is a new bank.
  const key = await weightsKey(settings, { ...weights, "\0tokens": text.tokens, "\0pooled": text.pooled });
  const dir = p.cache === false ? null : isAbsolute(p.cache) ? p.cache : join(PROJECT_ROOT, p.cache);
  const file = dir && join(dir, `${key.slice(0, 32)}.safetensors`);
  if (file) {
    try {
      const t = (await readSafetensors(file)).tensors.target;
      if (t?.dtype === "F32" && t.shape.join() === [p.pairs, u.in_channels, u.size, u.size].join()) {
        ctx.log(`${ctx.stage}: ${p.pairs} teacher pairs from ${file}`);
        return { captionId, noise, target: t.data as Float32Array, per, T: schedule.alphasCumprod.length };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) ctx.log(`${ctx.stage}: ignoring the cache ${file}: ${e}`);
    }
  }

  const t0 = performance.now();
  const gb = Math.min(p.gen_batch, p.pairs);
  const runner = await UNetRunner.create(ctx.executor, u, weights, gb, enc.dims.length);
  const target = new Float32Array(p.pairs * per);
  try {
    let told = 0;
    for (let s = 0; s < p.pairs; s += gb) {
      // The last chunk is padded with the first pairs to the runner's batch; their samples are dropped.
      const rows = Array.from({ length: gb }, (_, i) => (s + i) % p.pairs);
      const n = Math.min(gb, p.pairs - s);
      const chunk = await enc.encode(rows.map((i) => captions[i]));
      const xT = new Float32Array(gb * per);
      rows.forEach((r, i) => xT.set(noise.subarray(r * per, (r + 1) * per), i * per));
      const d = runner.denoiser(p.prediction, { ...chunk, length: enc.dims.length });
      const x0 = p.sampler === "ddim"
        ? await sampleDdim(d, xT, schedule, { steps: p.steps })
        : await sampleAdd(d, xT, schedule, { steps: p.steps, rng: perPairNoise(ctx.seed, rows, per) });
      // The data lie in [-1, 1]; so do the targets.
      for (let i = 0; i < n * per; i++) target[s * per + i] = Math.max(-1, Math.min(1, x0[i]));
      if ((s + n) * 10 >= (told + 1) * p.pairs || s + n === p.pairs) {
        told = Math.floor(((s + n) * 10) / p.pairs);
        ctx.log(`${ctx.stage}: teacher pairs ${s + n}/${p.pairs} (${p.sampler.toUpperCase()} ${p.steps} steps)`);
      }
    }
  } finally {
    await runner.dispose();
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  let cached = "";
  if (file) {
    try {
      await Deno.mkdir(dir!, { recursive: true });
      await writeSafetensors(file, { target: { data: target, shape: [p.pairs, u.in_channels, u.size, u.size] } });
      cached = `, cached in ${file}`;
    } catch (e) {
      // A run allowed to write only its output folder still trains; it just makes the bank again next time.
      cached = ` (not cached: ${(e as Error).message})`;
    }
  }
  ctx.log(`${ctx.stage}: made ${p.pairs} teacher pairs in ${secs} s${cached}`);
  return { captionId, noise, target, per, T: schedule.alphasCumprod.length };
}

/**
 * The ADD sampler's re-noising draws for a chunk of pairs: each pair's from its own stream (seed, pair, draw), so a
 * pair's sample does not depend on which chunk it was made in.
 */
function perPairNoise(seed: number, rows: number[], per: number): { normal(n: number): Float32Array } {
  let draw = 0;
  return {
    normal(n: number) {
      if (n !== rows.length * per) throw new Error(`teacher_pairs: asked for ${n} draws, not ${rows.length} × ${per}`);
      const out = new Float32Array(n), d = draw++;
      rows.forEach((r, i) => out.set(new Rng(seed).fold("teacher_pairs/add").fold(r).fold(d).normal(per), i * per));
      return out;
    },
  };
}
