/**
 * `fashion_report`: the Fashion-MNIST evaluation of a run's UNets (`evaluation/fashion_eval.ts`), judged by the project's
 * classifier: class accuracy, per-class accuracy, the Fréchet distance of the classifier's features to the 10,000 test
 * images, and ms/image, for the teacher (DDIM, one row per step count × guidance scale) and the student (ADD sampler,
 * one row per step count), beside a floor row of real training images. Either model may be left out: the teacher's
 * own config reports on the teacher alone. Writes `<out>/<name>.json` and `<name>.md` atomically and logs the path
 * and a line per row.
 *
 * An evaluation takes minutes (1,000 images a row by default), so by default it runs only on the run's last step;
 * an `every` in the config adds evaluations along the way (the last step is always evaluated).
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { makeSchedule, type Schedule } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import type { UNetGenerator } from "../evaluation/evaluate.ts";
import {
  evaluateFashion,
  FASHION_JUDGE_LABEL,
  type FashionReport,
  fashionReportMarkdown,
  type FashionRow,
} from "../evaluation/fashion_eval.ts";
import { loadFashionJudge } from "../models/fashion_judge.ts";
import { writeAtomic } from "../models/png_grid.ts";
import { findRows, storeRows } from "../evaluation/teacher_rows.ts";
import { checkDecodes, type DenoiserModel, denoiserOf, type LatentDecoder } from "../models/denoiser.ts";
import { latentDecoder } from "../models/diffusers/vae_runner.ts";
import { weightsKey } from "../models/weights_key.ts";
import { type EffectContext, type ModelInfo, type StageDef, StageTypeError } from "../pipeline/stage.ts";
import {
  checkTextWidths,
  loadTextEncoder,
  textEncoderKey,
  textEncoderName,
  TextEncoderSpec,
} from "../models/text_encoder_spec.ts";

const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));

const Steps = z.array(z.number().int().positive());

const Params = z.strictObject({
  /** The distilled student: a declared denoiser (`unet`, `diffusers_unet`, …); omit (or null) for no student rows. */
  student: z.string().nullable().default(null),
  /** The teacher: a declared denoiser; omit (or null) for no teacher rows. */
  teacher: z.string().nullable().default(null),
  /** For latent denoisers: the declared VAE (`diffusers_vae`) whose decoder turns both models' samples into pixels. */
  vae: z.string().optional(),
  /** Use each model's EMA where it has one. */
  ema: z.boolean().default(true),
  /** Student steps (ADD sampler), one row each. */
  student_steps: Steps.default([1, 4]),
  /** Teacher steps (DDIM, η = 0), one row per step count and guidance scale. */
  teacher_steps: Steps.default([50]),
  /** Classifier-free guidance scales of the teacher (1: none). */
  teacher_guidance: z.array(z.number().min(1)).min(1).default([1]),
  /** Images per class prompt: a row judges 10 times as many. */
  per_class: z.number().int().positive().default(100),
  /** Images per UNet run; ADD's multi-step noise is drawn per batch, so keep it fixed to compare runs. */
  batch: z.number().int().positive().default(50),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /**
   * The text encoder: a model (folder, `use-lite` or hub id), or `{ model, subfolder, variant, layer }`, as in
   * `text_encode`; the same as the run's text_encode, so that it samples on the states it trained on.
   */
  text_encoder: TextEncoderSpec,
  /**
   * The shipped JSON file (relative to the project root) of teacher rows, each keyed by a SHA-256 of the teacher's
   * weights, the judge's weights and every setting the row depends on: a row is reused when its key is there or in
   * the run's cache folder, and computed and stored in the cache folder otherwise (runs never write this file;
   * `deno task ship:teacher-rows` does). A teacher's own run and its ADD runs can share one file: the ADD teacher starts
   * from the teacher run's EMA weights, so its rows come from the teacher's report.
   */
  teacher_cache: z.string().optional(),
  /** File stem of the outputs: `<out>/<name>.json` and `<name>.md`. */
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, "a file stem: letters, digits, _ . -").default("fashion_report"),
});
type P = z.output<typeof Params>;

/** The models and their rows' settings that `p` asks for. */
const roles = (p: P) =>
  [["teacher", p.teacher, p.teacher_steps.length], ["student", p.student, p.student_steps.length]] as const;

