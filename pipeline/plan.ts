/**
 * Validation and planning, all before step 1: stage, model and dataset kinds and params, port references, cycles,
 * port types and shapes, roles, then the execution plan — which traced stages compile into which update phase — and
 * an estimate of the run's memory against the machine's. With a tracer (the command line passes the scheduler's),
 * every update phase is traced too, so that what tracing would throw is a config error naming the stage.
 *
 * @module
 */
import { z } from "zod";
import type { DType, Graph, Node } from "../engine/ir.ts";
import { type ConfigIssue, formatIssues, type LoadedConfig, suggest, zodIssues } from "./config.ts";
import {
  type DatasetInfo,
  datasetKinds,
  fmtSpec,
  type ModelInfo,
  modelKinds,
  type PortSpec,
  type StageDef,
  stageKinds,
  StageTypeError,
  type TraceContext,
} from "./stage.ts";
import { type Cadence, resolveCadence } from "./cadence.ts";
import { ConfigError } from "./config.ts";
/** A stage after validation. */
export interface PlannedStage {
  name: string;
  // deno-lint-ignore no-explicit-any
  def: StageDef<any>;
  params: unknown;
  /** Input port → producing stage and port. */
  inputs: Record<string, { stage: string; port: string }>;
  inputTypes: Record<string, PortSpec>;
  outputs: Record<string, PortSpec>;
  /** Steps between runs of an optimizer's phase (1 for other stages). */
  every: number;
  /** When an effect fires (pipeline/cadence.ts). */
  cadence: Cadence;
}

/**
 * One compiled graph: the traced stages feeding one optimizer, run every `every` steps. A step runs the phases in the
 * declaration order of their optimizers.
 */
export interface Phase {
  optimizer: string;
  /** Traced stages in topological order. */
  stages: string[];
  /** Models whose parameters this phase updates. */
  updates: string[];
  /** Models this phase only reads. */
  reads: string[];
  every: number;
}

/** The validated pipeline and its execution plan. */
export interface Plan {
  order: string[];
  stages: Record<string, PlannedStage>;
  models: Record<string, ModelInfo & { init?: string }>;
  datasets: Record<string, DatasetInfo>;
  phases: Phase[];
  /** Host stages in topological order: they run on the host before each step's phases and feed them. */
  hosts: string[];
  effects: string[];
  warnings: string[];
  /** The memory estimate the plan was checked against (see `MemoryEstimate`). */
  memory: MemoryEstimate;
  /** Node count of each traced update phase, by optimizer, when planning traced them. */
  traced?: Record<string, number>;
}

/**
 * What planning expects the run to hold at once, in bytes. A simple estimate from shapes, made before anything is
 * allocated:
 *
 * - `models`: each model's parameters × 4 bytes × copies: its values, plus one per state slot of the optimizer that
 *   updates it (AdamW's m and v). EMAs, checkpoints and datasets are not counted.
 * - `step`: one step's tensors. From port types (`basis: "ports"`): every stage output plus one gradient per updated
 *   parameter. From the traced graphs (`basis: "traced"`): the largest update phase's peak of live values, each value
 *   held from the node that makes it to its last use and the phase's inputs (the batch, noise) held throughout — what
 *   an executor that frees dead values needs.
 */
export interface MemoryEstimate {
  models: Record<string, { params: number; copies: number; bytes: number; updated: boolean; state?: string[] }>;
  step: number;
  basis: "ports" | "traced";
  total: number;
  /** This machine's memory (`Deno.systemMemoryInfo().total`); Infinity where it may not be read. */
  machine: number;
}

/** Traces one update phase of the plan being checked (the command line passes `tracePhase` of trace_phase.ts). */
export type PhaseTracer = (
  plan: Plan,
  phase: Phase,
) => { graph: Graph; stateIn: Record<string, string>; feeds: Record<string, string> };

/** Options of `planPipeline`. */
export interface PlanOptions {
  /** Trace every update phase while planning (see the module doc). Without it planning stops at port types. */
  tracer?: PhaseTracer;
  /** The machine's memory in bytes, instead of the system's (tests). */
  machineMemory?: number;
}

