/**
 * The config's schema: the sections a config file has, their defaults, and the size bounds that model kinds' param
 * schemas share. The interfaces say what each key is; the zod schemas below them are what enforces it.
 *
 * @module
 */
import { z } from "zod";
import type { At } from "./cadence.ts";

/** The run section after defaults. */
export interface RunConfig {
  /** Name of the run; defaults to the config file's stem. */
  name?: string;
  /** Seed of every random stream of the run (default 0). */
  seed: number;
  /** Which executor runs the compiled graphs (default `auto`). */
  executor: "cpu" | "wasm" | "webgpu" | "auto" | "reference";
  /** Number of training steps (default 1000). */
  steps: number;
  /** Output folder; defaults to `out/<name>`. */
  out?: string;
  /** Print a progress line (off a terminal) and append to metrics.jsonl every N steps (default 10). */
  log_every: number;
  /**
   * Folder of caches that outlive a run (teacher pairs, evaluation rows), relative to the working directory; stages
   * never write into the source tree at run time (default `.cache`).
   */
  cache: string;
  /**
   * Trace all update phases into one graph when they run at the same steps (default true): the same arithmetic as
   * one graph per phase, but stages that do not depend on an earlier phase's update (ADD's student forward) are
   * computed once. `false` gives one graph per phase (each phase's time then shows apart in the `time:` line).
   */
  fuse_phases: boolean;
}

/** A model declaration: a registered kind, its params, and optionally a safetensors file to start from. */
export interface ModelConfig {
  /** A registered model kind. */
  kind: string;
  /** The kind's params, checked against its schema when planning. */
  params: Record<string, unknown>;
  /** A safetensors file (relative to the config) with initial parameters. */
  init?: string;
  /** Train low-rank adapters on a frozen base model's weights instead of the model's own (models/lora.ts). */
  lora?: LoraConfig;
}

/**
 * Low-rank adapters: each targeted weight W is used as W + (alpha/rank)·B·A, where W is the base model's and only A
 * and B are trained. Every other weight of the model is the base's too, frozen.
 */
export interface LoraConfig {
  /** Inner size of each B·A. */
  rank: number;
  /** The update's scale is alpha/rank (default: rank, a scale of 1). */
  alpha?: number;
  /** Regular expressions searched in each parameter path (`self`, `conv[12]`); only 2-D and 4-D weights match. */
  targets: string[];
  /** The frozen model (same kind and params) whose weights are this model's base, held once. */
  base: string;
}

/** A dataset declaration. */
export interface DatasetConfig {
  /** A registered dataset kind. */
  kind: string;
  /** The kind's params, checked against its schema when planning. */
  params: Record<string, unknown>;
}

/** A stage: its kind, input wiring, params and cadence. */
export interface StageConfig {
  /** A registered stage kind. */
  kind: string;
  /** Input port → "stage.port". */
  inputs: Record<string, string>;
  /** The kind's params, checked against its schema when planning. */
  params: Record<string, unknown>;
  /** Effects: fire every N steps (with neither `every` nor `at`: the kind's default, usually every step). */
  every?: number;
  /**
   * Effects: fire at these moments — `start` (the first step an invocation runs), `end` (the run's last step), or step
   * numbers; one or a list, beside `every` when both are given (pipeline/cadence.ts).
   */
  at?: At | At[];
}

/** A config after the first validation pass (stage/model/dataset params are checked against their kinds later). */
export interface Config {
  /** The config format's version: 1. */
  version: 1;
  /** How the run goes: seed, executor, steps, outputs. */
  run: RunConfig;
  /** Declared models by name. */
  models: Record<string, ModelConfig>;
  /** Declared datasets by name. */
  data: Record<string, DatasetConfig>;
  /** The pipeline's stages by name, in declaration order. */
  stages: Record<string, StageConfig>;
}

const NAME = z.string().regex(
  /^[A-Za-z_][A-Za-z0-9_-]*$/,
  "a name of letters, digits, _ and - that starts with a letter or _",
);
const REF = z.string().regex(
  /^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_-]*$/,
  "a reference stage.port (like batch.x)",
);

