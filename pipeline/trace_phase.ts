/**
 * Tracing an update phase into one engine graph — its traced stages, the gradient of its optimizer's loss, the
 * optimizer's update — with the names that bind the graph to the run's store and host values. Pure: no executor.
 *
 * @module
 */
import { grad } from "../engine/grad.ts";
import type { Graph } from "../engine/ir.ts";
import { div } from "../engine/math.ts";
import { type Layout, layoutOf, nest, pack, unpack } from "../engine/pack.ts";
import { type Tensor, Trace } from "../engine/tensor.ts";
import type { Phase, Plan } from "./plan.ts";
import { modelKinds, type TraceContext } from "./stage.ts";
import { storeKey } from "./store_keys.ts";

/** A random input of a phase: drawn on the host each step from the seed, the stage, the tag and the step. */
export interface RandomInput {
  name: string;
  stage: string;
  tag: string;
  kind: "normal" | "uniform";
  size: number;
}

/** A traced phase and how its graph meets the run. */
export interface TracedPhase {
  phase: Phase;
  graph: Graph;
  /** Graph input name → store key, for resident inputs. */
  stateIn: Record<string, string>;
  /** Graph output name → store key. */
  stateOut: Record<string, string>;
  /** Graph input name → host stage output "stage.port". */
  feeds: Record<string, string>;
  randoms: RandomInput[];
  /** Output names of scalars to read back each run (losses, metrics), → metric name. */
  metrics: Record<string, string>;
}

/** Each declared model's packed layout. */
export function modelLayouts(plan: Plan): Record<string, Layout> {
  return Object.fromEntries(Object.entries(plan.models).map(([n, m]) => [n, layoutOf(m.shapes)]));
}

/** The names of an optimizer stage's state slots per model: its rule's `init` keys. */
export function optimizerSlots(plan: Plan, optimizer: string): string[] {
  const st = plan.stages[optimizer];
  return Object.keys(st.def.optimizer!.init(st.params, 0));
}

/**
 * Builds a phase's graph: its traced stages, the gradient of its optimizer's loss and the optimizer's update, with the
 * names that bind the graph to the run's store and host values. Needs no executor (the scheduler compiles the result;
 * planning and `--dry-run` only trace).
 */
export function tracePhase(plan: Plan, phase: Phase, runSteps?: number): TracedPhase {
  const layouts = modelLayouts(plan);
  const tr = new Trace();
  const stateIn: Record<string, string> = {}, stateOut: Record<string, string> = {};
  const feeds: Record<string, string> = {}, metrics: Record<string, string> = {};
  const randoms: RandomInput[] = [];
  const step = tr.input("step", []);
  const params: Record<string, Record<string, Tensor>> = {};
  const flats: Record<string, Tensor> = {};
  for (const m of [...phase.updates, ...phase.reads]) {
    const key = storeKey.model(m);
    flats[m] = tr.input(key, [layouts[m].total]);
    stateIn[key] = key;
    params[m] = unpack(flats[m], layouts[m]);
  }
  const values = new Map<string, Tensor>();
  const outputs: Record<string, Tensor> = {};
  for (const name of phase.stages) {
    const st = plan.stages[name];
    const inputs: Record<string, Tensor> = {};
    for (const [port, ref] of Object.entries(st.inputs)) {
      const id = `${ref.stage}.${ref.port}`;
      let v = values.get(id);
      if (!v) {
        const spec = plan.stages[ref.stage].outputs[ref.port];
        v = tr.input(`feed.${id}`, spec.shape, spec.dtype);
        feeds[`feed.${id}`] = id;
        values.set(id, v);
      }
      inputs[port] = v;
    }
    const random = (kind: "normal" | "uniform", tag: string, shape: number[]): Tensor => {
      const inputName = `rand.${name}.${tag}`;
      randoms.push({ name: inputName, stage: name, tag, kind, size: shape.reduce((a, b) => a * b, 1) });
      return tr.input(inputName, shape);
    };
    const ctx: TraceContext = {
      stage: name,
      step,
      model: (m) => {
        if (!params[m]) throw new Error(`stage "${name}" uses model "${m}" it did not declare`);
        return nest(params[m]) as Record<string, Tensor>;
      },
      apply: (m, ins) => {
        const info = plan.models[m];
        if (!params[m]) throw new Error(`stage "${name}" uses model "${m}" it did not declare`);
        return modelKinds().get(info.kind)!.apply(info.params, params[m], ins);
      },
      normal: (tag, shape) => random("normal", tag, shape),
      uniform: (tag, shape) => random("uniform", tag, shape),
      metric: (mname, v) => {
        const out = `metric.${name}.${mname}`;
        outputs[out] = v;
        metrics[out] = `${name}.${mname}`;
      },
    };
    const outs = st.def.trace!(ctx, st.params, inputs);
    for (const [port, t] of Object.entries(outs)) values.set(`${name}.${port}`, t);
  }
  const opt = plan.stages[phase.optimizer];
  const lossRef = opt.inputs.loss;
  const loss = values.get(`${lossRef.stage}.${lossRef.port}`)!;
  outputs[`metric.${phase.optimizer}.loss`] = loss;
  metrics[`metric.${phase.optimizer}.loss`] = `${phase.optimizer}.loss`;
  const gs = phase.updates.map((m) => pack(grad(loss, params[m]), layouts[m]));
  const rule = opt.def.optimizer!;
  const slots = phase.updates.map((m, i) => {
    const state: Record<string, Tensor> = {};
    for (const slot of optimizerSlots(plan, phase.optimizer)) {
      const key = storeKey.moment(phase.optimizer, m, slot);
      state[slot] = tr.input(key, [layouts[m].total]);
      stateIn[key] = key;
    }
    return { param: flats[m], grad: gs[i], state };
  });
  // The phase's n-th update is at step n·every (step is an exact f32 integer, so the division is exact).
  const count = phase.every === 1 ? step : div(step, phase.every);
  const updated = rule.update(
    {
      count,
      runUpdates: runSteps ? Math.floor(runSteps / phase.every) : undefined,
      metric: (name, v) => {
        outputs[`metric.${phase.optimizer}.${name}`] = v;
        metrics[`metric.${phase.optimizer}.${name}`] = `${phase.optimizer}.${name}`;
      },
    },
    opt.params,
    slots,
  );
  phase.updates.forEach((m, i) => {
    const keys: [string, Tensor][] = [[storeKey.model(m), updated[i].param]];
    for (const slot of optimizerSlots(plan, phase.optimizer)) {
      keys.push([storeKey.moment(phase.optimizer, m, slot), updated[i].state[slot]]);
    }
    for (const [key, t] of keys) {
      if (!t) throw new Error(`optimizer "${phase.optimizer}" returned no "${key}"`);
      outputs[`out.${key}`] = t;
      stateOut[`out.${key}`] = key;
    }
  });
  return { phase, graph: tr.build(outputs), stateIn, stateOut, feeds, randoms, metrics };
}