type Path = (string | number)[];

const isOptional = (p: string) => p.endsWith("?");
const bare = (p: string) => p.replace(/\?$/, "");

/** Issues found so far; planning stops after a pass with any, since later passes would only repeat their cause. */
class Issues {
  readonly list: ConfigIssue[] = [];
  constructor(private readonly loaded: LoadedConfig) {}
  add(path: Path, message: string, key = false): void {
    this.list.push({ path, message, key });
  }
  throwIfAny(): void {
    if (this.list.length) throw new ConfigError(formatIssues(this.list, this.loaded.where));
  }
}

/**
 * References to a stage, model or dataset that is not there, grouped by the missing name: one missing thing is one
 * error however often it is named, at its first reference.
 */
class Missing {
  private readonly refs = new Map<string, { path: Path; from: string[]; one: string }>();
  /** A reference to `name` at `path` by stage `from`; `one` is the error when it is the only one. */
  note(name: string, path: Path, from: string, one: string): void {
    const r = this.refs.get(name);
    if (r) r.from.push(from);
    else this.refs.set(name, { path, from: [from], one });
  }
  /** One error per missing name: `many` words a group, given the stages that refer to it. */
  report(issues: Issues, many: (name: string, from: string) => string): void {
    for (const [name, r] of this.refs) {
      issues.add(r.path, r.from.length === 1 ? r.one : many(name, [...new Set(r.from)].join(", ")));
    }
  }
}

/** A thrown value as one line: its first line, without the engine's "(at file:line:col)" of the throwing code. */
export function oneLine(e: unknown): string {
  const err = e instanceof Error ? e : new Error(String(e));
  const msg = (err.message.split("\n")[0] || "(no message)").replace(/ \(at [^()]*\)$/, "");
  return err.name === "Error" || err.name === "TraceError" || err.name === "StageTypeError"
    ? msg
    : `${err.name}: ${msg}`;
}

/** Validates a loaded config against the registries and plans its execution. Throws `ConfigError`. */
export function planPipeline(loaded: LoadedConfig, opts: PlanOptions = {}): Plan {
  const { config, where } = loaded;
  const issues = new Issues(loaded);
  const datasets = checkDatasets(config.data, issues);
  const models = checkModels(config.models, issues);
  const stages = checkStages(config, issues);
  issues.throwIfAny();

  const names = Object.keys(config.stages);
  const order = topoOrder(stages, names, issues.list);
  issues.throwIfAny();
  typeStages(stages, order, models, datasets, issues);
  issues.throwIfAny();

  const warnings: string[] = [];
  const consumed = new Set(order.flatMap((n) => Object.values(stages[n].inputs).map((r) => `${r.stage}.${r.port}`)));
  for (const n of order) {
    for (const port of Object.keys(stages[n].outputs)) {
      if (!consumed.has(`${n}.${port}`)) {
        warnings.push(`${where(["stages", n])}: warning: output "${n}.${port}" is not used`);
      }
    }
  }
  const phases = planPhases(stages, order, names, models, issues.list, config.stages);
  for (const n of order) {
    if (stages[n].def.role === "traced" && !phases.some((p) => p.stages.includes(n))) {
      warnings.push(`${where(["stages", n])}: warning: traced stage "${n}" feeds no optimizer and never runs`);
    }
  }
  issues.throwIfAny();

  const machine = opts.machineMemory ?? machineMemory();
  const plan: Plan = {
    order,
    stages,
    models,
    datasets,
    phases,
    hosts: order.filter((n) => stages[n].def.role === "host"),
    effects: order.filter((n) => stages[n].def.role === "effect"),
    warnings,
    memory: { models: modelMemory(models, phases, stages), step: 0, basis: "ports", total: 0, machine },
  };
  checkMemory(plan, portStep(plan), issues);
  issues.throwIfAny();
  if (opts.tracer) {
    const traced = traceCheck(plan, opts.tracer, issues);
    issues.throwIfAny();
    plan.traced = Object.fromEntries(traced.map((t) => [t.optimizer, t.nodes]));
    const largest = traced.reduce<TracedPhase | undefined>((a, t) => (a && a.peak >= t.peak ? a : t), undefined);
    if (largest) checkMemory(plan, { bytes: largest.peak, basis: "traced", culprit: largest.culprit }, issues);
    issues.throwIfAny();
  }
  return plan;
}