function unetOf(models: Record<string, ModelInfo>, name: string, key: string): DenoiserModel | null {
  const info = models[name];
  if (!info) return null; // the planner reports undeclared models itself
  const u = denoiserOf(info);
  if (!u) throw new StageTypeError(`model "${name}" is a ${info.kind}, not a denoiser`, ["params", key]);
  return u;
}

/** The fashion_report stage. */
export const fashionReport: StageDef<P> = {
  kind: "fashion_report",
  doc: "fashion_report.md/json: teacher (DDIM) and student (ADD) class accuracy, FD and ms/image on Fashion-MNIST",
  role: "effect",
  params: Params,
  inputs: [],
  cadence: { default: { at: ["end"] }, always: ["end"] },
  models: (p) => [p.teacher, p.student, p.vae ?? null].filter((m): m is string => m !== null),
  types: ({ params, models }) => {
    if (!roles(params).some(([, name, steps]) => name !== null && steps > 0)) {
      throw new StageTypeError("no teacher with teacher_steps and no student with student_steps: nothing to evaluate", [
        "params",
      ]);
    }
    for (const [key, name] of roles(params)) {
      const u = name === null ? null : unetOf(models, name, key);
      if (!u) continue;
      const px = params.vae ? checkDecodes(models[params.vae], params.vae, u, ["params", key]) : null;
      const [c, side] = px ? [px.channels, px.size] : [u.in_channels, u.size];
      if (side !== 32 || c !== 3) {
        const what = px ? `whose samples "${params.vae}" decodes into` : "makes";
        throw new StageTypeError(
          `model "${name}" ${what} ${c}×${side}×${side} images; the Fashion-MNIST judge takes 3×32×32`,
          ["params", key],
        );
      }
      checkTextWidths(name!, u, params.text_encoder, ["params", key]);
    }
    return {};
  },
  effect: async (ctx, p) => {
    const encoder = await loadTextEncoder(p.text_encoder, ctx.cache), schedule = makeSchedule(p.schedule);
    const judge = await loadFashionJudge(), judgeKey = await weightsKey({}, judge.weights);
    const { generators, keys, decoders } = await rowGenerators(ctx, p, encoder.dims, schedule, judgeKey);
    const file = p.teacher_cache ? join(PROJECT_ROOT, p.teacher_cache) : null;
    const stored = new Map<string, { date: string; executor: string; row: FashionRow }>();
    for (const [label, key] of keys) {
      const h = await findRows<FashionRow>(key, file, ctx.cache);
      if (h?.rows.length === 1) stored.set(label, { date: h.date, executor: h.executor, row: h.rows[0] });
    }
    const hit = (g: UNetGenerator) => stored.get(g.name);
    const todo = generators.filter((g) => !hit(g));
    ctx.log(
      `fashion_report: ${todo.length} generators × ${10 * p.per_class} images` +
        (todo.length < generators.length ? ` (${generators.length - todo.length} rows from ${p.teacher_cache})` : ""),
    );
    const report = await evaluateFashion({
      executor: ctx.executor,
      generators: todo,
      encoder,
      perClass: p.per_class,
      batch: p.batch,
      judge,
      judgeLabel: FASHION_JUDGE_LABEL,
      log: ctx.log,
    }).finally(async () => {
      for (const d of decoders) await d.dispose();
    });
    const fresh = new Map(report.rows.map((r) => [r.name, r]));
    report.rows = generators.map((g) => {
      const h = hit(g);
      return h ? { ...h.row, name: g.name, cached: `computed ${h.date} on ${h.executor}` } : fresh.get(g.name)!;
    });
    await storeTeacherRows(ctx, p, todo.filter((g) => keys.has(g.name)), keys, fresh, report);
    await writeOutputs(ctx, p, report);
  },
};

/**
 * The generators `p` asks for, in the report's row order, and with `teacher_cache` the key of each teacher row: a
 * hash of the weights (the VAE's too, with `vae`) and of everything else the row depends on; the decoders to dispose.
 */
