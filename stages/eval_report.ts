/**
 * `eval_report`: the evaluation report of an ADD run (`models/evaluate.ts`): the teacher at 1, 4 and 50 DDIM steps and
 * the student at 1 and 4 ADD steps, each on the emoji held-out captions and on an equally large fixed subset of the
 * training captions: FID-proxy and top-1/top-5 text fidelity on the judge (InceptionV3 by default, not the
 * discriminator's MobileNetV2), the FID on the discriminator's own network beside it, pixel FD, and ms/image on the
 * run's executor. Writes `<out>/report.json` and `<out>/report.md` (atomically) and logs the path.
 *
 * An evaluation takes minutes, so by default it runs only on the run's last step; an `every` in the config adds
 * evaluations along the way (the last step is always evaluated).
 *
 * @module
 */
import { z } from "zod";
import { emojiCaptionSets, writeReport } from "../evaluation/emoji_report.ts";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { makeSchedule } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import { evaluateGenerators, type Generator, type GeneratorRow, type SetScores } from "../evaluation/evaluate.ts";
import { DEFAULT_JUDGE, type FidOptions, JUDGES, resolveJudge } from "../evaluation/fid.ts";
import { INCEPTION_MIN_SIZE } from "../models/inception_v3.ts";
import { findRows, type StoredRows, storeRows } from "../evaluation/teacher_rows.ts";
import { weightsKey } from "../models/weights_key.ts";
import { checkDecodes, type DenoiserModel, denoiserOf, type LatentDecoder } from "../models/denoiser.ts";
import { latentDecoder } from "../models/diffusers/vae_runner.ts";
import { type EffectContext, type ModelInfo, type StageDef, StageTypeError } from "../pipeline/stage.ts";
import { emoji } from "../datasets/emoji.ts";
import {
  checkTextWidths,
  loadTextEncoder,
  textEncoderKey,
  textEncoderName,
  TextEncoderSpec,
} from "../models/text_encoder_spec.ts";

const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));

const Steps = z.array(z.number().int().positive());

/** The emoji dataset's parameters without `split` (the report takes the held-out split and a train subset). */
const EmojiNoSplit = z.record(z.string(), z.unknown()).superRefine((v, ctx) => {
  if ("split" in v) {
    ctx.addIssue({ code: "custom", path: ["split"], message: "the report picks the splits itself; remove split" });
    return;
  }
  const r = emoji.params.safeParse(v);
  if (!r.success) {
    for (const i of r.error.issues) ctx.addIssue({ code: "custom", path: i.path, message: i.message });
  }
});