/** Parses `value` with a kind's param schema; undefined (and issues at `base`) when it does not fit. */
function parseParams<T>(schema: z.ZodType<T>, value: unknown, base: Path, issues: Issues): T | undefined {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  issues.list.push(...zodIssues(r.error, schema, base, value ?? {}));
  return undefined;
}

const unknownKind = (what: string, kind: string, registered: Iterable<string>) =>
  `unknown ${what} kind "${kind}"${suggest(kind, [...registered].sort(), "known kinds")}`;

function checkDatasets(data: LoadedConfig["config"]["data"], issues: Issues): Record<string, DatasetInfo> {
  const datasets: Record<string, DatasetInfo> = {};
  for (const [name, d] of Object.entries(data)) {
    const def = datasetKinds().get(d.kind);
    if (!def) {
      issues.add(["data", name, "kind"], unknownKind("dataset", d.kind, datasetKinds().keys()));
      continue;
    }
    const params = parseParams(def.params, d.params, ["data", name, "params"], issues);
    if (params !== undefined) datasets[name] = { name, kind: d.kind, params };
  }
  return datasets;
}

function checkModels(declared: LoadedConfig["config"]["models"], issues: Issues): Plan["models"] {
  const models: Plan["models"] = {};
  for (const [name, m] of Object.entries(declared)) {
    const def = modelKinds().get(m.kind);
    if (!def) {
      issues.add(["models", name, "kind"], unknownKind("model", m.kind, modelKinds().keys()));
      continue;
    }
    const params = parseParams(def.params, m.params, ["models", name, "params"], issues);
    if (params === undefined) continue;
    try {
      models[name] = { name, kind: m.kind, params, shapes: def.shapes(params), init: m.init };
    } catch (e) {
      issues.add(["models", name, "params"], `model "${name}" (${m.kind}): ${oneLine(e)}`);
    }
  }
  return models;
}

/**
 * Each stage's kind, params, cadence and input wiring, and the models and datasets it names. A stage, model or
 * dataset that is missing is one error however many stages name it; so is a stage's set of missing inputs.
 */