async function rowGenerators(
  ctx: EffectContext,
  p: P,
  d: { width: number; projection: number },
  schedule: Schedule,
  judgeKey: string,
) {
  const generators: UNetGenerator[] = [], keys = new Map<string, string>(), decoders: LatentDecoder[] = [];
  const vw = p.vae ? await ctx.readModel(p.vae) : {};
  const vaeKeyed = Object.fromEntries(Object.entries(vw).map(([k, v]) => [`\0vae.${k}`, v]));
  for (const [role, name, count] of roles(p)) {
    if (name === null || count === 0) continue;
    const u = unetOf(ctx.models, name, role)!;
    // Planning checked folders and use-lite; a hub id's widths are known only now.
    if ((u.context_dim && u.context_dim !== d.width) || (u.pooled_dim && u.pooled_dim !== d.projection)) {
      throw new Error(
        `fashion_report: model "${name}" takes text of width ${u.context_dim}/${u.pooled_dim}; ` +
          `the text encoder "${textEncoderName(p.text_encoder)}" gives ${d.width}/${d.projection}`,
      );
    }
    const weights = await ctx.readModel(name, { ema: p.ema });
    const decode = p.vae
      ? await latentDecoder(ctx.executor, ctx.models[p.vae], vw, [u.in_channels, u.size, u.size], p.batch)
      : undefined;
    if (decode) decoders.push(decode);
    const add = async (label: string, sampler: "ddim" | "add", steps: number, guidance: number) => {
      const settings = { sampler, steps, guidance, prediction: p.prediction };
      generators.push({ name: label, u, weights, schedule, settings, decode });
      if (role !== "teacher" || !p.teacher_cache) return;
      // Everything but the weights a row depends on; the architecture too (heads change outputs, not shapes).
      const deps = {
        rows_version: 1,
        unet: u.settings,
        settings,
        per_class: p.per_class,
        batch: p.batch,
        schedule: p.schedule,
        text_encoder: textEncoderKey(p.text_encoder),
        judge: judgeKey,
        executor: ctx.executor.name,
      };
      keys.set(label, await weightsKey(deps, p.vae ? { ...weights, ...vaeKeyed } : weights));
    };
    if (role === "teacher") {
      for (const steps of p.teacher_steps) {
        for (const g of p.teacher_guidance) {
          await add(`teacher ${steps}-step${g === 1 ? "" : ` cfg ${g}`}`, "ddim", steps, g);
        }
      }
    } else {
      for (const steps of p.student_steps) await add(`student ${steps}-step`, "add", steps, 1);
    }
  }
  return { generators, keys, decoders };
}

/** Stores the teacher rows computed now in the run's cache folder (never in the shipped file), and says where. */
async function storeTeacherRows(
  ctx: EffectContext,
  p: P,
  computed: readonly UNetGenerator[],
  keys: ReadonlyMap<string, string>,
  fresh: ReadonlyMap<string, FashionRow>,
  report: FashionReport,
): Promise<void> {
  if (!computed.length) return;
  const teacher = await weightsKey({}, computed[0].weights);
  let where = "";
  for (const g of computed) {
    const row = fresh.get(g.name)!;
    const { date, executor } = report;
    const r = await storeRows(ctx.cache, {
      key: keys.get(g.name)!,
      for: p.teacher_cache!,
      teacher,
      date,
      executor,
      rows: [row],
    });
    where = "error" in r ? `not cached (${r.error})` : `stored in ${r.file.replace(/[^/]*$/, "")}`;
  }
  ctx.log(
    `fashion_report: the teacher rows ${where} (\`deno task ship:teacher-rows\` copies them into ${p.teacher_cache})`,
  );
}

/** Writes `<name>.json` and `<name>.md` atomically, and logs a line per row and the report's path. */
async function writeOutputs(ctx: EffectContext, p: P, report: FashionReport): Promise<void> {
  const meta = {
    step: ctx.step,
    teacher: p.teacher,
    student: p.student,
    weights: p.ema ? "EMA where kept" : "raw",
    batch: p.batch,
  };
  await Deno.mkdir(ctx.out, { recursive: true });
  const json = `${ctx.out}/${p.name}.json`, md = `${ctx.out}/${p.name}.md`;
  await writeAtomic(json, JSON.stringify({ ...meta, ...report }, null, 2) + "\n");
  await writeAtomic(md, fashionReportMarkdown(report, meta));
  const line = (name: string, x: { accuracy: number; fd: number }, ms: string) =>
    ctx.log(`fashion_report: ${name}: accuracy ${(100 * x.accuracy).toFixed(1)}%, FD ${x.fd.toFixed(2)}${ms}`);
  if (report.floor) line("real training images (floor)", report.floor, "");
  for (const r of report.rows) {
    line(r.name, r, `, ${r.msPerImage.toFixed(1)} ms/image${r.cached ? ` (stored, ${r.cached})` : ""}`);
  }
  ctx.log(`fashion_report: ${md} (and ${p.name}.json)`);
}
