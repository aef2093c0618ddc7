/**
 * The run loop: compile, initialise or resume, then per step host stages → compiled phases → metrics row → effects,
 * with progress, checkpoints, a stop on a NaN or Inf metric, and Ctrl-C (or SIGTERM) saving a checkpoint before
 * exiting.
 *
 * Every random stream of a run (initialisation, shuffles, noise) is derived from the seed, the stream's name and the
 * step, so the random state a checkpoint must carry is the seed and the step, beside what stages keep as state: a
 * resumed run draws exactly what an uninterrupted one would.
 *
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { createExecutor } from "../engine/executors/auto.ts";
import type { Executor, ExecutorName, HostArray } from "../engine/executors/executor.ts";
import { Rng } from "../engine/rng.ts";
import {
  type CheckpointRef,
  checkpointRoot,
  latestCheckpoint,
  listCheckpoints,
  type RunSnapshot,
  saveSnapshot,
} from "./checkpoint.ts";
import type { LoadedConfig } from "./config.ts";
import { isDue } from "./cadence.ts";
import { RunError } from "./errors.ts";
import { readInitFile } from "./init_weights.ts";
import type { Plan } from "./plan.ts";
import { Progress } from "./progress.ts";
import { readResumeState, type ResumeState, truncateMetrics } from "./resume.ts";
import { Scheduler, storeKey } from "./scheduler.ts";
import { type Dataset, datasetKinds, type EffectContext, type HostContext } from "./stage.ts";
import { RunMemory } from "./stage_state.ts";

export { RunError };

/** Options of `runPipeline`. */
export interface RunOptions {
  /** Continue from the latest checkpoint in the output folder; without it a folder with checkpoints is refused. */
  resume?: boolean;
  /** Start afresh in an output folder that has checkpoints, deleting them. */
  fresh?: boolean;
  /** Overrides `isTerminal()` for the progress display (tests). */
  tty?: boolean;
  /** Prints a line (defaults to stdout). */
  print?: (line: string) => void;
  /** Prints a warning or the reason of a stop (defaults to stderr). */
  warn?: (line: string) => void;
}

/** Thrown by a snapshot that finds non-finite values in the state, which must never become the "last good" checkpoint. */
class NonFiniteState extends Error {
  constructor(readonly key: string, readonly index: number, readonly value: number) {
    super(`${key}[${index}] is ${fmtNonFinite(value)} after the update`);
  }
}

/** Number of checkpoints kept when a run without a checkpoint stage is interrupted. */
const DEFAULT_KEEP = 3;

const fmtNonFinite = (v: number) => (Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");

type Print = (line: string) => void;

/**
 * Runs a planned pipeline to the end, or resumes it. Returns the process exit code: 0 done (or nothing to do), 1
 * stopped on a NaN or Inf, 130 interrupted by Ctrl-C, 143 by SIGTERM. Throws `RunError` for unusable output folders
 * and checkpoints.
 */
export async function runPipeline(loaded: LoadedConfig, plan: Plan, opts: RunOptions = {}): Promise<number> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const warn = opts.warn ?? ((l: string) => console.error(l));
  const from = await startingPoint(loaded, plan, opts, print, warn);
  if (from === "done") return 0;
  const executor = await createExecutor(loaded.config.run.executor as ExecutorName);
  const run = new Run(loaded, plan, executor, from, print, warn);
  const signals = new Signals((line) => run.progress ? run.progress.log(line) : warn(line));
  try {
    await run.prepare(opts.fresh === true);
    if (signals.caught) {
      print("interrupted before the first step: nothing new to save");
      return signals.code;
    }
    return await run.loop(opts.tty, signals);
  } finally {
    signals.dispose();
    await run.dispose();
  }
}

/** Checks the output folder against `--resume`/`--fresh`; the checkpoint to resume from, null, or "done". */
async function startingPoint(
  loaded: LoadedConfig,
  plan: Plan,
  opts: RunOptions,
  print: Print,
  warn: Print,
): Promise<{ ref: CheckpointRef; state: ResumeState } | null | "done"> {
  const cfg = loaded.config.run, out = cfg.out!;
  if (opts.resume && opts.fresh) throw new RunError("--resume and --fresh contradict each other; pass one", 2);
  const existing = await listCheckpoints(out);
  const latest = existing.length ? existing[existing.length - 1] : null;
  if (opts.resume && !latest) {
    throw new RunError(`${out}: no checkpoint to resume from in ${checkpointRoot(out)}/; run without --resume`, 2);
  }
  if (!opts.resume && latest && !opts.fresh) {
    throw new RunError(
      `${out} already has checkpoints (latest step ${latest.step}); ` +
        `pass --resume to continue, --fresh to start over there, or --out for another folder`,
      2,
    );
  }
  if (!opts.resume) return null;
  if (latest!.step >= cfg.steps) {
    print(
      `nothing to do: ${latest!.dir} is at step ${latest!.step} and the run has ${cfg.steps} steps; ` +
        `pass --steps N with N > ${latest!.step} to train further, or --fresh to start over`,
    );
    return "done";
  }
  // Read and checked before anything is compiled, so a mismatched checkpoint fails in a second.
  return { ref: latest!, state: await readResumeState(latest!, plan, cfg.seed, cfg.executor, warn) };
}