/**
 * Upper bounds for the sizes in model kinds' param schemas. They sit far above anything that fits a machine; what
 * they stop is a value like 1e12 reaching a model's `shapes`, where a loop over 1e12 blocks never ends and products of
 * such widths lose integer precision (above 2^53). Sizes within them are judged by planning's memory estimate.
 */
export const SIZE_LIMITS = {
  /** Channels or features of one layer. */
  width: 65_536,
  /** Width of a dense layer, whose input may be a flattened image. */
  dense: 1_048_576,
  /** Repeats of a block, or entries of a list of layers. */
  count: 64,
  /** Side of a square image, in pixels. */
  side: 4_096,
} as const;

/** A positive integer size at most `max`. */
export const sizeSchema = (max: number): z.ZodNumber => z.number().int().positive().max(max);

const runSchema = z.strictObject({
  name: NAME.optional(),
  seed: z.number().int().min(0).default(0),
  executor: z.enum(["cpu", "wasm", "webgpu", "auto", "reference"]).default("auto"),
  steps: z.number().int().positive().default(1000),
  out: z.string().min(1).optional(),
  log_every: z.number().int().positive().default(10),
  cache: z.string().min(1).default(".cache"),
  fuse_phases: z.boolean().default(true),
});
/** The run section (`RunConfig`). */
export const RunSchema: z.ZodType<RunConfig> = runSchema;

/** A moment a stage fires at. */
const AT = z.union([z.enum(["start", "end"]), z.number().int().positive()]);

const loraSchema = z.strictObject({
  rank: sizeSchema(SIZE_LIMITS.width),
  alpha: z.number().positive().optional(),
  targets: z.array(z.string().min(1)).min(1),
  base: NAME,
});

const modelSchema = z.strictObject({
  kind: z.string(),
  params: z.record(z.string(), z.unknown()).default({}),
  init: z.string().optional(),
  lora: loraSchema.optional(),
});
/** A model declaration (`ModelConfig`). */
export const ModelSchema: z.ZodType<ModelConfig> = modelSchema;

const datasetSchema = z.strictObject({
  kind: z.string(),
  params: z.record(z.string(), z.unknown()).default({}),
});
/** A dataset declaration (`DatasetConfig`). */
export const DatasetSchema: z.ZodType<DatasetConfig> = datasetSchema;

const stageSchema = z.strictObject({
  kind: z.string(),
  inputs: z.record(z.string(), REF).default({}),
  params: z.record(z.string(), z.unknown()).default({}),
  every: z.number().int().positive().optional(),
  at: z.union([AT, z.array(AT).min(1)], { error: '"start", "end", a step number or a list of them' }).optional(),
});
/** A stage (`StageConfig`). */
export const StageSchema: z.ZodType<StageConfig> = stageSchema;

const configSchema = z.strictObject({
  version: z.literal(1, { error: "1 (the only config version)" }),
  run: RunSchema.default({
    seed: 0,
    executor: "auto",
    steps: 1000,
    log_every: 10,
    cache: ".cache",
    fuse_phases: true,
  }),
  models: z.record(NAME, ModelSchema).default({}),
  data: z.record(NAME, DatasetSchema).default({}),
  stages: z.record(NAME, StageSchema).refine((s) => Object.keys(s).length > 0, "expected at least one stage"),
});
/** The whole config (`Config`). */
export const ConfigSchema: z.ZodType<Config> = configSchema;

/** True when A and B are assignable both ways. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
// The annotations above check one way only: a key added to a schema and not to its interface would pass unseen.
const _interfacesMatchSchemas: [
  Same<z.output<typeof runSchema>, RunConfig>,
  Same<z.output<typeof modelSchema>, ModelConfig>,
  Same<z.output<typeof loraSchema>, LoraConfig>,
  Same<z.output<typeof datasetSchema>, DatasetConfig>,
  Same<z.output<typeof stageSchema>, StageConfig>,
  Same<z.output<typeof configSchema>, Config>,
] = [true, true, true, true, true, true];
