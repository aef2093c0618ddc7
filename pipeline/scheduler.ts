/**
 * The scheduler: compiles each update phase of a plan into one engine graph (traced stages, gradient, optimizer),
 * keeps models, optimizer moments and EMAs resident on the executor in one store, and runs a step: host stages,
 * then each due phase, then effects.
 *
 * @module
 */
import type { Executor, HostArray } from "../engine/executors/executor.ts";
import { ema } from "../engine/optim.ts";
import { Program, ResidentStore } from "../engine/program.ts";
import { type Layout, packHost, unpackHost } from "../engine/pack.ts";
import { Rng } from "../engine/rng.ts";
import { Trace } from "../engine/tensor.ts";
import { initAdapters, mergeHost } from "../models/lora.ts";
import type { Plan } from "./plan.ts";
import { modelKinds } from "./stage.ts";
import { initRng } from "./init_weights.ts";
import { storeKey } from "./store_keys.ts";
import { modelLayouts, type TracedPhase, traceFused, tracePhase } from "./trace_phase.ts";

export { storeKey };

interface CompiledPhase extends TracedPhase {
  program: Program;
}

/** Runs a plan's compiled phases on one executor. */
export class Scheduler {
  readonly layouts: Record<string, Layout>;
  private readonly store: ResidentStore;
  private readonly compiled: CompiledPhase[] = [];
  private readonly emaGraphs = new Map<string, Program>();

  /**
   * `runSteps`: the run's length, the default end of learning-rate decays. `fuse`: trace the phases into one graph
   * where they all run at the same steps (`run.fuse_phases`; trace_phase.ts's `traceFused`).
   */
  constructor(
    readonly plan: Plan,
    readonly executor: Executor,
    readonly seed: number,
    readonly runSteps?: number,
    readonly fuse = false,
  ) {
    this.store = new ResidentStore(executor);
    this.layouts = modelLayouts(plan);
  }

  /** Traces and compiles every phase. Returns node counts per phase, for the plan printout. */
  async compile(): Promise<{ optimizer: string; nodes: number; ms: number }[]> {
    const info = [];
    const phases = this.plan.phases;
    const fused = this.fuse && phases.length > 1 && phases.every((p) => p.every === phases[0].every);
    const groups = fused ? [phases] : phases.map((p) => [p]);
    for (const group of groups) {
      const t0 = performance.now();
      const c = group.length > 1
        ? traceFused(this.plan, group, this.runSteps)
        : tracePhase(this.plan, group[0], this.runSteps);
      const phase = c.phase;
      const program = await Program.create(this.store, c.graph, { inputs: c.stateIn, updates: c.stateOut });
      this.compiled.push({ ...c, program });
      info.push({ optimizer: phase.optimizer, nodes: c.graph.nodes.length, ms: performance.now() - t0 });
    }
    return info;
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

  /**
   * Initialises models (from their declared init or kind's initialiser; a LoRA model's adapters with B = 0, so it
   * starts as its base), moments at zero, EMAs as copies.
   */
  async initialise(loadInit: (m: string, path: string) => Promise<Record<string, Float32Array>>): Promise<void> {
    for (const [name, m] of Object.entries(this.plan.models)) {
      const values = m.lora
        ? initAdapters(m.lora, initRng(this.seed, name))
        : m.init
        ? await loadInit(name, m.init)
        : modelKinds().get(m.kind)!.init(m.params, initRng(this.seed, name));
      this.set(storeKey.model(name), packHost(values, this.layouts[name]));
    }
    for (const phase of this.compiled.flatMap((c) => c.members)) {
      const st = this.plan.stages[phase.optimizer];
      for (const m of phase.updates) {
        const state = st.def.optimizer!.init(st.params, this.layouts[m].total);
        for (const [slot, data] of Object.entries(state)) this.set(storeKey.moment(phase.optimizer, m, slot), data);
      }
    }
  }

  /**
   * A model's parameters (or its EMA) as named host arrays; a LoRA model's merged into its base's weights (with its
   * EMA'd adapters for `useEma`), under the model's own names, so that stages sampling from it see a full model.
   */
  async readModel(name: string, useEma = false): Promise<Record<string, Float32Array>> {
    const key = useEma && this.store.has(storeKey.ema(name)) ? storeKey.ema(name) : storeKey.model(name);
    const own = unpackHost(await this.get(key), this.layouts[name]);
    const lora = this.plan.models[name].lora;
    if (!lora) return own;
    return mergeHost(await this.readModel(lora.base), own, lora);
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
