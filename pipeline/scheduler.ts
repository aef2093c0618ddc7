/**
 * The scheduler: compiles each update phase of a plan into one engine graph (traced stages, gradient, optimizer),
 * keeps models, optimizer moments and EMAs resident on the executor in one store, and runs a step: host stages,
 * then each due phase, then effects.
 *
 * @module
 */
import type { Executor, HostArray } from "../engine/executors/executor.ts";
import { grad } from "../engine/grad.ts";
import type { Graph } from "../engine/ir.ts";
import { div } from "../engine/math.ts";
import { ema } from "../engine/optim.ts";
import { Program, ResidentStore } from "../engine/program.ts";
import { type Layout, layoutOf, nest, pack, packHost, unpack, unpackHost } from "../engine/pack.ts";
import { Rng } from "../engine/rng.ts";
import { type Tensor, Trace } from "../engine/tensor.ts";
import type { Phase, Plan } from "./plan.ts";
import { modelKinds, type TraceContext } from "./stage.ts";
import { initRng } from "./init_weights.ts";
import { storeKey } from "./store_keys.ts";

export { storeKey };

interface RandomInput {
  name: string;
  stage: string;
  tag: string;
  kind: "normal" | "uniform";
  size: number;
}

interface CompiledPhase {
  phase: Phase;
  graph: Graph;
  program: Program;
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

/** The names of an optimizer stage's state slots per model: its rule's `init` keys. */
export function optimizerSlots(plan: Plan, optimizer: string): string[] {
  const st = plan.stages[optimizer];
  return Object.keys(st.def.optimizer!.init(st.params, 0));
}

/** Runs a plan's compiled phases on one executor. */
export class Scheduler {
  readonly layouts: Record<string, Layout> = {};
  private readonly store: ResidentStore;
  private readonly compiled: CompiledPhase[] = [];
  private readonly emaGraphs = new Map<string, Program>();

  /** `runSteps`: the run's length, the default end of learning-rate decays. */
  constructor(readonly plan: Plan, readonly executor: Executor, readonly seed: number, readonly runSteps?: number) {
    this.store = new ResidentStore(executor);
    for (const [name, m] of Object.entries(plan.models)) layouts(this.layouts, name, m.shapes);
  }

  /** Traces and compiles every phase. Returns node counts per phase, for the plan printout. */
  async compile(): Promise<{ optimizer: string; nodes: number; ms: number }[]> {
    const info = [];
    for (const phase of this.plan.phases) {
      const t0 = performance.now();
      const c = this.tracePhase(phase);
      const program = await Program.create(this.store, c.graph, { inputs: c.stateIn, updates: c.stateOut });
      this.compiled.push({ ...c, program });
      info.push({ optimizer: phase.optimizer, nodes: c.graph.nodes.length, ms: performance.now() - t0 });
    }
    return info;
  }