const Params = z.strictObject({
  /** The distilled student: a declared denoiser (`unet`, `diffusers_unet`, …). */
  student: z.string(),
  /** The teacher: a declared denoiser (may be frozen, i.e. updated by no optimizer). */
  teacher: z.string(),
  /** For latent denoisers: the declared VAE (`diffusers_vae`) whose decoder turns both models' samples into pixels. */
  vae: z.string().optional(),
  /** Use each model's EMA where it has one. */
  ema: z.boolean().default(true),
  /** Student steps (ADD sampler), one report row each. */
  student_steps: Steps.default([1, 4]),
  /** Teacher steps (DDIM, η = 0, trailing spacing), one report row each. */
  teacher_steps: Steps.default([1, 4, 50]),
  /** Classifier-free guidance of the teacher (1: none); a list gives one row per scale and step count. */
  teacher_guidance: z.union([z.number().min(1), z.array(z.number().min(1)).min(1)]).default(1)
    .transform((g) => typeof g === "number" ? [g] : g),
  /** Emoji dataset parameters (size, background, heldout_fraction, skin_tones), as the teacher was trained with. */
  dataset: EmojiNoSplit.default({}),
  /** Training-caption images evaluated (a fixed random subset); default: as many as the held-out set has. */
  train_images: z.number().int().min(2).optional(),
  /** At most this many images per set (a fixed random subset), for quick runs and tests. */
  limit: z.number().int().min(2).optional(),
  /** Images per UNet run. */
  batch: z.number().int().positive().default(16),
  /** Feature network of the FID proxy and text fidelity: `inception_v3` (default), or the discriminator's network. */
  judge: z.enum(JUDGES).default(DEFAULT_JUDGE),
  /** The judge's input size (the images are upsampled to it); default per judge, `JUDGE_SIZES` in models/fid.ts. */
  judge_size: z.number().int().min(32).optional(),
  /** Also the FID on the discriminator's own network (MobileNetV2 at 96²), a cheap column for comparison. */
  disc_fid: z.boolean().default(true),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /**
   * The text encoder: a model (folder, `use-lite` or hub id), or `{ model, subfolder, variant, layer }`, as in
   * `text_encode`; the same as the run's text_encode, so that it samples on the states it trained on.
   */
  text_encoder: TextEncoderSpec,
  /**
   * The shipped JSON file (relative to the project root) of the teacher's rows. The teacher is frozen, so its rows
   * depend only on its weights and these settings: they are reused when a stored key (a SHA-256 of the weights and
   * the settings) matches — in this file, or in the run's cache folder, where rows computed by a run are stored (runs
   * never write this file; `deno task ship:teacher-rows` does). The report says where the rows came from.
   */
  teacher_cache: z.string().optional(),
  /**
   * File stem of the outputs: `<out>/<name>.json` and `<name>.md` (the latest evaluation), and `<name>_history.jsonl`,
   * one line per evaluation with its step and every row's FID-proxy and top-1, to follow a run (with an `every`).
   */
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, "a file stem: letters, digits, _ . -").default("report"),
});
type P = z.output<typeof Params>;

function unetOf(models: Record<string, ModelInfo>, name: string, key: string): DenoiserModel | null {
  const info = models[name];
  if (!info) return null; // the planner reports undeclared models itself
  const u = denoiserOf(info);
  if (!u) throw new StageTypeError(`model "${name}" is a ${info.kind}, not a denoiser`, ["params", key]);
  return u;
}

/** What the report judges a model by: its pixels, decoded by the VAE for a latent denoiser. */
function pixelsOf(models: Record<string, ModelInfo>, p: P, u: DenoiserModel, key: string) {
  return p.vae ? checkDecodes(models[p.vae], p.vae, u, ["params", key]) : { channels: u.in_channels, size: u.size };
}