function checkStages(config: LoadedConfig["config"], issues: Issues): Record<string, PlannedStage> {
  const stages: Record<string, PlannedStage> = {};
  const names = Object.keys(config.stages);
  const [noStage, noModel, noDataset] = [new Missing(), new Missing(), new Missing()];
  for (const [name, s] of Object.entries(config.stages)) {
    const def = stageKinds().get(s.kind);
    if (!def) {
      issues.add(["stages", name, "kind"], unknownKind("stage", s.kind, stageKinds().keys()));
      continue;
    }
    const params = parseParams(def.params, s.params, ["stages", name, "params"], issues);
    if (params === undefined) continue;
    checkCadence(name, s, def, issues);
    const ports = def.inputs.map(bare);
    const inputs: PlannedStage["inputs"] = {};
    for (const [port, ref] of Object.entries(s.inputs)) {
      if (!ports.includes(port) && !ports.includes("*")) {
        const msg = `stage kind "${s.kind}" has no input "${port}"${suggest(port, ports, "its inputs")}`;
        issues.add(["stages", name, "inputs", port], msg, true);
        continue;
      }
      const [st, pt] = ref.split(".");
      if (st in config.stages) inputs[port] = { stage: st, port: pt };
      else {
        const one = `"${ref}" refers to unknown stage "${st}"${suggest(st, names, "stages")}`;
        noStage.note(st, ["stages", name, "inputs", port], name, one);
      }
    }
    const needed = def.inputs.filter((p) => p !== "*" && !isOptional(p) && !(p in s.inputs));
    if (needed.length) {
      const what = needed.length === 1 ? "input" : "inputs";
      issues.add(["stages", name, "inputs"], `stage "${name}" (${s.kind}) needs ${what} ${quoteList(needed)}`);
    }
    const used = (what: "model" | "dataset", missing: Missing, known: string[]) => (n: string) => {
      if (known.includes(n)) return;
      const one = `stage "${name}" uses undeclared ${what} "${n}"${suggest(n, known, `declared ${what}s`)}`;
      missing.note(n, ["stages", name, "params", ...findValue(s.params, n)], name, one);
    };
    def.models?.(params).forEach(used("model", noModel, Object.keys(config.models)));
    def.datasets?.(params).forEach(used("dataset", noDataset, Object.keys(config.data)));
    const cadence = resolveCadence(s, def.cadence);
    stages[name] = { name, def, params, inputs, inputTypes: {}, outputs: {}, every: s.every ?? 1, cadence };
  }
  noStage.report(
    issues,
    (st, from) => `stage "${st}" is not defined (referenced by ${from})${suggest(st, names, "stages")}`,
  );
  const declared = (what: string, known: string[]) => (n: string, from: string) =>
    `${what} "${n}" is not declared (used by ${from})${suggest(n, known, `declared ${what}s`)}`;
  noModel.report(issues, declared("model", Object.keys(config.models)));
  noDataset.report(issues, declared("dataset", Object.keys(config.data)));
  return stages;
}

const quoteList = (xs: string[]) => xs.map((x) => `"${x}"`).join(", ");

function checkCadence(
  name: string,
  s: LoadedConfig["config"]["stages"][string],
  // deno-lint-ignore no-explicit-any
  def: StageDef<any>,
  issues: Issues,
) {
  if (def.role === "optimizer" && s.at !== undefined) {
    issues.add(
      ["stages", name, "at"],
      `stage "${name}" (${s.kind}) is an optimizer: its phase runs every N steps (\`every\`), not \`at\` moments`,
    );
  }
  if (def.role === "host" && (s.every !== undefined || s.at !== undefined)) {
    issues.add(
      ["stages", name, s.every !== undefined ? "every" : "at"],
      `stage "${name}" (${s.kind}) is a host stage: it runs every step, before the phases that read it`,
    );
  }
  if (def.role === "traced" && (s.every !== undefined || s.at !== undefined)) {
    issues.add(
      ["stages", name, s.every !== undefined ? "every" : "at"],
      `stage "${name}" (${s.kind}) is traced: it runs whenever its optimizer does; set the cadence on the optimizer`,
    );
  }
}

/**
 * Port types in topological order. A stage whose types failed has no outputs to check against, so its readers are
 * skipped, not blamed; outputs a stage lacks are one error per stage, however many readers name them.
 */
