/**
 * Tracing an update phase into one engine graph — its traced stages, the gradient of its optimizer's loss, the
 * optimizer's update — with the names that bind the graph to the run's store and host values. Pure: no executor.
 *
 * @module
 */
import { grad } from "../engine/grad.ts";
import type { Graph } from "../engine/ir.ts";
import { div } from "../engine/math.ts";
import { stopGradient } from "../engine/ops.ts";
import { chunkLayout, chunkNames, type Layout, layoutOf, nest, packChunks, unpackChunks } from "../engine/pack.ts";
import { type Tensor, Trace } from "../engine/tensor.ts";
import { mergeTraced } from "../models/lora.ts";
import type { Phase, Plan } from "./plan.ts";
import { storedShapes } from "./plan_types.ts";
import { modelKinds, type TraceContext, type UpdateSlot } from "./stage.ts";
import { storeKey } from "./store_keys.ts";

/** What an optimizer rule returns for one slot. */
type UpdateResult = { param: Tensor; state: Record<string, Tensor> };

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
  /** The plan's phases this graph runs, in order: one, or several fused (`traceFused`). */
  members: Phase[];
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

/** Each declared model's packed layout in the store (a LoRA model's: its adapters). */
export function modelLayouts(plan: Plan): Record<string, Layout> {
  return Object.fromEntries(Object.entries(plan.models).map(([n, m]) => [n, layoutOf(storedShapes(m))]));
}

/**
 * Each declared model's packed buffers under an executor's `limit` of elements per buffer (engine/pack.ts
 * `chunkLayout`): its whole layout, the only buffer, wherever it fits, so its store keys and graph inputs are as they
 * always were; several, named `<key>.0`, `<key>.1`, … (`chunkNames`), where it does not.
 */
export function modelChunks(plan: Plan, limit: number, executor = "the executor"): Record<string, Layout[]> {
  return Object.fromEntries(
    Object.entries(modelLayouts(plan)).map(([n, l]) => [n, chunkLayout(l, limit, `model "${n}" on ${executor}`)]),
  );
}

/**
 * Every store entry that mirrors a model's packing, each → its model: the weights and EMA of every model, and each
 * optimizer's state slots of the models it updates. A resume reads these; the scheduler splits them by the model.
 */
export function packedKeys(plan: Plan): Map<string, string> {
  const keys = new Map<string, string>();
  for (const m of Object.keys(plan.models)) keys.set(storeKey.model(m), m).set(storeKey.ema(m), m);
  for (const p of plan.phases) {
    for (const m of p.updates) {
      for (const slot of optimizerSlots(plan, p.optimizer)) keys.set(storeKey.moment(p.optimizer, m, slot), m);
    }
  }
  return keys;
}

/** The names of an optimizer stage's state slots per model: its rule's `init` keys. */
export function optimizerSlots(plan: Plan, optimizer: string): string[] {
  const st = plan.stages[optimizer];
  return Object.keys(st.def.optimizer!.init(st.params, 0));
}

/**
 * Builds a phase's graph: its traced stages, the gradient of its optimizer's loss and the optimizer's update, with the
 * names that bind the graph to the run's store and host values. Needs no executor (the scheduler compiles the result;
 * planning and `--dry-run` only trace); `chunks` is its packing (`modelChunks`), by default one buffer per model.
 */
export function tracePhase(
  plan: Plan,
  phase: Phase,
  runSteps?: number,
  chunks = modelChunks(plan, Infinity),
): TracedPhase {
  const t = new PhaseTrace(plan, phase, chunks);
  for (const name of phase.stages) t.stage(name);
  t.update(phase, runSteps);
  return t.result([phase]);
}

/**
 * Traces several phases that run at the same steps into one graph, in their order, with the same arithmetic as
 * running them one after another: a later phase sees the parameters an earlier one updated (ADD's generator is
 * scored by the discriminator after its step), and only the stages that depend on such a model are traced again.
 * The rest — the student's forward pass, the first thing both of ADD's phases compute — is traced once and shared,
 * and its activations serve the later phase's backward pass.
 */