/** Ctrl-C and SIGTERM: the first asks the run to save and stop after its step, a second quits at once. */
class Signals {
  caught: "SIGINT" | "SIGTERM" | null = null;
  readonly #listeners: [Deno.Signal, () => void][];

  constructor(say: Print) {
    this.#listeners = (["SIGINT", "SIGTERM"] as const).map((sig) => [sig, () => {
      if (this.caught) Deno.exit(sig === "SIGINT" ? 130 : 143);
      this.caught = sig;
      say(
        `${sig === "SIGINT" ? "Ctrl-C" : "SIGTERM"}: finishing this step and saving a checkpoint ` +
          `(${sig === "SIGINT" ? "Ctrl-C" : "a second signal"} again quits without saving)`,
      );
    }]);
    for (const [sig, f] of this.#listeners) {
      try {
        Deno.addSignalListener(sig, f);
      } catch {
        // no such signal here (Windows has no SIGTERM listener): it then kills the process, checkpoints stay intact
      }
    }
  }

  /** The exit code of the signal caught. */
  get code(): number {
    return this.caught === "SIGINT" ? 130 : 143;
  }

  dispose(): void {
    for (const [sig, f] of this.#listeners) {
      try {
        Deno.removeSignalListener(sig, f);
      } catch {
        // never added
      }
    }
  }
}

/** One invocation of a run: its scheduler, the stages' memory, the latest metrics and where time went. */
class Run {
  readonly sched: Scheduler;
  readonly memory = new RunMemory();
  readonly times = new Map<string, number>(); // wall ms per phase and per host/effect stage, for the closing line
  readonly out: string;
  progress: Progress | null = null;
  metrics: Record<string, number> = {};
  start = 0;
  readonly #datasets = new Map<string, Promise<Dataset>>();
  readonly #trained: Set<string>;

  constructor(
    readonly loaded: LoadedConfig,
    readonly plan: Plan,
    readonly executor: Executor,
    readonly resumed: { ref: CheckpointRef; state: ResumeState } | null,
    readonly print: Print,
    readonly warn: Print,
  ) {
    this.out = loaded.config.run.out!;
    this.sched = new Scheduler(plan, executor, this.cfg.seed, this.cfg.steps, this.cfg.fuse_phases);
    this.#trained = new Set(plan.phases.flatMap((p) => p.updates));
  }

  get cfg(): LoadedConfig["config"]["run"] {
    return this.loaded.config.run;
  }

  /** Compiles the phases, initialises (or restores) the state and opens the metrics file. */
  async prepare(fresh: boolean): Promise<void> {
    // Weights first: the compiled graphs hold the frozen models' as constants.
    await this.sched.initialise((m, path) => this.initWeights(m, path));
    for (const c of await this.sched.compile()) {
      this.print(
        `compiled phase "${c.optimizer}": ${c.nodes} nodes on ${this.executor.name} in ${(c.ms / 1000).toFixed(1)} s`,
      );
    }
    // Only what this system wrote is removed: --out may name a folder that holds other things too.
    if (fresh) await Deno.remove(checkpointRoot(this.out), { recursive: true }).catch(() => {});
    await Deno.mkdir(this.out, { recursive: true });
    const metricsFile = `${this.out}/metrics.jsonl`;
    if (!this.resumed) return await Deno.writeTextFile(metricsFile, "");
    const { ref, state } = this.resumed;
    for (const [key, parts] of Object.entries(state.tensors)) this.sched.setPacked(key, parts);
    this.memory.restore(state.stageState);
    this.start = state.state.step;
    this.metrics = { ...state.state.metrics };
    await truncateMetrics(metricsFile, this.start);
    this.print(`resuming from ${ref.dir} (step ${this.start} of ${this.cfg.steps})`);
  }

  /** A model's initial weights from its `init` file, checked against its shapes. */
  initWeights(m: string, path: string): Promise<Record<string, Float32Array>> {
    const want = this.sched.layouts[m];
    // A resume overwrites trained models' weights: their init file is not read (it may have moved since). Frozen
    // models (a teacher) are not in checkpoints and come from their init file again.
    if (this.resumed && this.#trained.has(m)) {
      return Promise.resolve(Object.fromEntries(want.entries.map((e) => [e.path, new Float32Array(e.size)])));
    }
    return readInitFile(this.loaded, this.plan, m, path);
  }

