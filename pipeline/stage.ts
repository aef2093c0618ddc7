/**
 * What a stage is: its ports, its parameter schema, the models it uses, and one of four roles.
 *
 * - `host`: runs on the host every step and produces tensors (data loading, text encoding).
 * - `traced`: differentiable; traced into the compiled graph of every update phase that needs it.
 * - `optimizer`: closes an update phase: differentiates its `loss` input and updates its models' parameters.
 * - `effect`: runs on the host at its cadence for side effects (checkpoints, metrics, samples), after the step.
 *
 * A stage kind is one file that exports a `StageDef`, plus one line in `stages/mod.ts` (or a user's own
 * `registerStage` call). Configs can only name registered kinds: they never import or execute code.
 *
 * @module
 */
import type { Executor, HostArray } from "../engine/executors/executor.ts";
import type { DType } from "../engine/ir.ts";
import type { Rng } from "../engine/rng.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { At, Cadence, KindCadence } from "./cadence.ts";
import type { RunSnapshot } from "./checkpoint.ts";
import type { StageState } from "./stage_state.ts";

export type { At, Cadence, KindCadence };

/** The type of a port: dtype and static shape ([] for a scalar). */
export interface PortSpec {
  /** Element type. */
  dtype: DType;
  /** Size of each axis. */
  shape: number[];
}

/** What a stage sees while its outputs are typed (before step 1). */
export interface TypeContext<P> {
  /** The stage's params, defaults applied. */
  params: P;
  /** Types of the connected inputs. */
  inputs: Record<string, PortSpec>;
  /** Declared models (name → kind and resolved parameter shapes). */
  models: Record<string, ModelInfo>;
  /** Declared datasets (name → its resolved description). */
  datasets: Record<string, DatasetInfo>;
}

/** A declared model, as stages see it while typing and tracing. */
export interface ModelInfo {
  /** The name the config declares it under. */
  name: string;
  /** Its model kind. */
  kind: string;
  /** Its params, parsed by the kind's schema. */
  params: unknown;
  /** Parameter path → shape. */
  shapes: Record<string, number[]>;
}

/** A declared dataset. */
export interface DatasetInfo {
  /** The name the config declares it under. */
  name: string;
  /** Its dataset kind. */
  kind: string;
  /** Its params, parsed by the kind's schema. */
  params: unknown;
}

/** Thrown by a stage's `types` when its inputs or params do not fit; reported at the stage's config position. */
export class StageTypeError extends Error {
  /** Planning reports errors of this name as their message alone, at the stage. */
  override name = "StageTypeError";
  /** Config path below the stage (e.g. ["inputs", "x"]) where the problem is, for the file:line:col. */
  constructor(message: string, readonly at: (string | number)[] = []) {
    super(message);
  }
}

/** `f32[2,3]` */
export const fmtSpec = (s: PortSpec): string => `${s.dtype}[${s.shape.join(",")}]`;

/**
 * Checks an input port's type in a stage's `types`: `shape` entries of -1 match any size. Returns the spec, or throws
 * a `StageTypeError` located at the input.
 */
export function expectPort(
  inputs: Record<string, PortSpec>,
  port: string,
  want: { dtype?: PortSpec["dtype"]; shape?: number[]; rank?: number },
): PortSpec {
  const got = inputs[port];
  if (!got) throw new StageTypeError(`input "${port}" is not connected`, ["inputs"]);
  const shapeOk = !want.shape ||
    (want.shape.length === got.shape.length && want.shape.every((d, i) => d === -1 || d === got.shape[i]));
  const rankOk = want.rank === undefined || got.shape.length === want.rank;
  if ((want.dtype && got.dtype !== want.dtype) || !shapeOk || !rankOk) {
    const exp = want.shape
      ? `${want.dtype ?? got.dtype}[${want.shape.map((d) => (d === -1 ? "*" : d)).join(",")}]`
      : `${want.dtype ?? got.dtype} of rank ${want.rank ?? got.shape.length}`;
    throw new StageTypeError(`input "${port}" is ${fmtSpec(got)}, expected ${exp}`, ["inputs", port]);
  }
  return got;
}