export function traceFused(
  plan: Plan,
  phases: Phase[],
  runSteps?: number,
  chunks = modelChunks(plan, Infinity),
): TracedPhase {
  if (phases.some((p) => p.every !== phases[0].every)) throw new Error("traceFused: the phases run at different steps");
  const updates = phases.flatMap((p) => p.updates);
  const merged: Phase = {
    optimizer: phases.map((p) => p.optimizer).join("+"),
    stages: [...new Set(phases.flatMap((p) => p.stages))],
    updates,
    reads: [...new Set(phases.flatMap((p) => p.reads))].filter((m) => !updates.includes(m)),
    every: phases[0].every,
  };
  const t = new PhaseTrace(plan, merged, chunks);
  const traced = new Set<string>(), changed = new Set<string>();
  for (const phase of phases) {
    const stale = new Set<string>();
    for (const name of phase.stages) {
      const st = plan.stages[name];
      const uses = st.def.models?.(st.params) ?? [];
      if (uses.some((m) => changed.has(m)) || Object.values(st.inputs).some((r) => stale.has(r.stage))) stale.add(name);
      if (!traced.has(name) || stale.has(name)) t.stage(name);
      traced.add(name);
    }
    for (const m of t.update(phase, runSteps)) changed.add(m);
  }
  return t.result(phases);
}

/** One phase being traced: the graph so far and the names binding it to the run. */
class PhaseTrace {
  readonly tr = new Trace();
  readonly stateIn: Record<string, string> = {};
  readonly stateOut: Record<string, string> = {};
  readonly feeds: Record<string, string> = {};
  readonly metrics: Record<string, string> = {};
  readonly randoms: RandomInput[] = [];
  readonly drawn = new Map<string, Tensor>();
  readonly outputs: Record<string, Tensor> = {};
  /** Stage outputs and fed host values by "stage.port". */
  readonly values = new Map<string, Tensor>();
  readonly step: Tensor;
  /** Each model's parameters, flat (as stored: one buffer, or its chunks) and unpacked by path. */
  readonly flats: Record<string, Tensor[]> = {};
  readonly params: Record<string, Record<string, Tensor>> = {};
  /** A LoRA model's weights as its forward pass sees them, merged from its base when first used (see `weights`). */
  readonly merged: Record<string, Record<string, Tensor>> = {};

  constructor(readonly plan: Plan, readonly phase: Phase, readonly chunks: Record<string, Layout[]>) {
    this.step = this.tr.input("step", []);
    for (const m of [...phase.updates, ...phase.reads]) {
      this.flats[m] = this.resident(storeKey.model(m), m);
      this.params[m] = unpackChunks(this.flats[m], chunks[m]);
    }
  }

  /** The graph inputs of store entry `key`, which mirrors model `m`'s packing: one per buffer, bound to the store. */
  resident(key: string, m: string): Tensor[] {
    return chunkNames(key, this.chunks[m].length).map((name, i) => {
      this.stateIn[name] = name;
      return this.tr.input(name, [this.chunks[m][i].total]);
    });
  }

  /** Traces stage `name` on its inputs: earlier stages' outputs, or host values fed to the graph. */
  stage(name: string): void {
    const st = this.plan.stages[name];
    const inputs: Record<string, Tensor> = {};
    for (const [port, ref] of Object.entries(st.inputs)) {
      const id = `${ref.stage}.${ref.port}`;
      let v = this.values.get(id);
      if (!v) {
        const spec = this.plan.stages[ref.stage].outputs[ref.port];
        v = this.tr.input(`feed.${id}`, spec.shape, spec.dtype);
        this.feeds[`feed.${id}`] = id;
        this.values.set(id, v);
      }
      inputs[port] = v;
    }
    const outs = st.def.trace!(this.context(name), st.params, inputs);
    for (const [port, t] of Object.entries(outs)) this.values.set(`${name}.${port}`, t);
  }

  /** What stage `name` sees while it is traced. */
  context(name: string): TraceContext {
    const random = (kind: "normal" | "uniform", tag: string, shape: number[]): Tensor => {
      const inputName = `rand.${name}.${tag}`;
      // A stage traced again in a fused later phase draws what it drew the first time, as it does when each phase
      // is its own graph (the draw depends on the seed, the stage, the tag and the step alone).
      const drawn = this.drawn.get(inputName);
      if (drawn) return drawn;
      this.randoms.push({ name: inputName, stage: name, tag, kind, size: shape.reduce((a, b) => a * b, 1) });
      const t = this.tr.input(inputName, shape);
      this.drawn.set(inputName, t);
      return t;
    };
    const declared = (m: string) => {
      if (!this.params[m]) throw new Error(`stage "${name}" uses model "${m}" it did not declare`);
      return this.weights(m);
    };
    return {
      stage: name,
      step: this.step,
      model: (m) => nest(declared(m)) as Record<string, Tensor>,
      apply: (m, ins) => {
        const info = this.plan.models[m];
        return modelKinds().get(info.kind)!.apply(info.params, declared(m), ins);
      },
      normal: (tag, shape) => random("normal", tag, shape),
      uniform: (tag, shape) => random("uniform", tag, shape),
      metric: (mname, v) => this.metric(`${name}.${mname}`, v),
    };
  }