  /** Builds a phase's graph without compiling it (also used by `--dry-run`). */
  tracePhase(phase: Phase): Omit<CompiledPhase, "program"> {
    const plan = this.plan;
    const tr = new Trace();
    const stateIn: Record<string, string> = {}, stateOut: Record<string, string> = {};
    const feeds: Record<string, string> = {}, metrics: Record<string, string> = {};
    const randoms: RandomInput[] = [];
    const step = tr.input("step", []);
    const params: Record<string, Record<string, Tensor>> = {};
    const flats: Record<string, Tensor> = {};
    for (const m of [...phase.updates, ...phase.reads]) {
      const key = storeKey.model(m);
      flats[m] = tr.input(key, [this.layouts[m].total]);
      stateIn[key] = key;
      params[m] = unpack(flats[m], this.layouts[m]);
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
    const gs = phase.updates.map((m) => pack(grad(loss, params[m]), this.layouts[m]));
    const rule = opt.def.optimizer!;
    const slots = phase.updates.map((m, i) => {
      const state: Record<string, Tensor> = {};
      for (const slot of optimizerSlots(plan, phase.optimizer)) {
        const key = storeKey.moment(phase.optimizer, m, slot);
        state[slot] = tr.input(key, [this.layouts[m].total]);
        stateIn[key] = key;
      }
      return { param: flats[m], grad: gs[i], state };
    });
    // The phase's n-th update is at step n·every (step is an exact f32 integer, so the division is exact).
    const count = phase.every === 1 ? step : div(step, phase.every);
    const updated = rule.update(
      {
        count,
        runUpdates: this.runSteps ? Math.floor(this.runSteps / phase.every) : undefined,
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

  /** Sets a store entry from host data (initial weights, loaded checkpoints). */
  set(key: string, data: Float32Array): void {
    this.store.set(key, data);
  }

  /** Reads a store entry back to the host. */
  async get(key: string): Promise<Float32Array> {
    return Float32Array.from(await this.store.read(key));
  }

  /** Keys currently in the store. */
  keys(): string[] {
    return this.store.keys();
  }

  /** Initialises models (from their declared init or kind's initialiser), moments at zero, EMAs as copies. */
  async initialise(loadInit: (m: string, path: string) => Promise<Record<string, Float32Array>>): Promise<void> {
    for (const [name, m] of Object.entries(this.plan.models)) {
      const values = m.init
        ? await loadInit(name, m.init)
        : modelKinds().get(m.kind)!.init(m.params, initRng(this.seed, name));
      this.set(storeKey.model(name), packHost(values, this.layouts[name]));
    }
    for (const { phase } of this.compiled) {
      const st = this.plan.stages[phase.optimizer];
      for (const m of phase.updates) {
        const state = st.def.optimizer!.init(st.params, this.layouts[m].total);
        for (const [slot, data] of Object.entries(state)) this.set(storeKey.moment(phase.optimizer, m, slot), data);
      }
    }
  }

  /** A model's parameters (or its EMA) as named host arrays. */
  async readModel(name: string, useEma = false): Promise<Record<string, Float32Array>> {
    const key = useEma && this.store.has(storeKey.ema(name)) ? storeKey.ema(name) : storeKey.model(name);
    return unpackHost(await this.get(key), this.layouts[name]);
  }

  /**
   * Runs the phases due at `step` with this step's host values; returns the scalars they logged. With `times`, adds
   * each phase's wall milliseconds (uploads, run, read-back) under its optimizer's name.
   */
  async runPhases(
    step: number,
    host: Map<string, HostArray>,
    times?: Map<string, number>,
  ): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const c of this.compiled) {
      if (step % c.phase.every !== 0) continue;
      const t0 = performance.now();
      const feeds: Record<string, HostArray> = { step: Float32Array.of(step) };
      for (const [input, id] of Object.entries(c.feeds)) feeds[input] = host.get(id)!;
      for (const r of c.randoms) {
        const rng = new Rng(this.seed).fold(`${r.stage}/${r.tag}`).fold(step);
        feeds[r.name] = r.kind === "normal" ? rng.normal(r.size) : rng.uniform(r.size);
      }
      const res = await c.program.run(feeds, Object.keys(c.metrics));
      for (const [output, metric] of Object.entries(c.metrics)) out[metric] = res[output][0];
      times?.set(c.phase.optimizer, (times.get(c.phase.optimizer) ?? 0) + performance.now() - t0);
    }
    return out;
  }

  /** e ← decay·e + (1 − decay)·p for a model, on the executor (compiled once per model). */
  async updateEma(model: string, decay: number): Promise<void> {
    const key = storeKey.ema(model), pk = storeKey.model(model);
    if (!this.store.has(key)) {
      this.set(key, await this.get(pk));
      return;
    }
    let prog = this.emaGraphs.get(model);
    if (!prog) {
      const tr = new Trace();
      const e = tr.input("e", [this.layouts[model].total]), p = tr.input("p", [this.layouts[model].total]);
      const d = tr.input("decay", []);
      prog = await Program.create(this.store, tr.build({ e: ema(e, p, d) }), {
        inputs: { e: key, p: pk },
        updates: { e: key },
      });
      this.emaGraphs.set(model, prog);
    }
    await prog.run({ decay: Float32Array.of(decay) }, []);
  }

  /** Frees everything on the executor. */
  async dispose(): Promise<void> {
    this.store.dispose();
    for (const c of this.compiled) await c.program.dispose();
    for (const p of this.emaGraphs.values()) await p.dispose();
  }
}

function layouts(out: Record<string, Layout>, name: string, shapes: Record<string, number[]>) {
  out[name] = layoutOf(shapes);
}
