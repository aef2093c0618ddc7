/**
 * `deno task evaluate --teacher <dir> [--student <dir>] [--steps-teacher 1,4,50] [--steps-student 1,4] [--limit N]
 * [--judge inception_v3|mobilenet_v2] [--judge-size N] [--no-disc-fid] [--out DIR] [--executor cpu]`: the evaluation
 * report of `eval_report` (stages/eval_report.ts) for UNets saved by runs (checkpoint folders, or shipped model folders
 * holding the run's `config.yaml` and `<model>(.ema).safetensors`): the teacher with DDIM and the student with the ADD
 * sampler, on the emoji held-out captions and an equally large fixed subset of the training captions. FID-proxy and
 * text fidelity use the judge (InceptionV3 by default); the FID on the discriminator's MobileNetV2 is a column beside
 * them. Writes `<out>/report.md` and `<out>/report.json`.
 *
 * @module
 */
import { Command, Option } from "commander";
import { runCommand } from "./pipeline/cli.ts";
import { parse } from "yaml";
import { createExecutor } from "./engine/executors/auto.ts";
import type { ExecutorName } from "./engine/executors/executor.ts";
import { makeSchedule } from "./models/diffusion/schedules.ts";
import { evaluateGenerators, type Generator } from "./evaluation/evaluate.ts";
import { DEFAULT_JUDGE, type JudgeName, JUDGES } from "./evaluation/fid.ts";
import { INCEPTION_MIN_SIZE } from "./models/inception_v3.ts";
import { loadUnetFolder } from "./sample.ts";
import { emojiCaptionSets, writeReport } from "./evaluation/emoji_report.ts";
import { loadTextEncoder, textEncoderName } from "./models/text_encoder_spec.ts";

/** The emoji parameters (without `split`) of the first `emoji` dataset in a run folder's config, else {}. */
async function emojiParamsOf(dir: string): Promise<Record<string, unknown>> {
  const cfg = parse(await Deno.readTextFile(`${dir}/config.yaml`)) as {
    data?: Record<string, { kind?: string; params?: Record<string, unknown> }>;
  };
  const d = Object.values(cfg?.data ?? {}).find((x) => x?.kind === "emoji");
  const { split: _split, ...rest } = d?.params ?? {};
  return rest;
}

/** The step of a checkpoint folder (its state.json), or null for other folders. */
async function stepOf(dir: string): Promise<number | null> {
  try {
    const s = JSON.parse(await Deno.readTextFile(`${dir}/state.json`)) as { step?: unknown };
    return Number.isInteger(s.step) ? s.step as number : null;
  } catch {
    return null;
  }
}

function stepList(v: string, flag: string): number[] {
  if (v.trim() === "") return [];
  const xs = v.split(",").map((s) => Number(s.trim()));
  if (xs.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`${flag} ${v}: expected integers ≥ 1, e.g. 1,4`);
  return xs;
}

