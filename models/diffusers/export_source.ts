/**
 * What `deno task diffusers export` reads from a run or checkpoint folder: the student (a `diffusers_unet` model, the
 * one `add_student` trains unless `--model` names another), its source diffusers folder (for `config.json`), its
 * trained weights under diffusers' keys (EMA when the checkpoint kept them), the schedule and parameterisation of the
 * stage that trained it, and the frozen parts a diffusers pipeline would need beside it: the text encoder when the run
 * encoded captions with a diffusers/transformers text encoder folder, and an AutoencoderKL when the config names one.
 *
 * The project's own `kind: unet` is refused: it has no exact UNet2DConditionModel equivalent (see `UNET_REFUSAL`).
 *
 * @module
 */
import { basename, dirname } from "node:path";
import { parse } from "yaml";
import { readSafetensors, toFloat32 } from "../../engine/safetensors.ts";
import { studentTimesteps } from "../diffusion/schedules.ts";
import { type ScheduleSettings, ScheduleSpec } from "./schedule_param.ts";
import { findStage, locate, type RunConfig } from "../../ship/source.ts";
import { type DiffusersClass, diffusersClass } from "./classes.ts";
import { type DiffusersFolder, isHubId, openFolder } from "./folder.ts";
import { hubTextRoot } from "./clip_text_hub.ts";
import { textWeights } from "./clip_text_folder.ts";
import { diffusersUnet } from "./unet_kind.ts";
import { loraOf, type MergeConfig, mergedWeights } from "../../pipeline/lora_merge.ts";

/**
 * Why `kind: unet` is not exported. Checked against diffusers v0.31.0: its Transformer2DModel adds a layer norm before
 * self-attention and keeps a residual stream of the projected, group-normed map that joins the input only after
 * proj_out, while the project's attention block feeds the group-normed map straight into self-attention and adds onto
 * the un-normed map; no weights make one compute the other. (Its pooled text, a bias-free linear onto the time
 * embedding, would map onto class_embed_type "simple_projection"; the time embedding and resnets map too.)
 */
export const UNET_REFUSAL = "its attention block has no exact UNet2DConditionModel equivalent (diffusers layer-norms " +
  "a projected stream before self-attention; the unet feeds the group-normed map straight in), so there is no " +
  "exact diffusers export; deno task export writes it as ONNX";

/** A frozen part copied beside the UNet: its diffusers folder name, library and class for model_index.json. */
export interface ExtraPart {
  /** Folder in the export (`text_encoder`, `tokenizer`, `vae`). */
  name: string;
  /** Where it is read from. */
  dir: string;
  /** model_index.json's [library, class]. */
  library: "diffusers" | "transformers";
  className: string;
  /** The weights variant the run read (a VAE's params, the text_encode stage's `variant`). */
  variant?: string;
}

/** A diffusers_unet student ready to write. */
export interface DiffusersExportSource {
  checkpoint: string;
  runFolder: string | null;
  step: number | null;
  runSteps: number | null;
  config: RunConfig;
  /** The student's model name in the config. */
  model: string;
  /** Its source diffusers folder (config.json is taken from there). */
  folder: DiffusersFolder;
  // deno-lint-ignore no-explicit-any
  cls: DiffusersClass<any>;
  /** The trained weights under diffusers' keys. */
  weights: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  weightsFile: string;
  schedule: ScheduleSettings;
  prediction: "eps" | "v" | "x0";
  /** The timesteps an add_noise stage trained the student at, or null for a teacher-style run. */
  trainedTimesteps: number[] | null;
  /** The teacher's source (folder or hub id), when an add_distill stage names one. */
  teacher: string | null;
  /** The text encoder folder the run used, whether or not it is exported. */
  textEncoder: string | null;
  extras: ExtraPart[];
}

type ModelEntry = NonNullable<RunConfig["models"]>[string];
type DiffusersParams = { path?: unknown; subfolder?: unknown; variant?: unknown };

/** The student: `--model`, else what add_student trains, else a model an optimizer trains, else the first UNet. */
function pickStudent(cfg: RunConfig, cfgFile: string, wanted?: string): [string, ModelEntry] {
  const models = cfg.models ?? {}, stages = Object.values(cfg.stages ?? {});
  if (wanted !== undefined) {
    if (!Object.hasOwn(models, wanted)) {
      throw new Error(`${cfgFile}: no model "${wanted}" (models: ${Object.keys(models).join(", ") || "none"})`);
    }
    return [wanted, models[wanted]];
  }
  const isUnet = (n: unknown): n is string =>
    typeof n === "string" && ["diffusers_unet", "unet"].includes(models[n]?.kind);
  const viaAdd = stages.find((s) => s.kind === "add_student" && isUnet(s.params?.model))?.params?.model;
  const viaOpt = stages.flatMap((s) => s.kind === "optimizer" ? (s.params?.models as unknown[] | undefined) ?? [] : [])
    .find(isUnet);
  const name = [viaAdd, viaOpt, Object.keys(models).find(isUnet)].find(isUnet);
  if (!name) throw new Error(`${cfgFile}: no diffusers_unet model in the config, so nothing to export`);
  return [name, models[name]];
}