function typeStages(
  stages: Record<string, PlannedStage>,
  order: string[],
  models: Plan["models"],
  datasets: Record<string, DatasetInfo>,
  issues: Issues,
) {
  const failed = new Set<string>();
  const noOutput = new Map<string, { path: Path; ports: Set<string> }>();
  for (const name of order) {
    const st = stages[name];
    let bad = false;
    for (const [port, ref] of Object.entries(st.inputs)) {
      const src = stages[ref.stage];
      if (failed.has(ref.stage)) {
        bad = true;
        continue;
      }
      const spec = src.outputs[ref.port];
      if (!spec) {
        const miss = noOutput.get(ref.stage) ?? { path: ["stages", name, "inputs", port], ports: new Set() };
        miss.ports.add(ref.port);
        noOutput.set(ref.stage, miss);
        bad = true;
        continue;
      }
      const roleErr = roleMismatch(src.def.role, st.def.role);
      if (roleErr) {
        issues.add(
          ["stages", name, "inputs", port],
          `"${ref.stage}.${ref.port}" is a ${src.def.role} output; ${roleErr}`,
        );
        bad = true;
      }
      st.inputTypes[port] = spec;
    }
    if (bad) {
      failed.add(name);
      continue;
    }
    try {
      st.outputs = st.def.types({ params: st.params, inputs: st.inputTypes, models, datasets });
    } catch (e) {
      // A kind's `types` throws StageTypeError for what it checks; anything else it throws is still about this
      // stage's config (a schedule too long to allocate), so it is reported the same way rather than as a crash.
      const at = e instanceof StageTypeError ? e.at : [];
      issues.add(["stages", name, ...at], `stage "${name}" (${st.def.kind}): ${oneLine(e)}`);
      failed.add(name);
    }
  }
  for (const [source, { path, ports }] of noOutput) {
    const outs = Object.keys(stages[source].outputs), list = [...ports];
    issues.add(
      path,
      list.length === 1
        ? `stage "${source}" has no output "${list[0]}"${suggest(list[0], outs, "its outputs")}`
        : `stage "${source}" has no outputs ${quoteList(list)}; its outputs: ${outs.join(", ") || "(none)"}`,
    );
  }
}

/** Path below `v` to where the string `name` is written (a param naming a model or dataset), for positions. */
function findValue(v: unknown, name: string): (string | number)[] {
  if (v === name) return [];
  if (v !== null && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      const sub = findValue(x, name);
      if (sub.length || x === name) return [Array.isArray(v) ? Number(k) : k, ...sub];
    }
  }
  return [];
}

function roleMismatch(from: string, to: string): string | null {
  if (from === "optimizer" || from === "effect") return "optimizer and effect stages have no outputs to read";
  if (to === "host" && from !== "host") return "a host stage can only read host outputs";
  if (to === "effect" && from !== "host") return "an effect stage can only read host outputs (it reads models itself)";
  return null;
}

/** Kahn's algorithm in declaration order; reports a cycle by naming it. */
function topoOrder(stages: Record<string, PlannedStage>, names: string[], issues: ConfigIssue[]) {
  const deps = new Map(
    names.filter((n) => stages[n]).map((n) => [n, new Set(Object.values(stages[n].inputs).map((r) => r.stage))]),
  );
  const order: string[] = [];
  const done = new Set<string>();
  while (order.length < deps.size) {
    const next = [...deps.keys()].find((n) => !done.has(n) && [...deps.get(n)!].every((d) => done.has(d)));
    if (!next) {
      const cycle = findCycle(deps, done, names);
      // Pointed at the input of the cycle's first-declared stage that reads the last one: the edge that loops back.
      const back = cycle[cycle.length - 2];
      const port = Object.entries(stages[cycle[0]].inputs).find(([, r]) => r.stage === back)![0];
      issues.push({ path: ["stages", cycle[0], "inputs", port], message: `cycle: ${cycle.join(" → ")}` });
      return order;
    }
    order.push(next);
    done.add(next);
  }
  return order;
}

/** A cycle among the stages not yet ordered, in data-flow order (a → b: b reads a), from its first-declared stage. */
function findCycle(deps: Map<string, Set<string>>, done: Set<string>, names: string[]): string[] {
  const start = [...deps.keys()].find((n) => !done.has(n))!;
  const path: string[] = [];
  let cur = start;
  while (!path.includes(cur)) {
    path.push(cur);
    cur = [...deps.get(cur)!].find((d) => !done.has(d))!;
  }
  const cyc = path.slice(path.indexOf(cur)).reverse();
  const first = cyc.reduce((a, b) => (names.indexOf(b) < names.indexOf(a) ? b : a));
  const k = cyc.indexOf(first);
  const rotated = [...cyc.slice(k), ...cyc.slice(0, k)];
  return [...rotated, rotated[0]];
}

