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
 * `refresh` remakes the targets part-way through the run from the model being trained (its EMA, sampled with ADD's
 * few-step sampler from the same noises and captions): once the student's few-step samples are better than the
 * teacher's, its 1-step output regresses on them — the self pairs of the fifth round in docs/experiments/README.md, in one run. The
 * teacher's targets stay available as `teacher_target`, for a term that should stay tied to the teacher (its colours).
 * Remade targets are the stage's state: checkpoints save them, so a resume past a refresh reads them back.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { Rng } from "../engine/rng.ts";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.ts";
import { UNetRunner } from "../models/diffusion/generate.ts";
import { cfg, sampleAdd, sampleDdim } from "../models/diffusion/samplers.ts";
import { makeSchedule } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import { type DenoiserModel, denoiserOf, notADenoiser } from "../models/denoiser.ts";
import { weightsKey } from "../models/weights_key.ts";
import { datasetKinds, type HostContext, type StageDef, StageTypeError } from "../pipeline/stage.ts";
import { checkTextWidths, loadTextEncoder, TextEncoderSpec } from "../models/text_encoder_spec.ts";

const Params = z.strictObject({
  /** The teacher: a declared denoiser that no optimizer updates (the bank is made once, from its weights). */
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
  /**
   * Classifier-free guidance of the teacher's samples (1: none), as the distillation target may have; remade
   * targets (`refresh`) come from a distilled model and are never guided.
   */
  guidance: z.number().min(1).default(1),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /**
   * The teacher denoises VAE latents: its samples are latents, which are not clipped to the images' [-1, 1], and the
   * dataset's images (encoded elsewhere) need not have the model's shape.
   */
  latent: z.boolean().default(false),
  /**
   * The text encoder: a model (folder, `use-lite` or hub id), or `{ model, subfolder, variant, layer }`, as in
   * `text_encode`; the same as the run's text_encode, so that it samples on the states it trained on.
   */
  text_encoder: TextEncoderSpec,
  /**
   * Where banks are cached by key: true, `teacher_pairs/` in the run's cache folder (`run.cache`); a folder (absolute,
   * or relative to the working directory); false: make the bank every run. Where the folder cannot be written the
   * run goes on without caching.
   */
  cache: z.union([z.boolean(), z.string().min(1)]).default(true),
  /** Images per teacher run while the bank is made. */
  gen_batch: z.number().int().positive().default(16),
  /**
   * Remake the targets after each step in `at` (ascending) from `model`'s weights at that point (with `ema`, its EMA
   * where an `ema` stage keeps one, else its weights), sampled from each pair's noise and caption with `sampler` in
   * `steps` steps.
   */
  refresh: z.strictObject({
    at: z.array(z.number().int().positive()).min(1),
    model: z.string(),
    ema: z.boolean().default(true),
    sampler: z.enum(["ddim", "add"]).default("add"),
    steps: z.number().int().positive().default(4),
  }).optional(),
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
  /** The captions' text, for remaking targets. */
  captions: string[];
}

/** The teacher_pairs stage. */
export const teacherPairs: StageDef<P> = {
  kind: "teacher_pairs",
  doc: "pure noise, caption and the frozen teacher's DDIM sample from them (DMD's regression pairs), from a bank",
  role: "host",
  params: Params,
  inputs: [],
  models: (p) => [p.model, ...(p.refresh && p.refresh.model !== p.model ? [p.refresh.model] : [])],
  datasets: (p) => [p.dataset],
  types: ({ params, models, datasets }) => {
    const m = models[params.model], info = datasets[params.dataset], u = denoiserOf(m);
    if (!u) throw new StageTypeError(notADenoiser(params.model, m), ["params", "model"]);
    if (!info) throw new StageTypeError(`dataset "${params.dataset}" is not declared`, ["params", "dataset"]);
    const f = datasetKinds().get(info.kind)!.fields(info.params);
    if (!f.image || !f.caption_id) {
      throw new StageTypeError(`dataset "${params.dataset}" has no image and caption_id fields`, ["params", "dataset"]);
    }
    const img = [u.in_channels, u.size, u.size];
    checkTextWidths(params.model, u, params.text_encoder);
    if (!params.latent && f.image.shape.join() !== img.join()) {
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
    const r = params.refresh;
    if (r) {
      const ru = denoiserOf(models[r.model]);
      if (!ru || ru.size !== u.size || ru.in_channels !== u.in_channels) {
        throw new StageTypeError(`model "${r.model}" must be a denoiser making [${img}]`, [
          "params",
          "refresh",
          "model",
        ]);
      }
      if (r.at.some((a, i) => i > 0 && a <= r.at[i - 1])) {
        throw new StageTypeError(`[${r.at}] is not ascending`, ["params", "refresh", "at"]);
      }
    }
    const b = params.batch, x = { dtype: "f32" as const, shape: [b, ...img] };
    return {
      ...(r ? { teacher_target: x } : {}),
      caption_id: { dtype: "i32", shape: [b] },
      x_s: x,
      t: { dtype: "f32", shape: [b] },
      alpha: { dtype: "f32", shape: [b, 1, 1, 1] },
      sigma: { dtype: "f32", shape: [b, 1, 1, 1] },
      target: x,
    };
  },
  host: async (ctx, p) => {
    // The seed determines the bank (and the cache keeps it), so it is the run's memo, not checkpointed state.
    const bank = await ctx.memo("bank", () => makeBank(ctx, p));
    const { captionId, noise, target, per, T } = bank;
    const current = p.refresh ? await refreshedTargets(ctx, p, bank) : target;
    const idx = ctx.rng.randint(p.batch, 0, p.pairs), b = p.batch;
    const rows = (from: Float32Array) => {
      const out = new Float32Array(b * per);
      idx.forEach((j, i) => out.set(from.subarray(j * per, (j + 1) * per), i * per));
      return out;
    };
    const x_s = rows(noise), tgt = rows(current);
    return {
      ...(p.refresh ? { teacher_target: current === target ? tgt : rows(target) } : {}),
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
  const u = denoiserOf(ctx.models[p.model])!, per = u.in_channels * u.size * u.size;
  const order = new Rng(ctx.seed).fold("teacher_pairs").permutation(ds.size);
  const examples = Int32Array.from({ length: p.pairs }, (_, i) => order[i % ds.size]);
  const captionId = ds.batch(examples).caption_id as Int32Array;
  const captions = Array.from(examples, (i) => ds.captionOf!(i));
  const noiseRng = new Rng(ctx.seed).fold("teacher_pairs/noise");
  const noise = new Float32Array(p.pairs * per);
  for (let i = 0; i < p.pairs; i++) noise.set(noiseRng.fold(i).normal(per), i * per);

  const weights = await ctx.readModel(p.model);
  const schedule = makeSchedule(p.schedule);
  const enc = await loadTextEncoder(p.text_encoder, ctx.cache);
  const text = await enc.encode(captions);
  const settings = {
    version: 1,
    seed: ctx.seed,
    executor: ctx.executor.name,
    unet: u.settings,
    steps: p.steps,
    ...(p.sampler === "ddim" ? {} : { sampler: p.sampler }),
    ...(p.latent ? { latent: true } : {}),
    // Absent at 1 so that the banks cached before guidance existed keep their keys.
    ...(p.guidance === 1 ? {} : { guidance: p.guidance }),
    schedule: p.schedule,
    prediction: p.prediction,
  };
  // The conditioning itself is keyed (not the encoder's name), so a changed encoder or caption is a new bank.
  const key = await weightsKey(settings, { ...weights, "\0tokens": text.tokens, "\0pooled": text.pooled });
  const dir = p.cache === false ? null : p.cache === true ? join(ctx.cache, "teacher_pairs") : p.cache;
  const file = dir && join(dir, `${key.slice(0, 32)}.safetensors`);
  if (file) {
    try {
      const t = (await readSafetensors(file)).tensors.target;
      if (t?.dtype === "F32" && t.shape.join() === [p.pairs, u.in_channels, u.size, u.size].join()) {
        ctx.log(`${ctx.stage}: ${p.pairs} teacher pairs from ${file}`);
        return { captionId, noise, target: t.data as Float32Array, per, T: schedule.alphasCumprod.length, captions };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) ctx.log(`${ctx.stage}: ignoring the cache ${file}: ${e}`);
    }
  }

  const t0 = performance.now();
  const target = await sampleTargets(ctx, p, weights, u, { noise, captions, per }, {
    sampler: p.sampler,
    steps: p.steps,
    guidance: p.guidance,
    what: p.guidance === 1 ? "teacher pairs" : `teacher pairs, guidance ${p.guidance}`,
  });
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
  return { captionId, noise, target, per, T: schedule.alphasCumprod.length, captions };
}

/** Samples `weights` from every pair's noise and caption; the targets, pixels clipped to the data's [-1, 1]. */
async function sampleTargets(
  ctx: HostContext,
  p: P,
  weights: Record<string, Float32Array>,
  u: DenoiserModel,
  bank: { noise: Float32Array; captions: string[]; per: number },
  how: { sampler: "ddim" | "add"; steps: number; guidance: number; what: string },
): Promise<Float32Array> {
  const { noise, captions, per } = bank;
  const schedule = makeSchedule(p.schedule);
  const enc = await loadTextEncoder(p.text_encoder, ctx.cache);
  const gb = Math.min(p.gen_batch, p.pairs);
  const runner = await UNetRunner.create(ctx.executor, u, weights, gb, enc.dims.length);
  const target = new Float32Array(p.pairs * per);
  const empty = how.guidance > 1 ? await enc.encode(new Array(gb).fill("")) : null;
  try {
    let told = 0;
    for (let s = 0; s < p.pairs; s += gb) {
      // The last chunk is padded with the first pairs to the runner's batch; their samples are dropped.
      const rows = Array.from({ length: gb }, (_, i) => (s + i) % p.pairs);
      const n = Math.min(gb, p.pairs - s);
      const chunk = await enc.encode(rows.map((i) => captions[i]));
      const xT = new Float32Array(gb * per);
      rows.forEach((r, i) => xT.set(noise.subarray(r * per, (r + 1) * per), i * per));
      const cond = runner.denoiser(p.prediction, { ...chunk, length: enc.dims.length });
      const d = empty
        ? cfg(cond, runner.denoiser(p.prediction, { ...empty, length: enc.dims.length }), how.guidance)
        : cond;
      const x0 = how.sampler === "ddim"
        ? await sampleDdim(d, xT, schedule, { steps: how.steps })
        : await sampleAdd(d, xT, schedule, { steps: how.steps, rng: perPairNoise(ctx.seed, rows, per) });
      const lo = p.latent ? -Infinity : -1, hi = p.latent ? Infinity : 1;
      for (let i = 0; i < n * per; i++) target[s * per + i] = Math.max(lo, Math.min(hi, x0[i]));
      if ((s + n) * 10 >= (told + 1) * p.pairs || s + n === p.pairs) {
        told = Math.floor(((s + n) * 10) / p.pairs);
        ctx.log(`${ctx.stage}: ${how.what} ${s + n}/${p.pairs} (${how.sampler.toUpperCase()} ${how.steps} steps)`);
      }
    }
  } finally {
    await runner.dispose();
  }
  return target;
}

/**
 * The targets in use at this step: the teacher's until the first refresh, then those remade after the latest refresh
 * step passed — made now from the model's current weights when that step was the previous one. They are the stage's
 * state (`target`, remade after step `target_after`), so a checkpoint saves them and a resume past a refresh has them.
 */
async function refreshedTargets(ctx: HostContext, p: P, bank: Bank): Promise<Float32Array> {
  const r = p.refresh!;
  const done = r.at.filter((a) => a < ctx.step);
  if (!done.length) return bank.target;
  const after = done[done.length - 1];
  const u = denoiserOf(ctx.models[r.model])!;
  const have = ctx.state.get("target"), haveAfter = ctx.state.get("target_after");
  if (haveAfter?.[0] === after && have instanceof Float32Array && have.length === p.pairs * bank.per) return have;
  if (ctx.step !== after + 1) {
    ctx.log(
      `${ctx.stage}: warning: the targets remade after step ${after} are not in the run's state (a checkpoint ` +
        `written before stages kept state?); remaking them from the weights at step ${ctx.step - 1} (this run will ` +
        `not reproduce an uninterrupted one)`,
    );
  }
  const t0 = performance.now();
  const weights = await ctx.readModel(r.model, { ema: r.ema });
  const target = await sampleTargets(ctx, p, weights, u, bank, {
    sampler: r.sampler,
    steps: r.steps,
    guidance: 1,
    what: `targets from ${r.model}${r.ema ? " (EMA where kept)" : ""}`,
  });
  ctx.state.set("target", target);
  ctx.state.set("target_after", Int32Array.of(after));
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  ctx.log(`${ctx.stage}: remade ${p.pairs} targets after step ${after} in ${secs} s`);
  return target;
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