/** The eval_report stage. */
export const evalReport: StageDef<P> = {
  kind: "eval_report",
  doc: "report.md/json: teacher (DDIM 1/4/50) and student (ADD 1/4) FID-proxy, text fidelity, ms/image on emoji",
  role: "effect",
  params: Params,
  inputs: [],
  cadence: { default: { at: ["end"] }, always: ["end"] },
  models: (p) => [p.student, p.teacher],
  types: ({ params, models }) => {
    const size = emoji.params.parse({ ...params.dataset, split: "heldout" }).size;
    for (const key of ["student", "teacher"] as const) {
      const u = unetOf(models, params[key], key), px = u && pixelsOf(models, params, u, key);
      if (px && (px.size !== size || px.channels !== 3)) {
        throw new StageTypeError(
          `model "${params[key]}" makes ${px.channels}×${px.size}×${px.size} images; the emoji sets are ` +
            `3×${size}×${size}`,
          ["params", key],
        );
      }
    }
    for (const key of ["student", "teacher"] as const) {
      const u = unetOf(models, params[key], key);
      if (u) checkTextWidths(params[key], u, params.text_encoder);
    }
    if (params.judge === "inception_v3" && (params.judge_size ?? INCEPTION_MIN_SIZE) < INCEPTION_MIN_SIZE) {
      throw new StageTypeError(`judge_size must be ≥ ${INCEPTION_MIN_SIZE} for inception_v3`, ["params", "judge_size"]);
    }
    if (params.student_steps.length + params.teacher_steps.length === 0) {
      throw new StageTypeError("student_steps and teacher_steps are both empty: nothing to evaluate", ["params"]);
    }
    return {};
  },
  effect: async (ctx, p) => {
    const teacher = unetOf(ctx.models, p.teacher, "teacher")!, student = unetOf(ctx.models, p.student, "student")!;
    const enc = await loadTextEncoder(p.text_encoder, ctx.cache);
    for (const [name, u] of [[p.teacher, teacher], [p.student, student]] as const) {
      if (
        (u.context_dim && u.context_dim !== enc.dims.width) || (u.pooled_dim && u.pooled_dim !== enc.dims.projection)
      ) {
        throw new Error(
          `eval_report: model "${name}" takes text of width ${u.context_dim}/${u.pooled_dim}; the text encoder ` +
            `"${textEncoderName(p.text_encoder)}" gives ${enc.dims.width}/${enc.dims.projection}`,
        );
      }
    }
    const { generators, tw, vw, decoders } = await generatorsOf(ctx, p, teacher, student);
    const sets = await emojiCaptionSets(p.dataset, p);
    // A latent teacher's rows depend on the VAE's weights too.
    const keyed = p.vae ? { ...tw, ...Object.fromEntries(Object.entries(vw).map(([k, v]) => [`\0vae.${k}`, v])) } : tw;
    const cache = p.teacher_cache && p.teacher_steps.length ? await teacherCache(ctx, p, keyed, teacher) : null;
    const todo = cache?.hit ? generators.filter((g) => !g.name.startsWith("teacher ")) : generators;
    if (cache?.hit) ctx.log(`eval_report: teacher rows from ${cache.hit.from} (computed ${cache.hit.date})`);
    ctx.log(`eval_report: ${todo.length} generators × ${sets.map((s) => s.captions.length).join(" + ")} images`);
    const report = await evaluateGenerators({
      executor: ctx.executor,
      generators: todo,
      sets,
      encoder: enc,
      batch: p.batch,
      fid: judgeOptions(p),
      discFid: p.disc_fid ? {} : false,
      log: ctx.log,
    }).finally(async () => {
      for (const d of decoders) await d.dispose();
    });
    if (cache?.hit) report.rows = [...cache.hit.rows, ...report.rows];
    else if (cache) {
      const rows = report.rows.filter((r) => r.name.startsWith("teacher "));
      ctx.log(`eval_report: ${await cache.store({ date: report.date, executor: report.executor, rows })}`);
    }
    const paths = await writeReport(ctx.out, report, {
      step: ctx.step,
      teacher: p.teacher,
      student: p.student,
      weights: p.ema ? "EMA where kept" : "raw",
      teacher_rows: cache?.hit
        ? `cached ${cache.hit.date} on ${cache.hit.executor} (${cache.hit.from})`
        : "computed in this run",
    }, p.name);
    // One line per evaluation; a resumed run may repeat the steps after its checkpoint, each line carries its step.
    const line = {
      step: ctx.step,
      judge: `${report.judge.net}@${report.judge.size}`,
      rows: report.rows.map((r) => ({
        name: r.name,
        ...Object.fromEntries(
          Object.entries(r.sets).map(([k, v]) => [k, historyScores(v)]),
        ),
      })),
    };
    await Deno.writeTextFile(`${ctx.out}/${p.name}_history.jsonl`, JSON.stringify(line) + "\n", { append: true });
    ctx.log(`eval_report: ${paths.md} (and ${p.name}.json, ${p.name}_history.jsonl)`);
  },
};