function planPhases(
  stages: Record<string, PlannedStage>,
  order: string[],
  names: string[],
  models: Plan["models"],
  issues: ConfigIssue[],
  raw: Record<string, { params: Record<string, unknown> }>,
) {
  const phases: Phase[] = [];
  const updatedBy = new Map<string, string>();
  // Optimizers run in the order they are declared (ADD: the discriminator, then the generator), not in the data-flow
  // order, which an optimizer whose loss is declared later would otherwise change.
  for (const name of names) {
    const st = stages[name];
    if (!st || st.def.role !== "optimizer") continue;
    const need = new Set<string>();
    const visit = (n: string) => {
      const s = stages[n];
      if (s.def.role !== "traced" || need.has(n)) return;
      need.add(n);
      for (const r of Object.values(s.inputs)) visit(r.stage);
    };
    for (const r of Object.values(st.inputs)) visit(r.stage);
    const updates = st.def.models?.(st.params) ?? [];
    for (const m of updates) {
      if (updatedBy.has(m)) {
        issues.push({
          path: ["stages", name, "params", ...findValue(raw[name].params, m)],
          message: `optimizer "${name}": model "${m}" is already updated by optimizer "${
            updatedBy.get(m)
          }"; each model has at most one optimizer`,
        });
      }
      updatedBy.set(m, name);
    }
    const stagesIn = order.filter((n) => need.has(n));
    const used = new Set(stagesIn.flatMap((n) => stages[n].def.models?.(stages[n].params) ?? []));
    for (const m of updates) {
      if (!used.has(m)) {
        issues.push({
          path: ["stages", name, "params", ...findValue(raw[name].params, m)],
          message: `optimizer "${name}" updates model "${m}", but no stage upstream of its loss uses it`,
        });
      }
    }
    phases.push({
      optimizer: name,
      stages: stagesIn,
      updates,
      reads: [...used].filter((m) => !updates.includes(m) && m in models),
      every: st.every,
    });
  }
  return phases;
}

const DTYPE_BYTES: Record<DType, number> = { f32: 4, i32: 4, bool: 1 };
const elements = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const bytesOf = (s: { dtype: DType; shape: readonly number[] }) => DTYPE_BYTES[s.dtype] * elements(s.shape);

/** The system's total memory; Infinity (no check) where the run may not read it, rather than prompting for it. */
function machineMemory(): number {
  try {
    if (Deno.permissions.querySync({ name: "sys", kind: "systemMemoryInfo" }).state !== "granted") return Infinity;
    return Deno.systemMemoryInfo().total;
  } catch {
    return Infinity;
  }
}