/** Opens the diffusers folder a model's params name; null when they name none. */
function folderOf(m: ModelEntry | undefined): DiffusersFolder | null {
  const p = (m?.params ?? {}) as DiffusersParams;
  if (typeof p.path !== "string") return null;
  return openFolder(p.path, { subfolder: typeof p.subfolder === "string" ? p.subfolder : undefined });
}

async function readWeights(
  checkpoint: string,
  model: string,
  shapes: Record<string, number[]>,
  ema: boolean,
  config: RunConfig,
): Promise<{ weights: Record<string, Float32Array>; file: string }> {
  const names = ema ? [`${model}.ema.safetensors`, `${model}.safetensors`] : [`${model}.safetensors`];
  for (const name of names) {
    const file = `${checkpoint}/${name}`;
    let tensors;
    try {
      tensors = (await readSafetensors(file)).tensors;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new Error(`${file}: cannot read it (${(e as Error).message.split("\n")[0]})`);
    }
    // A LoRA student's file holds its adapters alone: merged into the base's weights, it exports as a full UNet.
    if (loraOf(config as MergeConfig, model)) {
      const adapters = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, toFloat32(t)]));
      const merged = await mergedWeights(config as MergeConfig, model, adapters, {
        dir: checkpoint,
        def: diffusersUnet,
      })
        .catch((e) => {
          throw new Error(`${file}: ${(e as Error).message}`);
        });
      return { weights: merged, file };
    }
    const weights: Record<string, Float32Array> = {};
    const bad = Object.entries(shapes).filter(([k, s]) => tensors[k]?.shape.join() !== s.join()).map(([k]) => k);
    const extra = Object.keys(tensors).filter((k) => !shapes[k]);
    if (bad.length || extra.length) {
      const what = [
        bad.length ? `${bad.length} missing or mis-shaped (${bad[0]}…)` : "",
        extra.length ? `${extra.length} unexpected (${extra[0]}…)` : "",
      ];
      throw new Error(`${file}: keys do not fit the model's config.json: ${what.filter((w) => w).join("; ")}`);
    }
    for (const k of Object.keys(shapes)) weights[k] = toFloat32(tensors[k]);
    return { weights, file };
  }
  throw new Error(`${checkpoint}: no ${names.join(" or ")} (the student is not in this checkpoint)`);
}

const isFile = (p: string) => Deno.stat(p).then((s) => s.isFile, () => false);
const isDir = (p: string) => Deno.stat(p).then((s) => s.isDirectory, () => false);

/** The architecture a transformers config.json names, else `fallback`. */
async function jsonField(file: string, pick: (j: Record<string, unknown>) => unknown, fallback: string) {
  try {
    const v = pick(JSON.parse(await Deno.readTextFile(file)));
    return typeof v === "string" ? v : fallback;
  } catch {
    return fallback;
  }
}

function readsAsText(dir: string, variant?: string): boolean {
  try {
    textWeights(dir, variant);
    return true;
  } catch {
    return false;
  }
}

/**
 * The text encoder and tokenizer folders, when `model` (the text_encode stage's) is a diffusers pipeline folder (or a
 * downloaded hub id's) or its `text_encoder*` subfolder beside a `tokenizer*` one: the layout transformers'
 * `from_pretrained` reads. The project's own encoders (ONNX for transformers.js) are not: null.
 */
async function textParts(model: string | null, subfolder: string | null, variant?: string): Promise<ExtraPart[]> {
  if (!model) return [];
  // A pipeline's hub id was read from its download (clip_text_hub.ts), which has the layout of a local folder.
  const root = !(await isDir(model)) && isHubId(model) ? hubTextRoot(model) : model;
  let enc = subfolder ? `${root}/${subfolder}` : root;
  if (await isFile(`${enc}/text_encoder/config.json`)) enc = `${enc}/text_encoder`;
  const name = basename(enc), tokName = name.replace(/^text_encoder/, "tokenizer"), tok = `${dirname(enc)}/${tokName}`;
  const weights = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];
  const hasWeights = (await Promise.all(weights.map((w) => isFile(`${enc}/${w}`)))).some((b) => b) ||
    // Only a variant's files (a hub pipeline fetched as fp16): the project's text encoder reads them, so does the export.
    readsAsText(enc, variant);
  if (!name.startsWith("text_encoder") || !hasWeights || !(await isDir(tok))) return [];
  const arch = await jsonField(`${enc}/config.json`, (j) => (j.architectures as unknown[] | undefined)?.[0], "");
  if (!arch) return [];
  const tokClass = await jsonField(`${tok}/tokenizer_config.json`, (j) => j.tokenizer_class, "CLIPTokenizer");
  return [
    { name, dir: enc, library: "transformers", className: arch, variant },
    { name: tokName, dir: tok, library: "transformers", className: tokClass },
  ];
}