function positive(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} ${v}: expected an integer ≥ ${min}`);
  return n;
}

/** The flags as commander gives them (camel-cased; `--no-x` flags default to true). */
interface Flags {
  teacher: string;
  student?: string;
  teacherModel?: string;
  studentModel?: string;
  stepsTeacher: string;
  stepsStudent: string;
  guidance: string;
  limit?: string;
  trainImages?: string;
  batch: string;
  ema: boolean;
  judge: string;
  judgeSize?: string;
  discFid: boolean;
  out: string;
  executor: string;
}

function program(): Command {
  return new Command()
    .name("deno task evaluate")
    .description("Evaluation report (FID-proxy, text fidelity, ms/image) of a teacher and optionally a student UNet.")
    .exitOverride()
    .requiredOption("--teacher <dir>", "the teacher's folder (checkpoint or shipped model) with config.yaml")
    .option("--student <dir>", "the student's folder")
    .option("--teacher-model <name>", "which unet of the teacher folder's config (default: the first)")
    .option("--student-model <name>", "which unet of the student folder's config (default: the first)")
    .option("--steps-teacher <list>", "teacher DDIM steps, comma-separated", "1,4,50")
    .option("--steps-student <list>", "student ADD steps, comma-separated", "1,4")
    .option("--guidance <list>", "teacher classifier-free guidance scales, comma-separated (1: none)", "1")
    .option("--limit <n>", "at most this many images per caption set")
    .option("--train-images <n>", "training-caption images (default: as many as held-out)")
    .option("--batch <n>", "images per UNet run", "16")
    .option("--no-ema", "use the raw weights even when an EMA was saved")
    .addOption(
      new Option("--judge <net>", "feature network of the FID proxy and text fidelity").choices(JUDGES).default(
        DEFAULT_JUDGE,
      ),
    )
    .option("--judge-size <n>", "the judge's input size (default: 224 for inception_v3, 96 for mobilenet_v2)")
    .option("--no-disc-fid", "leave out the FID on the discriminator's own network (MobileNetV2)")
    .option("--out <dir>", "output folder for report.md and report.json", "out/evaluate")
    .addOption(
      new Option("--executor <name>", "executor").choices(["cpu", "wasm", "webgpu", "auto", "reference"]).default(
        "auto",
      ),
    );
}

/** The numbers the flags give, checked before anything is loaded. */
function parseFlags(o: Flags) {
  const stepsT = stepList(o.stepsTeacher, "--steps-teacher");
  const stepsS = o.student ? stepList(o.stepsStudent, "--steps-student") : [];
  const scales = String(o.guidance).split(",").map((x) => Number(x.trim()));
  if (!scales.every((g) => g >= 1)) throw new Error(`--guidance ${o.guidance}: expected numbers ≥ 1, e.g. 1,3`);
  const limit = positive(o.limit, "--limit", 2), trainImages = positive(o.trainImages, "--train-images", 2);
  const batch = positive(o.batch, "--batch")!;
  const judge = o.judge as JudgeName;
  const judgeSize = positive(o.judgeSize, "--judge-size", judge === "inception_v3" ? INCEPTION_MIN_SIZE : 32);
  if (stepsT.length + stepsS.length === 0) throw new Error("no steps to evaluate: --steps-teacher is empty");
  return { stepsT, stepsS, scales, limit, trainImages, batch, judge, judgeSize };
}

type Folder = Awaited<ReturnType<typeof loadUnetFolder>>;

/** The teacher with DDIM (one generator per step count and guidance scale), then the student with the ADD sampler. */
function generatorsOf(t: Folder, s: Folder | null, f: ReturnType<typeof parseFlags>): Generator[] {
  return [
    ...f.stepsT.flatMap((steps) =>
      f.scales.map((guidance) => ({
        name: `teacher ${steps}-step` + (f.scales.length > 1 ? ` cfg ${guidance}` : ""),
        u: t.u,
        weights: t.weights,
        schedule: makeSchedule(t.schedule as never),
        settings: { sampler: "ddim" as const, steps, guidance, prediction: t.prediction },
      }))
    ),
    ...(s
      ? f.stepsS.map((steps) => ({
        name: `student ${steps}-step`,
        u: s.u,
        weights: s.weights,
        schedule: makeSchedule(s.schedule as never),
        settings: { sampler: "add" as const, steps, guidance: 1, prediction: s.prediction },
      }))
      : []),
  ];
}

async function runEvaluate(o: Flags): Promise<void> {
  const f = parseFlags(o);
  const t = await loadUnetFolder(o.teacher, o.teacherModel, o.ema);
  const s = o.student ? await loadUnetFolder(o.student, o.studentModel, o.ema) : null;
  const [sName, tName] = [s && textEncoderName(s.textEncoder), textEncoderName(t.textEncoder)];
  if (s && sName !== tName) {
    throw new Error(`--student uses text encoder "${sName}", the teacher "${tName}"; they must match`);
  }
  const enc = await loadTextEncoder(t.textEncoder);
  const generators = generatorsOf(t, s, f);
  const dataset = { size: t.u.size, ...(await emojiParamsOf(o.teacher)) };
  const sets = await emojiCaptionSets(dataset, { limit: f.limit, train_images: f.trainImages });
  const ex = await createExecutor(o.executor as ExecutorName);
  try {
    const report = await evaluateGenerators({
      executor: ex,
      generators,
      sets,
      encoder: enc,
      batch: f.batch,
      fid: { judge: f.judge, size: f.judgeSize },
      discFid: o.discFid ? {} : false,
      log: (l) => console.log(l),
    });
    const paths = await writeReport(o.out, report, {
      step: await stepOf(o.student ?? o.teacher),
      teacher: t.file,
      student: s ? s.file : null,
    });
    console.log(`wrote ${paths.md} and ${paths.json}`);
  } finally {
    await ex.close();
  }
}

/** Runs the evaluate CLI; returns the exit code. */
export async function evaluateCli(argv: readonly string[]): Promise<number> {
  return await runCommand(program().action(runEvaluate), argv);
}

if (import.meta.main) Deno.exit(await evaluateCli(Deno.args));