/** `1.5 GB`: decimal units, as the machine's memory is quoted. */
export function fmtBytes(n: number): string {
  if (n >= 1e18) return `${n.toExponential(1)} bytes`;
  const units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
  let u = 0;
  while (n >= 1000 && u < units.length - 1) n /= 1000, u++;
  return u === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[u]}`;
}

function modelMemory(
  models: Plan["models"],
  phases: Phase[],
  stages: Record<string, PlannedStage>,
): MemoryEstimate["models"] {
  // The optimizer's state slots per model, as its rule names them (AdamW: m and v); `init` of size 0 allocates none.
  const slots = new Map<string, string[]>();
  for (const p of phases) {
    const st = stages[p.optimizer];
    const names = Object.keys(st.def.optimizer?.init(st.params, 0) ?? {});
    for (const m of p.updates) slots.set(m, names);
  }
  const out: MemoryEstimate["models"] = {};
  for (const [name, m] of Object.entries(models)) {
    const params = Object.values(m.shapes).reduce((a, s) => a + elements(s), 0);
    const state = slots.get(name);
    const copies = 1 + (state?.length ?? 0);
    out[name] = { params, copies, bytes: params * 4 * copies, state, updated: state !== undefined };
  }
  return out;
}

/** A step estimate, with the stage to blame when it does not fit (see `blame`). */
interface StepEstimate {
  bytes: number;
  basis: MemoryEstimate["basis"];
  culprit?: Culprit;
}

/** A tensor of a step, for blame: its type, what it is, and the stage that makes it. */
interface Value {
  spec: PortSpec;
  what: string;
  stage: string;
}

interface Culprit {
  stage: string;
  /** The step's largest tensor, and where its largest dimension first appears (`stage`). */
  largest: Value;
  dim: number;
}

/**
 * The stage to point at when a step does not fit: the first (in data-flow order) to make a tensor with the largest
 * dimension of the step's largest tensor. A batch too large is blamed on the data stage it starts at, not on the
 * later stages whose tensors it makes heavier; an image side too large, on the stage whose model it blows up.
 */
function blame(values: Value[]): Culprit | undefined {
  if (!values.length) return undefined;
  const largest = values.reduce((a, b) => (bytesOf(b.spec) > bytesOf(a.spec) ? b : a));
  const dim = Math.max(0, ...largest.spec.shape);
  return { stage: values.find((v) => v.spec.shape.includes(dim))!.stage, largest, dim };
}

/** One step's tensors from port types: every stage output, plus a gradient per updated parameter. */
function portStep(plan: Plan): StepEstimate {
  const values = plan.order.flatMap((n) =>
    Object.entries(plan.stages[n].outputs).map(([port, spec]) => ({ spec, what: `"${n}.${port}"`, stage: n }))
  );
  let bytes = values.reduce((a, v) => a + bytesOf(v.spec), 0);
  for (const m of Object.values(plan.memory.models)) if (m.updated) bytes += m.params * 4;
  return { bytes, basis: "ports", culprit: blame(values) };
}

/**
 * Records `step` as the plan's estimate and checks it with the models against the machine's memory: a model that
 * alone does not fit is an error at the model's params; a run that does not fit, at the stage `blame` picks.
 */
function checkMemory(plan: Plan, step: StepEstimate, issues: Issues): void {
  const mem = plan.memory;
  const models = Object.values(mem.models).reduce((a, m) => a + m.bytes, 0);
  Object.assign(mem, { step: step.bytes, basis: step.basis, total: models + step.bytes });
  const machine = `this machine's ${fmtBytes(mem.machine)} of memory`;
  let tooBig = false;
  for (const [name, m] of Object.entries(mem.models)) {
    if (m.bytes <= mem.machine) continue;
    const copies = m.copies === 1 ? "" : ` × ${m.copies}: its values and the optimizer's ${quoteList(m.state!)}`;
    issues.add(
      ["models", name, "params"],
      `model "${name}" (${plan.models[name].kind}) needs about ${fmtBytes(m.bytes)} for its parameters, more than ` +
        `${machine} (${m.params.toLocaleString("en-US")} parameters × 4 bytes${copies})`,
    );
    tooBig = true;
  }
  if (tooBig || mem.total <= mem.machine) return;
  const c = step.culprit;
  const { spec, what, stage } = c?.largest ?? {};
  const largest = !c
    ? ""
    : stage === c.stage
    ? `; its largest tensor is ${what} ${fmtSpec(spec!)}`
    : `; the largest tensor is ${what} ${fmtSpec(spec!)} in stage "${stage}", whose size ${c.dim} starts here`;
  issues.add(
    c ? ["stages", c.stage] : ["models"],
    `${c ? `stage "${c.stage}": ` : ""}the run needs about ${fmtBytes(mem.total)} (models ${fmtBytes(models)}, ` +
      `one step's tensors ${fmtBytes(step.bytes)}), more than ${machine}${largest}`,
  );
}

/** What tracing one update phase found. */
interface TracedPhase {
  optimizer: string;
  nodes: number;
  /** Peak bytes of live values (see `MemoryEstimate`). */
  peak: number;
  culprit?: Culprit;
}

/** Thrown out of a stage's wrapped `trace`, so that planning knows which stage threw. */
class StageTraceFailure extends Error {
  constructor(readonly stage: string, readonly error: unknown) {
    super(`stage "${stage}" threw while tracing`);
  }
}

