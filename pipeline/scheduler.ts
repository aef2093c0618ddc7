/**
 * The scheduler: compiles each update phase of a plan into one engine graph (traced stages, gradient, optimizer),
 * keeps models, optimizer moments and EMAs resident on the executor in one store, and runs a step: host stages,
 * then each due phase, then effects.
 *
 * @module
 */
import { constantLimit, type Executor, type HostArray, packLimit } from "../engine/executors/executor.ts";
import { withConstants } from "../engine/ir.ts";
import { ema } from "../engine/optim.ts";
import { Program, ResidentStore } from "../engine/program.ts";
import { chunkNames, type Layout, packHostChunks, splitFlat, unpackHostChunks } from "../engine/pack.ts";
import { Rng } from "../engine/rng.ts";
import { Trace } from "../engine/tensor.ts";
import { initAdapters, mergeHost } from "../models/lora.ts";
import { RunError } from "./errors.ts";
import type { Plan } from "./plan.ts";
import { modelKinds } from "./stage.ts";
import { initRng } from "./init_weights.ts";
import { storeKey } from "./store_keys.ts";
import { modelChunks, modelLayouts, packedKeys, type TracedPhase, traceFused, tracePhase } from "./trace_phase.ts";

export { storeKey };

interface CompiledPhase extends TracedPhase {
  program: Program;
}