  /** Steps from the start to the end; the exit code. */
  async loop(tty: boolean | undefined, signals: Signals): Promise<number> {
    const progress = this.progress = new Progress(this.cfg.steps, this.cfg.log_every, tty);
    progress.start(this.start);
    const loopStart = performance.now();
    for (let step = this.start + 1; step <= this.cfg.steps; step++) {
      const host = await this.hostStages(step);
      const m = await this.sched.runPhases(step, host, this.times);
      const bad = Object.entries(m).find(([, v]) => !Number.isFinite(v));
      if (bad) return this.stop(step, `${bad[0]} is ${fmtNonFinite(bad[1])}`);
      this.metrics = { ...this.metrics, ...m };
      // Before the effects, so a checkpoint at this step never precedes its metrics row (resume keeps rows ≤ it).
      if (step % this.cfg.log_every === 0 || step === this.cfg.steps) {
        const row = JSON.stringify({ step, ...this.metrics }) + "\n";
        await Deno.writeTextFile(`${this.out}/metrics.jsonl`, row, { append: true });
      }
      try {
        await this.effects(step, host);
        progress.update(step, this.metrics, signals.caught !== null);
        if (signals.caught && step < this.cfg.steps) {
          progress.finish();
          await this.interrupted(step);
          this.print(
            `interrupted at step ${step}: saved ${(await latestCheckpoint(this.out))!.dir}; continue with --resume`,
          );
          return signals.code;
        }
      } catch (e) {
        if (e instanceof NonFiniteState) return this.stop(step, e.message);
        throw e;
      }
    }
    progress.finish();
    this.print(timeLine(this.times, performance.now() - loopStart, this.cfg.steps - this.start));
    this.print(`done: ${this.cfg.steps} steps; outputs in ${this.out}/ (${(await this.made()).join(", ")})`);
    return 0;
  }

  /** The host stages of a step, in plan order: their outputs by "stage.port". */
  async hostStages(step: number): Promise<Map<string, HostArray>> {
    const host = new Map<string, HostArray>();
    for (const name of this.plan.hosts) {
      const st = this.plan.stages[name];
      const outs = await this.timed(name, () => st.def.host!(this.context(name, step), st.params, inputsOf(st, host)));
      for (const [port, v] of Object.entries(outs)) host.set(`${name}.${port}`, v);
    }
    return host;
  }

  /** The effects due at `step`. */
  async effects(step: number, host: Map<string, HostArray>): Promise<void> {
    const last = this.cfg.steps;
    for (const name of this.plan.effects) {
      const st = this.plan.stages[name];
      if (!isDue(st.cadence, step, this.start + 1, last)) continue;
      await this.timed(name, () => st.def.effect!(this.effectContext(name, step), st.params, inputsOf(st, host)));
    }
  }

  /** An interrupt after `step`: the stages that save on one do, or the run saves a checkpoint of its own. */
  async interrupted(step: number): Promise<void> {
    const savers = this.plan.effects.filter((n) => this.plan.stages[n].def.interrupted);
    for (const name of savers) {
      const st = this.plan.stages[name];
      await st.def.interrupted!(this.effectContext(name, step), st.params);
    }
    if (!savers.length && (await latestCheckpoint(this.out))?.step !== step) {
      await saveSnapshot(this.out, await this.snapshot(step), DEFAULT_KEEP);
    }
  }

  /** What a host stage sees at `step`. */
  context(stage: string, step: number): HostContext {
    const mem = this.memory.forStage(stage);
    return {
      stage,
      seed: this.cfg.seed,
      step,
      out: this.out,
      cache: this.cfg.cache,
      rng: new Rng(this.cfg.seed).fold(`host/${stage}`).fold(step),
      dataset: (name) => this.dataset(name),
      executor: this.executor,
      models: this.plan.models,
      readModel: (model, o) => this.sched.readModel(model, o?.ema),
      log: (l) => this.progress!.log(l),
      memo: mem.memo,
      state: mem.state,
    };
  }

  /** What an effect stage sees when it fires at `step`. */
  effectContext(stage: string, step: number): EffectContext {
    const st = this.plan.stages[stage];
    return {
      ...this.context(stage, step),
      metrics: this.metrics,
      last: step === this.cfg.steps,
      every: st.cadence.every ?? 1,
      updateEma: (model, decay) => this.sched.updateEma(model, decay),
      snapshot: () => this.snapshot(step),
    };
  }