/**
 * Traces every update phase with `tracer`, each traced stage wrapped so that what it throws becomes one error at the
 * stage (anything thrown outside the stages — the gradient, the update — at the phase's optimizer). Records which raw
 * trace nodes each stage made, to say which stage's tensors weigh most.
 */
function traceCheck(plan: Plan, tracer: PhaseTracer, issues: Issues): TracedPhase[] {
  let spans = new Map<string, Node[]>();
  const wrap = (s: PlannedStage): PlannedStage => {
    const trace = s.def.trace;
    if (!trace) return s;
    const wrapped = (ctx: TraceContext, params: unknown, inputs: Parameters<typeof trace>[2]) => {
      const nodes = ctx.step.trace.nodes, from = nodes.length;
      try {
        const out = trace(ctx, params, inputs);
        spans.set(s.name, nodes.slice(from));
        return out;
      } catch (e) {
        throw new StageTraceFailure(s.name, e);
      }
    };
    return { ...s, def: { ...s.def, trace: wrapped } };
  };
  const wrapped: Plan = {
    ...plan,
    stages: Object.fromEntries(Object.entries(plan.stages).map(([n, s]) => [n, wrap(s)])),
  };
  const out: TracedPhase[] = [];
  const reported = new Set<string>();
  for (const phase of plan.phases) {
    spans = new Map();
    let t;
    try {
      t = tracer(wrapped, phase);
    } catch (e) {
      const [stage, msg] = e instanceof StageTraceFailure
        ? [e.stage, `stage "${e.stage}" (${plan.stages[e.stage].def.kind}): ${oneLine(e.error)}`]
        : [phase.optimizer, `optimizer "${phase.optimizer}": tracing its update phase failed: ${oneLine(e)}`];
      // A stage shared by two phases throws the same in both.
      if (!reported.has(msg)) issues.add(["stages", stage], msg);
      reported.add(msg);
      continue;
    }
    out.push({
      optimizer: phase.optimizer,
      nodes: t.graph.nodes.length,
      peak: peakLive(t.graph, new Set(Object.keys(t.stateIn))),
      culprit: heaviest(plan, t.graph, t.feeds, spans),
    });
  }
  return out;
}

/**
 * Peak bytes of a graph's live values when each is freed after its last use, nodes run in order. Inputs named in
 * `resident` (model parameters, optimizer state) are left out, being counted with the models; other inputs (the
 * batch, noise) are live throughout.
 */
function peakLive(g: Graph, resident: Set<string>): number {
  const n = g.nodes.length;
  const last = new Int32Array(n).map((_, i) => i);
  g.nodes.forEach((node, i) => node.inputs.forEach((j) => (last[j] = Math.max(last[j], i))));
  for (const o of g.outputs) last[o.node] = n;
  const freed = new Float64Array(n + 1);
  let live = 0, peak = 0;
  g.nodes.forEach((node, i) => {
    if (node.op === "input") {
      if (!resident.has(node.attrs.name)) live += bytesOf(node);
      return;
    }
    freed[last[i]] += bytesOf(node);
  });
  g.nodes.forEach((node, i) => {
    if (node.op !== "input") live += bytesOf(node);
    peak = Math.max(peak, live);
    live -= freed[i];
  });
  return peak;
}

/** A traced phase's tensors for blame, in data-flow order: the host outputs it is fed, then each stage's nodes. */
function heaviest(plan: Plan, g: Graph, feeds: Record<string, string>, spans: Map<string, Node[]>) {
  const fed: Value[] = [];
  for (const node of g.nodes) {
    const ref = node.op === "input" ? feeds[node.attrs.name] : undefined;
    if (ref !== undefined) fed.push({ spec: node, what: `"${ref}"`, stage: ref.split(".")[0] });
  }
  fed.sort((a, b) => plan.order.indexOf(a.stage) - plan.order.indexOf(b.stage));
  const made = [...spans].flatMap(([stage, nodes]) =>
    nodes.filter((x) => x.op !== "const").map((x) => ({ spec: x, what: `a ${x.op}`, stage }))
  );
  return blame([...fed, ...made]);
}
