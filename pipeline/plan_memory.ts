/**
 * The memory estimate planning checks a run against, before anything is allocated (see `MemoryEstimate`): the
 * models' parameters and optimizer state, and one step's tensors from port types or from the traced graphs' live
 * values; and, when it does not fit, the stage to blame.
 *
 * @module
 */
import type { DType, Graph, Node } from "../engine/ir.ts";
import { type Issues, quoteList } from "./plan_issues.ts";
import { type MemoryEstimate, type Phase, type Plan, type PlannedStage, storedShapes } from "./plan_types.ts";
import { fmtSpec, type PortSpec } from "./stage.ts";

const DTYPE_BYTES: Record<DType, number> = { f32: 4, i32: 4, bool: 1 };
const elements = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const bytesOf = (s: { dtype: DType; shape: readonly number[] }) => DTYPE_BYTES[s.dtype] * elements(s.shape);

/** The system's total memory; Infinity (no check) where the run may not read it, rather than prompting for it. */
export function machineMemory(): number {
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

/** Each model's parameter count and the copies a run holds of it (see `MemoryEstimate`). */
export function modelMemory(
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
    // A LoRA model holds its adapters alone: its base's weights are counted once, with the base.
    const params = Object.values(storedShapes(m)).reduce((a, s) => a + elements(s), 0);
    const state = slots.get(name);
    const copies = 1 + (state?.length ?? 0);
    out[name] = { params, copies, bytes: params * 4 * copies, state, updated: state !== undefined };
  }
  return out;
}

/** A step estimate, with the stage to blame when it does not fit (see `blame`). */
export interface StepEstimate {
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

export interface Culprit {
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
export function portStep(plan: Plan): StepEstimate {
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
export function checkMemory(plan: Plan, step: StepEstimate, issues: Issues): void {
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

/**
 * Peak bytes of a graph's live values when each is freed after its last use, nodes run in order. Inputs named in
 * `resident` (model parameters, optimizer state) are left out, being counted with the models; other inputs (the
 * batch, noise) are live throughout.
 */
export function peakLive(g: Graph, resident: Set<string>): number {
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
export function heaviest(plan: Plan, g: Graph, feeds: Record<string, string>, spans: Map<string, Node[]>) {
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