/** The report's generators: the teacher at each step count and scale, the student at each; decoders to dispose. */
async function generatorsOf(ctx: EffectContext, p: P, teacher: DenoiserModel, student: DenoiserModel) {
  const schedule = makeSchedule(p.schedule);
  const tw = p.teacher_steps.length ? await ctx.readModel(p.teacher, { ema: p.ema }) : {};
  const sw = p.student_steps.length ? await ctx.readModel(p.student, { ema: p.ema }) : {};
  const vw = p.vae ? await ctx.readModel(p.vae) : {};
  const decoders: LatentDecoder[] = [];
  const decoder = async (u: DenoiserModel) => {
    if (!p.vae) return undefined;
    const d = await latentDecoder(ctx.executor, ctx.models[p.vae], vw, [u.in_channels, u.size, u.size], p.batch);
    decoders.push(d);
    return d;
  };
  const [td, sd] = [await decoder(teacher), await decoder(student)];
  const generators: Generator[] = [
    ...p.teacher_steps.flatMap((steps) =>
      p.teacher_guidance.map((guidance) => ({
        // Named as before when there is one scale: stored rows and history lines keep their names.
        name: `teacher ${steps}-step` + (p.teacher_guidance.length > 1 ? ` cfg ${guidance}` : ""),
        u: teacher,
        decode: td,
        weights: tw,
        schedule,
        settings: { sampler: "ddim" as const, steps, guidance, prediction: p.prediction },
      }))
    ),
    ...p.student_steps.map((steps) => ({
      name: `student ${steps}-step`,
      u: student,
      decode: sd,
      weights: sw,
      schedule,
      settings: { sampler: "add" as const, steps, guidance: 1, prediction: p.prediction },
    })),
  ];
  return { generators, tw, vw, decoders };
}

/**
 * The teacher's stored rows for these weights and settings (`hit`: from the shipped file or the run's cache folder),
 * and how to store rows computed now: in the run's cache folder, never in the shipped file.
 */
async function teacherCache(ctx: EffectContext, p: P, weights: Record<string, Float32Array>, u: DenoiserModel) {
  const shipped = join(PROJECT_ROOT, p.teacher_cache!);
  const key = await weightsKey(cacheSettings(p, u, ctx.executor.name), weights);
  const hit = await findRows<GeneratorRow>(key, shipped, ctx.cache);
  const store = async (rows: StoredRows<GeneratorRow>) => {
    const teacher = await weightsKey({}, weights);
    const r = await storeRows(ctx.cache, { key, for: p.teacher_cache!, teacher, ...rows });
    return "error" in r
      ? `the teacher rows are not cached (${r.error})`
      : `stored the teacher rows in ${r.file} (\`deno task ship:teacher-rows\` copies them into ${p.teacher_cache})`;
  };
  return { key, hit, store };
}

/** A set's scores as a history line keeps them. */
const historyScores = (v: SetScores) => ({ fid: v.fid, disc_fid: v.discFid, pixel_fd: v.pixelFd, top1: v.top1 });

/** The judge of the FID proxy and text fidelity that `p` selects. */
function judgeOptions(p: P): FidOptions {
  return { judge: p.judge, size: p.judge_size };
}

/** Everything besides the weights that the teacher's rows depend on. */
function cacheSettings(p: P, u: DenoiserModel, executor: string) {
  return {
    // 2: rows carry the pixel FD; 3: the judge (InceptionV3) and the FID on the discriminator's network
    rows_version: 3,
    judge: resolveJudge(judgeOptions(p)),
    disc_fid: p.disc_fid ? resolveJudge({ judge: "mobilenet_v2" }) : null,
    executor,
    // The architecture too: heads or groups change the outputs, not the weights' shapes.
    unet: u.settings,
    teacher_steps: p.teacher_steps,
    // A single scale keys as the number it always was, so existing caches still match.
    teacher_guidance: p.teacher_guidance.length === 1 ? p.teacher_guidance[0] : p.teacher_guidance,
    dataset: p.dataset,
    train_images: p.train_images ?? null,
    limit: p.limit ?? null,
    schedule: p.schedule,
    prediction: p.prediction,
    text_encoder: textEncoderKey(p.text_encoder),
  };
}