/** What a traced stage gets while its graph is built. */
export interface TraceContext {
  /** Name of the stage being traced. */
  stage: string;
  /** The model's parameters in this phase, as traced tensors (nested by dotted path). */
  model(name: string): Record<string, Tensor>;
  /** Applies a declared model to traced inputs. */
  apply(name: string, inputs: Record<string, Tensor>): Record<string, Tensor>;
  /** Standard-normal noise of `shape`, drawn on the host per step (same values whichever executor runs it). */
  normal(tag: string, shape: number[]): Tensor;
  /** Uniform [0, 1) noise of `shape`, drawn per step on the host. */
  uniform(tag: string, shape: number[]): Tensor;
  /** Logs a scalar under `<stage>.<name>` each time the phase runs. */
  metric(name: string, value: Tensor): void;
  /** The 1-based step, as a traced f32 scalar. */
  step: Tensor;
}

/** What an optimizer kind's traced update gets, beside its settings. */
export interface UpdateContext {
  /**
   * This optimizer's 1-based update count as a traced f32 scalar: the step divided by the phase's cadence, so a phase
   * run every k steps makes its n-th update at step n·k (Adam's bias corrections and schedules count updates).
   */
  count: Tensor;
  /** The run's length in this optimizer's updates (its steps over the cadence), a schedule's default end. */
  runUpdates?: number;
  /** Logs a scalar under `<stage>.<name>` each time the phase runs. */
  metric(name: string, value: Tensor): void;
}

/**
 * One packed buffer's share of an update: flat parameters, their gradient, and the optimizer's state for them. A
 * model is one buffer, hence one slot, unless its packing exceeds the executor's limit (engine/pack.ts
 * `chunkLayout`): then it has one slot per chunk, in order, each with state of its own size. So a rule must be
 * elementwise within a model, or combine a model's slots (as a global-norm clip combines all of them).
 */
export interface UpdateSlot {
  /** The model this buffer belongs to. */
  model: string;
  /** The model's packed parameters before the step. */
  param: Tensor;
  /** The loss's gradient with respect to `param`. */
  grad: Tensor;
  /** The model's state slots, as `init` named them. */
  state: Record<string, Tensor>;
}

/**
 * An optimizer kind's rule, in the spirit of optax's `init`/`update`: `init` gives the state of one packed buffer of
 * `size` parameters (the scheduler keeps it resident, and checkpoints save it under `opt.<stage>.<model>.<slot>`, or
 * `….<slot>.<i>` for chunk i of a model split into several buffers); `update` traces one step for all the phase's
 * slots at once (a global-norm clip needs them together), returning one result per slot, in their order.
 */
export interface OptimizerRule<P> {
  /** The state of one packed buffer of `size` parameters, by slot name (empty for a stateless rule). */
  init(params: P, size: number): Record<string, Float32Array>;
  /** One step's new parameters and state for each of `models` (one slot per packed buffer), in their order. */
  update(ctx: UpdateContext, params: P, models: UpdateSlot[]): { param: Tensor; state: Record<string, Tensor> }[];
}

/** What a host stage gets each step. */
export interface HostContext {
  /** Name of the stage being run. */
  stage: string;
  /** The run's seed. */
  seed: number;
  /** The 1-based step. */
  step: number;
  /** A generator for this stage and step (the same on resume). */
  rng: Rng;
  /** Folder of the run's outputs. */
  out: string;
  /** A declared dataset, loaded once per run. */
  dataset(name: string): Promise<Dataset>;
  /**
   * The executor the run's compiled graphs use, for stages that compile graphs of their own (sampling, or a frozen
   * teacher making regression targets).
   */
  executor: Executor;
  /** The declared models. */
  models: Record<string, ModelInfo>;
  /** Reads a model's current parameters (or its EMA with `ema: true`) back to the host. */
  readModel(name: string, opts?: { ema?: boolean }): Promise<Record<string, Float32Array>>;
  /** Prints a line without breaking the progress bar. */
  log(line: string): void;
  /** The value `make` gives, made once per run for this stage and key (a bank, a compiled graph); never saved. */
  memo<T>(key: string, make: () => Promise<T>): Promise<T>;
  /** Named arrays this stage keeps across steps: checkpoints save them, a resume restores them. */
  state: StageState;
  /** The folder for caches that outlive a run (`run.cache`, default `.cache/`), for what is costly to remake. */
  cache: string;
}