  /**
   * The weights model `m`'s forward pass sees: its parameters, or for a LoRA model its base's with the adapters
   * merged in (traced once per phase and per update, and only when a stage applies the model).
   */
  weights(m: string): Record<string, Tensor> {
    const lora = this.plan.models[m].lora;
    if (!lora) return this.params[m];
    const base = this.params[lora.base];
    if (!base) throw new Error(`LoRA model "${m}": its base "${lora.base}" is not read by the phase`);
    return this.merged[m] ??= mergeTraced(base, this.params[m], lora);
  }

  metric(name: string, v: Tensor): void {
    this.outputs[`metric.${name}`] = v;
    this.metrics[`metric.${name}`] = name;
  }

  /**
   * The gradient of `phase`'s optimizer loss and its rule's update of each model and its state slots. The updated
   * parameters become the models' parameters for whatever is traced after (a fused later phase). Returns the models.
   */
  update(phase: Phase, runSteps?: number): string[] {
    const { plan, chunks } = this, opt = plan.stages[phase.optimizer];
    const loss = this.values.get(`${opt.inputs.loss.stage}.${opt.inputs.loss.port}`)!;
    this.metric(`${phase.optimizer}.loss`, loss);
    const gs = phase.updates.map((m) => packChunks(grad(loss, this.params[m]), chunks[m]));
    const slotNames = optimizerSlots(plan, phase.optimizer);
    // One slot per buffer: a model split into chunks gives the rule one slot per chunk, in order.
    const slots: UpdateSlot[] = phase.updates.flatMap((m, k) => {
      const state = slotNames.map((slot) => this.resident(storeKey.moment(phase.optimizer, m, slot), m));
      return gs[k].map((grad, i) => ({
        model: m,
        param: this.flats[m][i],
        grad,
        state: Object.fromEntries(slotNames.map((slot, j) => [slot, state[j][i]])),
      }));
    });
    // The phase's n-th update is at step n·every (step is an exact f32 integer, so the division is exact).
    const count = phase.every === 1 ? this.step : div(this.step, phase.every);
    const updated = opt.def.optimizer!.update(
      {
        count,
        runUpdates: runSteps ? Math.floor(runSteps / phase.every) : undefined,
        metric: (name, v) => this.metric(`${phase.optimizer}.${name}`, v),
      },
      opt.params,
      slots,
    );
    let at = 0;
    for (const m of phase.updates) {
      const mine = Array.from(chunks[m], (_, i) => updated[at + i]);
      at += chunks[m].length;
      this.output(phase.optimizer, m, slotNames, mine);
      // A constant to what follows, as the stored weights are to a later phase's graph: without the stop, a later
      // loss's gradient would flow back through this update into the earlier phase's (second order, not ADD).
      this.flats[m] = mine.map((u) => stopGradient(u.param));
      this.params[m] = unpackChunks(this.flats[m], chunks[m]);
      delete this.merged[m];
    }
    return phase.updates;
  }

  /** Binds model `m`'s updated buffers and state slots (one result per buffer) to the store entries they replace. */
  output(optimizer: string, m: string, slotNames: string[], mine: (UpdateResult | undefined)[]): void {
    const n = this.chunks[m].length, keys: [string, Tensor | undefined][] = [];
    chunkNames(storeKey.model(m), n).forEach((key, i) => keys.push([key, mine[i]?.param]));
    for (const slot of slotNames) {
      chunkNames(storeKey.moment(optimizer, m, slot), n).forEach((key, i) => keys.push([key, mine[i]?.state[slot]]));
    }
    for (const [key, t] of keys) {
      if (!t) throw new Error(`optimizer "${optimizer}" returned no "${key}"`);
      this.outputs[`out.${key}`] = t;
      this.stateOut[`out.${key}`] = key;
    }
  }

  result(members: Phase[]): TracedPhase {
    const { phase, stateIn, stateOut, feeds, randoms, metrics } = this;
    return { phase, members, graph: this.tr.build(this.outputs), stateIn, stateOut, feeds, randoms, metrics };
  }
}
