/**
 * What `deno task export` exports from a folder: a run folder (its newest complete checkpoint) or a checkpoint or
 * shipped model folder (a `config.yaml` and `<model>.safetensors`). The student is the UNet an `add_student` stage
 * trains, else the one an optimizer trains, else the config's first; its schedule and prediction come from the stage
 * that trained it (`add_noise`/`add_student`, or `diffusion_noise` for a teacher-style run).
 *
 * @module
 */
import { isAbsolute, relative, resolve } from "node:path";
import { parse } from "yaml";
import { latestCheckpoint } from "../pipeline/checkpoint.ts";
import { makeSchedule, type ScheduleOptions, studentTimesteps } from "../models/diffusion/schedules.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import type { UNetParams } from "../models/unet.ts";
import { loadUnetFolder } from "../sample.ts";

type Stage = { kind: string; params?: Record<string, unknown> };
/** The parts of a resolved config the export reads. */
export interface RunConfig {
  run?: { name?: string; steps?: number; cache?: string; seed?: number };
  models?: Record<string, { kind: string; params?: unknown; init?: string }>;
  data?: Record<string, { kind: string; params?: Record<string, unknown> }>;
  stages?: Record<string, Stage>;
}

/** A student ready to export. */
export interface ExportSource {
  /** The folder holding config.yaml and the weights. */
  checkpoint: string;
  /** The run folder (for report.md/report.json), when the checkpoint sits in one. */
  runFolder: string | null;
  /** The step the checkpoint was taken at (state.json), when known. */
  step: number | null;
  config: RunConfig;
  model: string;
  u: UNetParams;
  weights: Record<string, Float32Array>;
  /** The weights file read (EMA when saved, unless declined). */
  weightsFile: string;
  schedule: ScheduleOptions & { kind: string; T: number; zeroTerminalSnr: boolean };
  prediction: "eps" | "v" | "x0";
  /** The text_encode stage's model: a folder or `use-lite`. */
  textEncoder: string;
  /** The timesteps the student was trained at, when an add_noise stage says. */
  trainedTimesteps: number[] | null;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return false;
    throw e;
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The checkpoint folder to export from `dir`, and the run folder it belongs to. */
export async function locate(dir: string): Promise<{ checkpoint: string; runFolder: string | null }> {
  if (!(await isDir(dir))) throw new Error(`${dir}: no such folder`);
  if (await isDir(`${dir}/checkpoints`)) {
    const ref = await latestCheckpoint(dir);
    if (!ref) throw new Error(`${dir}/checkpoints: no complete checkpoint to export`);
    return { checkpoint: ref.dir, runFolder: dir };
  }
  if (!(await exists(`${dir}/config.yaml`))) {
    throw new Error(`${dir}: neither a run folder (checkpoints/) nor a checkpoint folder (config.yaml)`);
  }
  const up = resolve(dir, "..", "..");
  const inRun = resolve(dir, "..").endsWith("/checkpoints") && (await exists(`${up}/metrics.jsonl`));
  return { checkpoint: dir, runFolder: inRun ? up : null };
}

/** The student's name: what add_student trains, else a UNet an optimizer updates, else the first UNet. */
function studentName(cfg: RunConfig): string | undefined {
  const models = cfg.models ?? {}, stages = Object.values(cfg.stages ?? {});
  const isUnet = (n: unknown): n is string => typeof n === "string" && models[n]?.kind === "unet";
  const viaAdd = stages.find((s) => s.kind === "add_student" && isUnet(s.params?.model))?.params?.model;
  if (isUnet(viaAdd)) return viaAdd;
  for (const s of stages) {
    const trained = s.kind === "optimizer" ? (s.params?.models as unknown[] | undefined) ?? [] : [];
    const hit = trained.find(isUnet);
    if (hit) return hit;
  }
  return Object.keys(models).find(isUnet);
}

/** The params of the first stage of `kind` (the one on `model` when there is one). */
export function findStage(cfg: RunConfig, kind: string, model?: string): Record<string, unknown> | undefined {
  const stages = Object.values(cfg.stages ?? {});
  return (stages.find((s) => s.kind === kind && (model === undefined || s.params?.model === model)) ??
    stages.find((s) => s.kind === kind))?.params;
}

/** A path as a card or manifest shows it: relative to the working folder when inside it, so no machine's paths leak. */
export function shownPath(path: string): string {
  const r = relative(Deno.cwd(), resolve(path));
  return r.startsWith("..") || isAbsolute(r) ? resolve(path) : r;
}

/** Reads the student to export from a run or checkpoint folder; throws one line on anything missing. */
export async function readExportSource(dir: string, opts: { ema?: boolean } = {}): Promise<ExportSource> {
  const { checkpoint, runFolder } = await locate(dir.replace(/\/+$/, "") || "/");
  const cfgFile = `${checkpoint}/config.yaml`;
  let config: RunConfig;
  try {
    config = parse(await Deno.readTextFile(cfgFile)) ?? {};
  } catch (e) {
    throw new Error(`${cfgFile}: cannot read the run's config (${(e as Error).message.split("\n")[0]})`);
  }
  const model = studentName(config);
  if (!model) throw new Error(`${cfgFile}: no unet model in the config, so nothing to export`);
  const found = await loadUnetFolder(checkpoint, model, opts.ema ?? true);
  const noise = findStage(config, "add_noise");
  const student = findStage(config, "add_student", model);
  const teacherStyle = findStage(config, "diffusion_noise");
  const schedule = ScheduleSpec.parse(noise?.schedule ?? teacherStyle?.schedule ?? found.schedule);
  const prediction =
    (student?.prediction ?? teacherStyle?.prediction ?? found.prediction) as ExportSource["prediction"];
  makeSchedule(schedule); // refuses a bad one here rather than in the generator
  let step: number | null = null;
  try {
    step = JSON.parse(await Deno.readTextFile(`${checkpoint}/state.json`)).step ?? null;
  } catch {
    // A shipped model folder has no state.json.
  }
  const trained = noise
    ? [...new Set((noise.timesteps as number[] | undefined) ?? studentTimesteps(Number(noise.n ?? 4), schedule.T))]
    : null;
  return {
    checkpoint,
    runFolder,
    step,
    config,
    model,
    u: found.u,
    weights: found.weights,
    weightsFile: found.file,
    schedule,
    prediction,
    textEncoder: found.textEncoder.model,
    trainedTimesteps: trained,
  };
}

/** The run folder's `report.md` and `report.json`, when it wrote them. */
export async function readReport(src: ExportSource): Promise<{ md: string; json: unknown } | null> {
  // A shipped model folder may keep its report beside its weights.
  const at = src.runFolder ?? src.checkpoint;
  try {
    const md = await Deno.readTextFile(`${at}/report.md`);
    const json = JSON.parse(await Deno.readTextFile(`${at}/report.json`).catch(() => "null"));
    return { md, json };
  } catch {
    return null;
  }
}
