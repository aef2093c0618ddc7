/**
 * Validation and planning, all before step 1: stage, model and dataset kinds and params, port references, cycles,
 * port types and shapes, roles, then the execution plan — which traced stages compile into which update phase.
 *
 * @module
 */
import { z } from "zod";
import { type ConfigIssue, didYouMean, type LoadedConfig, zodIssues } from "./config.ts";
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

/** One compiled graph: the traced stages feeding one optimizer, run every `every` steps. */
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
  /** Traced stages that feed no optimizer but whose outputs effect stages read: compiled as eval graphs. */
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
  const err = (path: (string | number)[], message: string) => issues.push({ path, message });
  const check = <T>(schema: z.ZodType<T>, value: unknown, base: (string | number)[]): T | undefined => {
    const r = schema.safeParse(value ?? {});
    if (r.success) return r.data;
    issues.push(...zodIssues(r.error, schema, base));
    return undefined;
  };

  const datasets: Record<string, DatasetInfo> = {};
  for (const [name, d] of Object.entries(config.data)) {
    const def = datasetKinds().get(d.kind);
    if (!def) {
      err(["data", name, "kind"], `unknown dataset kind "${d.kind}"${didYouMean(d.kind, datasetKinds().keys())}`);
      continue;
    }
    const params = check(def.params, d.params, ["data", name, "params"]);
    if (params !== undefined) datasets[name] = { name, kind: d.kind, params };
  }

  const models: Plan["models"] = {};
  for (const [name, m] of Object.entries(config.models)) {
    const def = modelKinds().get(m.kind);
    if (!def) {
      err(["models", name, "kind"], `unknown model kind "${m.kind}"${didYouMean(m.kind, modelKinds().keys())}`);
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
      err(["stages", name, "kind"], `unknown stage kind "${s.kind}"${didYouMean(s.kind, stageKinds().keys())}`);
      continue;
    }
    const params = check(def.params, s.params, ["stages", name, "params"]);
    if (params === undefined) continue;
    if (s.every !== undefined && s.at !== undefined) {
      err(["stages", name, "at"], `set either "every" or "at", not both`);
    }
    if (def.role === "traced" && (s.every !== undefined || s.at !== undefined)) {
      err(
        ["stages", name, s.every !== undefined ? "every" : "at"],
        `traced stage "${name}" runs with its optimizer's phase; set the cadence on the optimizer`,
      );
    }
    const ports = def.inputs.map(bare);
    const inputs: PlannedStage["inputs"] = {};
    for (const [port, ref] of Object.entries(s.inputs)) {
      if (!ports.includes(port) && !ports.includes("*")) {
        err(
          ["stages", name, "inputs", port],
          `stage kind "${s.kind}" has no input "${port}"${didYouMean(port, ports)}; inputs: ${
            ports.join(", ") || "(none)"
          }`,
        );
        continue;
      }
      const [st, pt] = ref.split(".");
      if (!(st in config.stages)) {
        err(["stages", name, "inputs", port], `"${ref}" refers to unknown stage "${st}"${didYouMean(st, names)}`);
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
          ["stages", name, "params"],
          `stage "${name}" uses undeclared model "${m}"${didYouMean(m, Object.keys(config.models))}`,
        );
      }
    }
    for (const d of def.datasets?.(params) ?? []) {
      if (!(d in config.data)) {
        err(
          ["stages", name, "params"],
          `stage "${name}" uses undeclared dataset "${d}"${didYouMean(d, Object.keys(config.data))}`,
        );
      }
    }
    stages[name] = { name, def, params, inputs, inputTypes: {}, outputs: {}, every: s.every ?? 1, at: s.at };
  }
  if (issues.length) throw toError(loaded, issues);

  const order = topoOrder(stages, names, loaded, issues);
  if (issues.length) throw toError(loaded, issues);

  for (const name of order) {
    const st = stages[name];
    for (const [port, ref] of Object.entries(st.inputs)) {
      const src = stages[ref.stage];
      const spec = src.outputs[ref.port];
      if (!spec) {
        const outs = Object.keys(src.outputs);
        err(
          ["stages", name, "inputs", port],
          `stage "${ref.stage}" has no output "${ref.port}"${didYouMean(ref.port, outs)}; outputs: ${
            outs.join(", ") || "(none)"
          }`,
        );
        continue;
      }
      const roleErr = roleMismatch(src.def.role, st.def.role);
      if (roleErr) {
        err(["stages", name, "inputs", port], `"${ref.stage}.${ref.port}" is a ${src.def.role} output; ${roleErr}`);
      }
      st.inputTypes[port] = spec;
    }
    if (issues.length) continue;
    try {
      st.outputs = st.def.types({ params: st.params, inputs: st.inputTypes, models, datasets });
    } catch (e) {
      if (!(e instanceof StageTypeError)) throw e;
      err(["stages", name, ...e.at], `stage "${name}" (${st.def.kind}): ${e.message}`);
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

  const phases = planPhases(stages, order, models, issues);
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
  return new ConfigError(issues.map((i) => `${loaded.where(i.path)}: ${i.message}`));
}

function roleMismatch(from: string, to: string): string | null {
  if (from === "optimizer" || from === "effect") return "optimizer and effect stages have no outputs to read";
  if (to === "host" && from !== "host") return "a host stage can only read host outputs";
  if (to === "effect" && from !== "host") return "an effect stage can only read host outputs (it reads models itself)";
  return null;
}

/** Kahn's algorithm in declaration order; reports a cycle by naming it. */
function topoOrder(stages: Record<string, PlannedStage>, names: string[], loaded: LoadedConfig, issues: ConfigIssue[]) {
  const deps = new Map(
    names.filter((n) => stages[n]).map((n) => [n, new Set(Object.values(stages[n].inputs).map((r) => r.stage))]),
  );
  const order: string[] = [];
  const done = new Set<string>();
  while (order.length < deps.size) {
    const next = [...deps.keys()].find((n) => !done.has(n) && [...deps.get(n)!].every((d) => done.has(d)));
    if (!next) {
      const cycle = findCycle(deps, done);
      issues.push({ path: ["stages", cycle[0], "inputs"], message: `cycle: ${cycle.join(" → ")}` });
      void loaded;
      return order;
    }
    order.push(next);
    done.add(next);
  }
  return order;
}

function findCycle(deps: Map<string, Set<string>>, done: Set<string>): string[] {
  const start = [...deps.keys()].find((n) => !done.has(n))!;
  const path: string[] = [];
  let cur = start;
  while (!path.includes(cur)) {
    path.push(cur);
    cur = [...deps.get(cur)!].find((d) => !done.has(d))!;
  }
  const cyc = path.slice(path.indexOf(cur));
  // Reported in data-flow order: a → b means b reads a.
  return [...cyc.reverse(), cyc[0]];
}

function planPhases(
  stages: Record<string, PlannedStage>,
  order: string[],
  models: Plan["models"],
  issues: ConfigIssue[],
) {
  const phases: Phase[] = [];
  const updatedBy = new Map<string, string>();
  for (const name of order) {
    const st = stages[name];
    if (st.def.role !== "optimizer") continue;
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
          path: ["stages", name, "params"],
          message: `model "${m}" is already updated by optimizer "${updatedBy.get(m)}"`,
        });
      }
      updatedBy.set(m, name);
    }
    const stagesIn = order.filter((n) => need.has(n));
    const used = new Set(stagesIn.flatMap((n) => stages[n].def.models?.(stages[n].params) ?? []));
    for (const m of updates) {
      if (!used.has(m)) {
        issues.push({
          path: ["stages", name, "params"],
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
