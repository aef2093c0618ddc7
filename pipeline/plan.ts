/**
 * Validation and planning, all before step 1: stage, model and dataset kinds and params, port references, cycles,
 * port types and shapes, roles, then the execution plan — which traced stages compile into which update phase.
 *
 * @module
 */
import { z } from "zod";
import { type ConfigIssue, type LoadedConfig, suggest, zodIssues } from "./config.ts";
import {
  type DatasetInfo,
  datasetKinds,
  type ModelInfo,
  modelKinds,
  type PortSpec,
  type StageDef,
  stageKinds,
  StageTypeError,
} from "./stage.ts";
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
  every: number;
  at?: "start" | "end";
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
}

const isOptional = (p: string) => p.endsWith("?");
const bare = (p: string) => p.replace(/\?$/, "");

/** Validates a loaded config against the registries and plans its execution. Throws `ConfigError`. */
export function planPipeline(loaded: LoadedConfig): Plan {
  const { config, where } = loaded;
  const issues: ConfigIssue[] = [];
  const warnings: string[] = [];
  const err = (path: (string | number)[], message: string, key = false) => issues.push({ path, message, key });
  const check = <T>(schema: z.ZodType<T>, value: unknown, base: (string | number)[]): T | undefined => {
    const r = schema.safeParse(value ?? {});
    if (r.success) return r.data;
    issues.push(...zodIssues(r.error, schema, base, value ?? {}));
    return undefined;
  };
  const unknownKind = (what: string, kind: string, registered: Iterable<string>) =>
    `unknown ${what} kind "${kind}"${suggest(kind, [...registered].sort(), "known kinds")}`;

  const datasets: Record<string, DatasetInfo> = {};
  for (const [name, d] of Object.entries(config.data)) {
    const def = datasetKinds().get(d.kind);
    if (!def) {
      err(["data", name, "kind"], unknownKind("dataset", d.kind, datasetKinds().keys()));
      continue;
    }
    const params = check(def.params, d.params, ["data", name, "params"]);
    if (params !== undefined) datasets[name] = { name, kind: d.kind, params };
  }

  const models: Plan["models"] = {};
  for (const [name, m] of Object.entries(config.models)) {
    const def = modelKinds().get(m.kind);
    if (!def) {
      err(["models", name, "kind"], unknownKind("model", m.kind, modelKinds().keys()));
      continue;
    }
    const params = check(def.params, m.params, ["models", name, "params"]);
    if (params !== undefined) models[name] = { name, kind: m.kind, params, shapes: def.shapes(params), init: m.init };
  }

  const stages: Record<string, PlannedStage> = {};
  const names = Object.keys(config.stages);
  for (const [name, s] of Object.entries(config.stages)) {
    const def = stageKinds().get(s.kind);
    if (!def) {
      err(["stages", name, "kind"], unknownKind("stage", s.kind, stageKinds().keys()));
      continue;
    }
    const params = check(def.params, s.params, ["stages", name, "params"]);
    if (params === undefined) continue;
    if (s.every !== undefined && s.at !== undefined) {
      err(["stages", name, "at"], `stage "${name}": set either "every" or "at", not both`);
    }
    if (def.role === "traced" && (s.every !== undefined || s.at !== undefined)) {
      err(
        ["stages", name, s.every !== undefined ? "every" : "at"],
        `stage "${name}" (${s.kind}) is traced: it runs whenever its optimizer does; set the cadence on the optimizer`,
      );
    }
    const ports = def.inputs.map(bare);
    const inputs: PlannedStage["inputs"] = {};
    for (const [port, ref] of Object.entries(s.inputs)) {
      if (!ports.includes(port) && !ports.includes("*")) {
        err(
          ["stages", name, "inputs", port],
          `stage kind "${s.kind}" has no input "${port}"${suggest(port, ports, "its inputs")}`,
          true,
        );
        continue;
      }
      const [st, pt] = ref.split(".");
      if (!(st in config.stages)) {
        err(
          ["stages", name, "inputs", port],
          `"${ref}" refers to unknown stage "${st}"${suggest(st, names, "stages")}`,
        );
        continue;
      }
      inputs[port] = { stage: st, port: pt };
    }
    for (const p of def.inputs) {
      if (p !== "*" && !isOptional(p) && !(p in s.inputs)) {
        err(["stages", name, "inputs"], `stage "${name}" (${s.kind}) needs input "${p}"`);
      }
    }
    for (const m of def.models?.(params) ?? []) {
      if (!(m in config.models)) {
        err(
          ["stages", name, "params", ...findValue(s.params, m)],
          `stage "${name}" uses undeclared model "${m}"${suggest(m, Object.keys(config.models), "declared models")}`,
        );
      }
    }
    for (const d of def.datasets?.(params) ?? []) {
      if (!(d in config.data)) {
        err(
          ["stages", name, "params", ...findValue(s.params, d)],
          `stage "${name}" uses undeclared dataset "${d}"${suggest(d, Object.keys(config.data), "declared datasets")}`,
        );
      }
    }
    stages[name] = { name, def, params, inputs, inputTypes: {}, outputs: {}, every: s.every ?? 1, at: s.at };
  }
  if (issues.length) throw toError(loaded, issues);

  const order = topoOrder(stages, names, issues);
  if (issues.length) throw toError(loaded, issues);

  // A stage whose types failed has no outputs to check against; its readers are skipped, not blamed.
  const failed = new Set<string>();
  for (const name of order) {
    const st = stages[name];
    const before = issues.length;
    for (const [port, ref] of Object.entries(st.inputs)) {
      const src = stages[ref.stage];
      if (failed.has(ref.stage)) {
        failed.add(name);
        continue;
      }
      const spec = src.outputs[ref.port];
      if (!spec) {
        const outs = Object.keys(src.outputs);
        err(
          ["stages", name, "inputs", port],
          `stage "${ref.stage}" has no output "${ref.port}"${suggest(ref.port, outs, "its outputs")}`,
        );
        continue;
      }
      const roleErr = roleMismatch(src.def.role, st.def.role);
      if (roleErr) {
        err(["stages", name, "inputs", port], `"${ref.stage}.${ref.port}" is a ${src.def.role} output; ${roleErr}`);
      }
      st.inputTypes[port] = spec;
    }
    if (failed.has(name) || issues.length > before) {
      failed.add(name);
      continue;
    }
    try {
      st.outputs = st.def.types({ params: st.params, inputs: st.inputTypes, models, datasets });
    } catch (e) {
      if (!(e instanceof StageTypeError)) throw e;
      err(["stages", name, ...e.at], `stage "${name}" (${st.def.kind}): ${e.message}`);
      failed.add(name);
    }
  }
  if (issues.length) throw toError(loaded, issues);

  const consumed = new Set(order.flatMap((n) => Object.values(stages[n].inputs).map((r) => `${r.stage}.${r.port}`)));
  for (const n of order) {
    for (const port of Object.keys(stages[n].outputs)) {
      if (!consumed.has(`${n}.${port}`)) {
        warnings.push(`${where(["stages", n])}: warning: output "${n}.${port}" is not used`);
      }
    }
  }

  const phases = planPhases(stages, order, names, models, issues, config.stages);
  for (const n of order) {
    if (stages[n].def.role === "traced" && !phases.some((p) => p.stages.includes(n))) {
      warnings.push(`${where(["stages", n])}: warning: traced stage "${n}" feeds no optimizer and never runs`);
    }
  }
  if (issues.length) throw toError(loaded, issues);
  return {
    order,
    stages,
    models,
    datasets,
    phases,
    hosts: order.filter((n) => stages[n].def.role === "host"),
    effects: order.filter((n) => stages[n].def.role === "effect"),
    warnings,
  };
}

function toError(loaded: LoadedConfig, issues: ConfigIssue[]): ConfigError {
  return new ConfigError(issues.map((i) => `${loaded.where(i.path, i.key)}: ${i.message}`));
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