/** What an effect stage gets when it fires. */
export interface EffectContext extends HostContext {
  /** Latest value of every logged scalar. */
  metrics: Record<string, number>;
  /** Updates a model's EMA on the executor: e ← decay·e + (1 − decay)·p (the first call copies p). */
  updateEma(model: string, decay: number): Promise<void>;
  /** The run's whole training state after this step, as a checkpoint saves it. */
  snapshot(): Promise<RunSnapshot>;
  /** True when this is the last step of the run. */
  last: boolean;
  /** The stage's cadence in steps: its `every`, 1 when it fires only at moments (`at`). */
  every: number;
}

/**
 * A kind's parameter schema: turns the params a config gives into `P` with defaults applied, or says why they do not
 * fit. Kinds pass a zod 4 schema, whose issues planning words as config errors; this is the part of zod's API that
 * the pipeline and its callers use, so that the public types do not name zod's own.
 */
export interface ParamSchema<P> {
  /** The params with defaults applied; throws when `value` does not fit. */
  parse(value: unknown): P;
  /** The params with defaults applied, or the issues saying why `value` does not fit. */
  safeParse(value: unknown): ParamResult<P>;
}

/** What `ParamSchema.safeParse` returns: the params, or the error saying why they do not fit. */
export type ParamResult<P> =
  | { success: true; data: P; error?: undefined }
  | { success: false; data?: undefined; error: ParamError };

/** Why params do not fit. */
export interface ParamError {
  /** Every reason, in one text. */
  message: string;
  /** Each reason, with where it is. */
  issues: ParamIssue[];
}

/** One reason params do not fit. */
export interface ParamIssue {
  /** Keys and indices below the params, to the value at fault. */
  path: PropertyKey[];
  /** What was expected, in the schema's words. */
  message: string;
}

/** The roles of stages; see the module doc. */
export type StageRole = "host" | "traced" | "optimizer" | "effect";

/** A stage kind. `P` is its parameter type after defaults. */
export interface StageDef<P = unknown> {
  /** The name configs give as `kind:` (lower_snake, dots allowed). */
  kind: string;
  /** One line shown in `--dry-run` and docs. */
  doc: string;
  /** When and where the stage runs; see the module doc. */
  role: StageRole;
  /** Parameter schema with documented defaults; unknown keys must be rejected (use `z.strictObject`). */
  params: ParamSchema<P>;
  /** Names of input ports; those ending in `?` are optional; `["*"]` accepts any names (checked by `types`). */
  inputs: readonly string[];
  /** Output port types given params and input types; throw `StageTypeError` on a mismatch. */
  types(ctx: TypeContext<P>): Record<string, PortSpec>;
  /** Names of declared models the stage uses (checked to exist). */
  models?(params: P): string[];
  /** Names of declared datasets the stage uses (checked to exist). */
  datasets?(params: P): string[];
  /** `host` role: produces this step's outputs. */
  host?(ctx: HostContext, params: P, inputs: Record<string, HostArray>): Promise<Record<string, HostArray>>;
  /** `traced` role: builds outputs from inputs. */
  trace?(ctx: TraceContext, params: P, inputs: Record<string, Tensor>): Record<string, Tensor>;
  /** `optimizer` role: its traced update of the models it names. */
  optimizer?: OptimizerRule<P>;
  /**
   * `effect` role: the kind's cadence when the config gives neither `every` nor `at` (default: every step), and
   * moments it always fires at, such as a final checkpoint at the end (pipeline/cadence.ts).
   */
  cadence?: KindCadence;
  /** `effect` role: side effects at the stage's cadence. */
  effect?(ctx: EffectContext, params: P, inputs: Record<string, HostArray>): Promise<void>;
  /**
   * `effect` role: runs when the run is interrupted (Ctrl-C, SIGTERM), after the step in progress, whatever the
   * cadence: a checkpoint saves there. A run without such a stage saves a checkpoint of its own.
   */
  interrupted?(ctx: EffectContext, params: P): Promise<void>;
}