/** An AutoencoderKL the config names (a latent-space run's VAE), to go beside the UNet as `vae/`. */
function vaePart(cfg: RunConfig, student: string): ExtraPart[] {
  for (const [name, m] of Object.entries(cfg.models ?? {})) {
    if (name === student) continue;
    let f: DiffusersFolder | null = null;
    try {
      f = folderOf(m);
    } catch {
      continue; // not a diffusers folder
    }
    if (f?.className === "AutoencoderKL") {
      const variant = (m.params as DiffusersParams).variant;
      const v = typeof variant === "string" ? variant : undefined;
      return [{ name: "vae", dir: f.dir, library: "diffusers", className: "AutoencoderKL", variant: v }];
    }
  }
  return [];
}

async function readConfig(checkpoint: string): Promise<{ config: RunConfig; cfgFile: string }> {
  const cfgFile = `${checkpoint}/config.yaml`;
  try {
    return { config: parse(await Deno.readTextFile(cfgFile)) ?? {}, cfgFile };
  } catch (e) {
    throw new Error(`${cfgFile}: cannot read the run's config (${(e as Error).message.split("\n")[0]})`);
  }
}

async function readStep(checkpoint: string): Promise<number | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${checkpoint}/state.json`)).step ?? null;
  } catch {
    return null; // a folder without state.json is still exportable
  }
}

/** Reads the diffusers_unet student of the run or checkpoint folder `dir`; throws one line on anything wrong. */
export async function readDiffusersSource(
  dir: string,
  opts: { ema?: boolean; model?: string } = {},
): Promise<DiffusersExportSource> {
  const { checkpoint, runFolder } = await locate(dir.replace(/\/+$/, "") || "/");
  const { config, cfgFile } = await readConfig(checkpoint);
  const [model, entry] = pickStudent(config, cfgFile, opts.model);
  if (entry.kind === "unet") throw new Error(`${cfgFile}: models.${model} is kind unet: ${UNET_REFUSAL}`);
  if (entry.kind !== "diffusers_unet") {
    throw new Error(`${cfgFile}: models.${model} is kind ${entry.kind}, not a diffusers_unet: nothing to export`);
  }
  const folder = folderOf(entry);
  if (!folder) throw new Error(`${cfgFile}: models.${model} has no params.path`);
  const cls = diffusersClass(folder.className, folder.configFile);
  const shapes = cls.shapes(cls.config(folder.json, folder.configFile));
  const { weights, file } = await readWeights(checkpoint, model, shapes, opts.ema ?? true, config);
  const noise = findStage(config, "add_noise"), student = findStage(config, "add_student", model);
  const plain = findStage(config, "diffusion_noise"), text = findStage(config, "text_encode");
  const raw = noise?.schedule ?? plain?.schedule;
  if (!raw) throw new Error(`${cfgFile}: no add_noise or diffusion_noise stage, so the student's schedule is unknown`);
  const parsed = ScheduleSpec.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues.find((i) => i.code === "custom")?.message;
    throw new Error(
      `${cfgFile}: the schedule ${JSON.stringify(raw)} is not one the export reads${why ? ` (${why})` : ""}`,
    );
  }
  const schedule = parsed.data;
  const trained = noise
    ? [...new Set((noise.timesteps as number[] | undefined) ?? studentTimesteps(Number(noise.n ?? 4), schedule.T))]
    : null;
  const teacherName = findStage(config, "add_distill")?.model;
  const teacherParams = (config.models?.[teacherName as string]?.params ?? {}) as DiffusersParams;
  const textModel = typeof text?.model === "string" ? text.model : text ? "models/text_encoder" : null;
  const extras = [
    ...(await textParts(
      textModel,
      typeof text?.subfolder === "string" ? text.subfolder : null,
      typeof text?.variant === "string" ? text.variant : undefined,
    )),
    ...vaePart(config, model),
  ];
  return {
    checkpoint,
    runFolder,
    step: await readStep(checkpoint),
    runSteps: typeof config.run?.steps === "number" ? config.run.steps : null,
    config,
    model,
    folder,
    cls,
    weights,
    shapes,
    weightsFile: file,
    schedule,
    prediction: (student?.prediction ?? plain?.prediction ?? "v") as DiffusersExportSource["prediction"],
    trainedTimesteps: trained,
    teacher: typeof teacherParams.path === "string" ? teacherParams.path : (teacherName as string | undefined) ?? null,
    textEncoder: textModel,
    extras,
  };
}