/** Runs a plan's compiled phases on one executor. */
export class Scheduler {
  /** Each model's whole packed layout. */
  readonly layouts: Record<string, Layout>;
  /**
   * Each model's packed buffers under the executor's `packLimit`: `[layouts[m]]` where it fits one, and every store
   * entry of the model (weights, EMA, optimizer slots) is then one key; else its chunks, under `<key>.<i>`.
   */
  readonly chunks: Record<string, Layout[]>;
  /** Store entries that mirror a model's packing, → the model (`packedKeys`). */
  readonly #packed: Map<string, string>;
  /**
   * The store keys of the models no phase updates (a teacher, a feature network) that the graphs hold as constants,
   * as far as the executor's `constantLimit` goes (in the plan's order of models); the store keeps them too, for
   * host stages that read them.
   */
  readonly constantKeys: ReadonlySet<string>;
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
    try {
      this.chunks = modelChunks(plan, packLimit(executor), `the ${executor.name} executor`);
    } catch (e) {
      // One line at the run's start, before anything compiles, rather than a failed upload minutes in.
      throw new RunError((e as Error).message);
    }
    this.#packed = packedKeys(plan);
    const trained = new Set(plan.phases.flatMap((p) => p.updates));
    const keys = new Set<string>();
    let room: number;
    try {
      room = constantLimit(executor);
    } catch (e) {
      throw new RunError((e as Error).message);
    }
    for (const m of Object.keys(plan.models).filter((m) => !trained.has(m))) {
      if (this.layouts[m].total > room) continue;
      room -= this.layouts[m].total;
      for (const k of this.keysOf(storeKey.model(m), m)) keys.add(k);
    }
    this.constantKeys = keys;
  }

  /**
   * Traces and compiles every phase, after `initialise` (frozen models' weights go into the graphs as constants, see
   * `constantKeys`). Returns node counts per phase, for the plan printout.
   */
  async compile(): Promise<{ optimizer: string; nodes: number; ms: number }[]> {
    const info = [];
    const phases = this.plan.phases;
    const fused = this.fuse && phases.length > 1 && phases.every((p) => p.every === phases[0].every);
    const groups = fused ? [phases] : phases.map((p) => [p]);
    for (const group of groups) {
      const t0 = performance.now();
      const c = group.length > 1
        ? traceFused(this.plan, group, this.runSteps, this.chunks)
        : tracePhase(this.plan, group[0], this.runSteps, this.chunks);
      const phase = c.phase;
      const constants = new Map<string, Float32Array>(), inputs: Record<string, string> = {};
      for (const [input, key] of Object.entries(c.stateIn)) {
        if (this.constantKeys.has(key)) constants.set(input, await this.get(key));
        else inputs[input] = key;
      }
      const graph = constants.size ? withConstants(c.graph, constants) : c.graph;
      const program = await Program.create(this.store, graph, { inputs, updates: c.stateOut });
      this.compiled.push({ ...c, program });
      info.push({ optimizer: phase.optimizer, nodes: c.graph.nodes.length, ms: performance.now() - t0 });
    }
    return info;
  }

  /** Sets a store entry from host data (initial weights, loaded checkpoints). */
  set(key: string, data: Float32Array): void {
    this.store.set(key, data);
  }

  /** The store keys of entry `key` of model `m`'s packing: `key` itself, or one per chunk. */
  keysOf(key: string, m: string): string[] {
    return chunkNames(key, this.chunks[m].length);
  }

  /**
   * Sets a packed entry (`packedKeys`: weights, EMA, optimizer slot) from its buffers as saved, whole or chunked under
   * any limit: split to this run's chunks, as views where the saved buffers are already those chunks.
   */
  setPacked(key: string, parts: readonly Float32Array[]): void {
    const m = this.#packed.get(key);
    if (m === undefined) throw new Error(`scheduler: "${key}" is not a packed entry of this plan`);
    const chunks = this.chunks[m], keys = this.keysOf(key, m);
    const same = parts.length === chunks.length && parts.every((p, i) => p.length === chunks[i].total);
    const joined = () => {
      const flat = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) {
        flat.set(p, at);
        at += p.length;
      }
      return flat;
    };
    const bufs = same ? parts : splitFlat(parts.length === 1 ? parts[0] : joined(), chunks);
    bufs.forEach((b, i) => this.set(keys[i], b));
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
      const keys = this.keysOf(storeKey.model(name), name);
      packHostChunks(values, this.chunks[name]).forEach((data, i) => this.set(keys[i], data));
    }
    for (const phase of this.plan.phases) {
      const st = this.plan.stages[phase.optimizer];
      for (const m of phase.updates) {
        this.chunks[m].forEach((c, i) => {
          const state = st.def.optimizer!.init(st.params, c.total);
          for (const [slot, data] of Object.entries(state)) {
            this.set(this.keysOf(storeKey.moment(phase.optimizer, m, slot), m)[i], data);
          }
        });
      }
    }
  }

  /**
   * A model's parameters (or its EMA) as named host arrays; a LoRA model's merged into its base's weights (with its
   * EMA'd adapters for `useEma`), under the model's own names, so that stages sampling from it see a full model.
   */
  async readModel(name: string, useEma = false): Promise<Record<string, Float32Array>> {
    const ema = this.keysOf(storeKey.ema(name), name);
    const keys = useEma && this.store.has(ema[0]) ? ema : this.keysOf(storeKey.model(name), name);
    const flats = [];
    for (const key of keys) flats.push(await this.get(key));
    const own = unpackHostChunks(flats, this.chunks[name]);
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

  /** e ← decay·e + (1 − decay)·p for a model, on the executor (compiled once per model, over all its buffers). */
  async updateEma(model: string, decay: number): Promise<void> {
    const keys = this.keysOf(storeKey.ema(model), model), pks = this.keysOf(storeKey.model(model), model);
    if (!this.store.has(keys[0])) {
      for (let i = 0; i < keys.length; i++) this.set(keys[i], await this.get(pks[i]));
      return;
    }
    let prog = this.emaGraphs.get(model);
    if (!prog) {
      const tr = new Trace(), n = keys.length, [es, ps] = [chunkNames("e", n), chunkNames("p", n)];
      const outs: Record<string, ReturnType<typeof ema>> = {}, inputs: Record<string, string> = {};
      // Inputs in the order of the single-buffer graph (e, p, decay), so a model that fits compiles as it always did.
      const ins = this.chunks[model].map((c, i) => [tr.input(es[i], [c.total]), tr.input(ps[i], [c.total])]);
      const d = tr.input("decay", []);
      ins.forEach(([e, p], i) => {
        outs[es[i]] = ema(e, p, d);
        Object.assign(inputs, { [es[i]]: keys[i], [ps[i]]: pks[i] });
      });
      const updates = Object.fromEntries(es.map((e, i) => [e, keys[i]]));
      prog = await Program.create(this.store, tr.build(outs), { inputs, updates });
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