  /** The run's training state after `step`; throws `NonFiniteState` rather than capture a NaN or an Inf. */
  async snapshot(step: number): Promise<RunSnapshot> {
    // Frozen models (no optimizer updates them: a teacher, a feature network) are rebuilt from their init on
    // resume, so checkpoints hold only what training changes.
    const frozen = new Set(
      Object.keys(this.plan.models).filter((m) => !this.#trained.has(m))
        .flatMap((m) => this.sched.keysOf(storeKey.model(m), m)),
    );
    const store: Record<string, Float32Array> = {};
    for (const key of this.sched.keys().filter((k) => !frozen.has(k))) {
      const data = await this.sched.get(key);
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) throw new NonFiniteState(key, i, data[i]);
      }
      store[key] = data;
    }
    const names = Object.keys(this.plan.models).filter((m) => this.#trained.has(m));
    const trained = Object.fromEntries(names.map((m) => [m, this.sched.layouts[m]]));
    const split = names.filter((m) => this.sched.chunks[m].length > 1);
    return {
      step,
      seed: this.cfg.seed,
      executor: this.executor.name,
      rng: new Rng(this.cfg.seed).state(),
      metrics: this.metrics,
      store,
      stageState: this.memory.entries(),
      trained,
      ...(split.length ? { chunks: Object.fromEntries(split.map((m) => [m, this.sched.chunks[m]])) } : {}),
      config: resolvedConfig(this.loaded, this.plan),
    };
  }

  /** Stops on a non-finite value at `step`, naming the checkpoint to resume from; the exit code. */
  async stop(step: number, what: string): Promise<number> {
    this.progress!.finish();
    const last = await latestCheckpoint(this.out);
    this.warn(
      `step ${step}: ${what}; stopping. ` +
        (last
          ? `The last good checkpoint is ${last.dir} (step ${last.step}; continue from it with --resume).`
          : "No checkpoint was written."),
    );
    return 1;
  }

  dataset(name: string): Promise<Dataset> {
    let d = this.#datasets.get(name);
    if (!d) {
      const info = this.plan.datasets[name];
      d = datasetKinds().get(info.kind)!.load(info.params, this.cfg.seed, { cache: this.cfg.cache });
      this.#datasets.set(name, d);
    }
    return d;
  }

  async timed<T>(key: string, f: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      this.times.set(key, (this.times.get(key) ?? 0) + performance.now() - t0);
    }
  }

  /** What the run produced, to name where to look. */
  async made(): Promise<string[]> {
    const made: string[] = [];
    for await (const e of Deno.readDir(this.out)) {
      if (!e.name.startsWith(".")) made.push(e.isDirectory ? `${e.name}/` : e.name);
    }
    return made.sort();
  }

  async dispose(): Promise<void> {
    await this.sched.dispose();
    await this.executor.close();
  }
}

/** A stage's inputs this step, from the host values by "stage.port". */
function inputsOf(st: Plan["stages"][string], host: Map<string, HostArray>): Record<string, HostArray> {
  const ins: Record<string, HostArray> = {};
  for (const [port, ref] of Object.entries(st.inputs)) ins[port] = host.get(`${ref.stage}.${ref.port}`)!;
  return ins;
}

/**
 * "time: 8m 31s for 500 steps — opt_g 61%, opt_d 29%, report 5%, …": where this invocation's wall time went, by
 * compiled phase (named by its optimizer) and by host or effect stage; shares under 1% are left out.
 */
export function timeLine(times: ReadonlyMap<string, number>, totalMs: number, steps: number): string {
  const s = Math.round(totalMs / 1000);
  const total = s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${(totalMs / 1000).toFixed(1)} s`;
  const parts = [...times].filter(([, ms]) => ms >= totalMs / 100).sort((a, b) => b[1] - a[1])
    .map(([k, ms]) => `${k} ${Math.round((100 * ms) / totalMs)}%`);
  return `time: ${total} for ${steps} step${steps === 1 ? "" : "s"}` + (parts.length ? ` — ${parts.join(", ")}` : "");
}

/** The config with every default filled in, down to the parameters of each kind, as a checkpoint records it. */
function resolvedConfig(loaded: LoadedConfig, plan: Plan): unknown {
  const c = structuredClone(loaded.config);
  for (const [n, m] of Object.entries(plan.models)) {
    c.models[n].params = m.params as Record<string, unknown>;
    if (!m.lora) continue;
    const { rank, alpha, patterns: targets, base } = m.lora;
    c.models[n].lora = { rank, alpha, targets, base };
    // A checkpoint holds the adapters alone; merging them for export or sampling reads the base's weights from its
    // init file, which must then be found from wherever the checkpoint is read, not only from the config's folder.
    const b = c.models[base];
    if (b.init && !isAbsolute(b.init)) b.init = resolve(loaded.file.replace(/[^/]*$/, "") || ".", b.init);
  }
  for (const [n, d] of Object.entries(plan.datasets)) c.data[n].params = d.params as Record<string, unknown>;
  for (const [n, st] of Object.entries(plan.stages)) c.stages[n].params = st.params as Record<string, unknown>;
  return c;
}