/** A model kind: parameter shapes, initialisation, and a traced forward pass. */
export interface ModelDef<P = unknown> {
  /** The name configs give as `kind:` (lower_snake, dots allowed). */
  kind: string;
  /** One line shown in `--dry-run` and docs. */
  doc: string;
  /** Parameter schema with documented defaults; unknown keys must be rejected (use `z.strictObject`). */
  params: ParamSchema<P>;
  /** Parameter path → shape. */
  shapes(params: P): Record<string, number[]>;
  /** Initial values (the scheduler may instead load them from a file). */
  init(params: P, rng: Rng): Record<string, Float32Array>;
  /** Output port types given input types. */
  types(params: P, inputs: Record<string, PortSpec>): Record<string, PortSpec>;
  /** The forward pass. `p` maps parameter paths to tensors. */
  apply(params: P, p: Record<string, Tensor>, inputs: Record<string, Tensor>): Record<string, Tensor>;
}

/** A loaded dataset: examples addressed by index, each a set of named fields. */
export interface Dataset {
  /** Number of examples. */
  size: number;
  /** Copies the examples at `indices` into one batch per field (leading axis = batch). */
  batch(indices: ArrayLike<number>): Record<string, HostArray>;
  /** Captioned datasets: the distinct captions, indexed by the `caption_id` field. */
  captions?: string[];
  /** Captioned datasets: the caption of example `i`. */
  captionOf?(i: number): string;
}

/** What a run gives a dataset kind as it loads. */
export interface DatasetEnv {
  /** The run's cache folder (`run.cache`), for what is costly to remake (rendered images). */
  cache: string;
}

/** A dataset kind, which data-load stages read from. */
export interface DatasetDef<P = unknown> {
  /** The name configs give as `kind:` (lower_snake, dots allowed). */
  kind: string;
  /** One line shown in `--dry-run` and docs. */
  doc: string;
  /** Parameter schema with documented defaults; unknown keys must be rejected (use `z.strictObject`). */
  params: ParamSchema<P>;
  /** Fields of one example (without the batch axis). */
  fields(params: P): Record<string, PortSpec>;
  /** Loads (or generates) the examples. `seed` is the run's seed; `env` what the run provides (absent outside one). */
  load(params: P, seed: number, env?: DatasetEnv): Promise<Dataset>;
}

/** A stage kind of any parameter type (what the registry holds). */
// deno-lint-ignore no-explicit-any
export type AnyStage = StageDef<any>;
/** A model kind of any parameter type. */
// deno-lint-ignore no-explicit-any
export type AnyModel = ModelDef<any>;
/** A dataset kind of any parameter type. */
// deno-lint-ignore no-explicit-any
export type AnyDataset = DatasetDef<any>;

const stages = new Map<string, AnyStage>();
const models = new Map<string, AnyModel>();
const datasets = new Map<string, AnyDataset>();

function register<T extends { kind: string }>(table: Map<string, T>, what: string, def: T): void {
  if (!/^[a-z][a-z0-9_.]*$/.test(def.kind)) throw new Error(`${what} kind "${def.kind}" must be lower_snake.dotted`);
  if (table.has(def.kind) && table.get(def.kind) !== def) {
    throw new Error(`${what} kind "${def.kind}" is registered twice`);
  }
  table.set(def.kind, def);
}

/** Registers a stage kind (one line per kind in `stages/mod.ts`; users call it from their own module). */
export function registerStage<P>(def: StageDef<P>): void {
  if (def.role === "optimizer" && !def.optimizer) {
    throw new Error(`stage kind "${def.kind}": an optimizer needs a rule`);
  }
  register(stages, "stage", def as AnyStage);
}
/** Registers a model kind. */
export function registerModel<P>(def: ModelDef<P>): void {
  register(models, "model", def as AnyModel);
}
/** Registers a dataset kind. */
export function registerDataset<P>(def: DatasetDef<P>): void {
  register(datasets, "dataset", def as AnyDataset);
}

/** The registered stage kinds. */
export const stageKinds = (): ReadonlyMap<string, AnyStage> => stages;
/** The registered model kinds. */
export const modelKinds = (): ReadonlyMap<string, AnyModel> => models;
/** The registered dataset kinds. */
export const datasetKinds = (): ReadonlyMap<string, AnyDataset> => datasets;
