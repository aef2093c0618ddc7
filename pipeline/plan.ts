/**
 * Validation and planning, all before step 1: stage, model and dataset kinds and params, port references, cycles,
 * port types and shapes, roles, then the execution plan — which traced stages compile into which update phase — and
 * an estimate of the run's memory against the machine's (plan_memory.ts). With a tracer (the command line passes
 * trace_phase.ts's, which the scheduler compiles from too), every update phase is traced as well (plan_trace.ts), so
 * that what tracing would throw is a config error naming the stage.
 *
 * @module
 */
import type { z } from "zod";
import type { LoadedConfig } from "./config.ts";
import { type ConfigIssue, type Path, suggest, zodIssues } from "./config_issues.ts";
import { resolveCadence } from "./cadence.ts";
import { Issues, Missing, oneLine, quoteList } from "./plan_issues.ts";
import { checkLora, checkLoraBases } from "./plan_lora.ts";
import { checkMemory, machineMemory, modelMemory, portStep } from "./plan_memory.ts";
import { type PhaseFootprint, traceCheck } from "./plan_trace.ts";
import type { Phase, Plan, PlannedStage, PlanOptions } from "./plan_types.ts";
import {
  type DatasetInfo,
  datasetKinds,
  modelKinds,
  type ParamSchema,
  type StageDef,
  stageKinds,
  StageTypeError,
} from "./stage.ts";

export { fmtBytes } from "./plan_memory.ts";
export { oneLine } from "./plan_issues.ts";
export type {
  LoraPlan,
  MemoryEstimate,
  Phase,
  PhaseTracer,
  Plan,
  PlannedModel,
  PlannedStage,
  PlanOptions,
} from "./plan_types.ts";
export { storedShapes } from "./plan_types.ts";

const isOptional = (p: string) => p.endsWith("?");
const bare = (p: string) => p.replace(/\?$/, "");

/** Validates a loaded config against the registries and plans its execution. Throws `ConfigError`. */
export function planPipeline(loaded: LoadedConfig, opts: PlanOptions = {}): Plan {
  const { config, where } = loaded;
  const issues = new Issues(loaded);
  const datasets = checkDatasets(config.data, issues);
  const models = checkModels(config.models, issues);
  checkLora(config.models, models, issues);
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
  checkLoraBases(models, phases, issues);
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
    const largest = traced.reduce<PhaseFootprint | undefined>((a, t) => (a && a.peak >= t.peak ? a : t), undefined);
    if (largest) checkMemory(plan, { bytes: largest.peak, basis: "traced", culprit: largest.culprit }, issues);
    issues.throwIfAny();
  }
  return plan;
}

/** Parses `value` with a kind's param schema; undefined (and issues at `base`) when it does not fit. */
function parseParams<T>(schema: ParamSchema<T>, value: unknown, base: Path, issues: Issues): T | undefined {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  // Kinds' schemas are zod's (see `ParamSchema`): their issues have the codes, and the schema the shape, that
  // zodIssues reads.
  issues.list.push(...zodIssues(r.error as z.ZodError, schema as unknown as z.ZodType, base, value ?? {}));
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
    // A LoRA model's forward pass reads its base's weights, so the phase reads the base too (once, however many
    // models share it).
    const withBases = [...used, ...updates].flatMap((m) => (models[m]?.lora ? [m, models[m].lora!.base] : [m]));
    phases.push({
      optimizer: name,
      stages: stagesIn,
      updates,
      reads: [...new Set([...used, ...withBases])].filter((m) => !updates.includes(m) && m in models),
      every: st.every,
    });
  }
  return phases;
}
