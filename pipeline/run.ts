/**
 * The run loop: compile, initialise or resume, then per step host stages → compiled phases → metrics row → effects,
 * with progress, checkpoints, a stop on a NaN or Inf metric, and Ctrl-C (or SIGTERM) saving a checkpoint before
 * exiting.
 *
 * Every random stream of a run (initialisation, shuffles, noise) is derived from the seed, the stream's name and the
 * step, so the random state a checkpoint must carry is the seed and the step: a resumed run draws exactly what an
 * uninterrupted one would.
 *
 * @module
 */
import { stringify } from "yaml";
import { createExecutor } from "../engine/executors/auto.ts";
import type { ExecutorName, HostArray } from "../engine/executors/executor.ts";
import { layoutOf } from "../engine/pack.ts";
import { Rng } from "../engine/rng.ts";
import { encodeSafetensors, readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { type CheckpointRef, checkpointRoot, listCheckpoints, writeCheckpoint } from "./checkpoint.ts";
import type { LoadedConfig } from "./config.ts";
import type { Plan } from "./plan.ts";
import { Progress } from "./progress.ts";
import { Scheduler, storeKey } from "./scheduler.ts";
import { type Dataset, datasetKinds, type EffectContext, type HostContext } from "./stage.ts";

/** Options of `runPipeline`. */
export interface RunOptions {
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

/** A clean, user-facing failure: printed as one line, exit code `code`. */
export class RunError extends Error {
  override name = "RunError";
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}

/** What a checkpoint's `state.json` holds. */
export interface CheckpointState {
  step: number;
  seed: number;
  executor: string;
  /** The root generator; every stream is derived from it by name and step (see the module doc). */
  rng: { seed: string; counter: string };
  /** Latest value of every logged scalar, restored on resume so metrics rows continue unchanged. */
  metrics: Record<string, number>;
}

/** Thrown by a save that finds non-finite values in the state, which must never become the "last good" checkpoint. */
class NonFiniteState extends Error {
  constructor(readonly key: string, readonly index: number, readonly value: number) {
    super(`${key}[${index}] is ${fmtNonFinite(value)} after the update`);
  }
}

/** Default number of checkpoints kept when a run is interrupted and no checkpoint stage says otherwise. */
const DEFAULT_KEEP = 3;

const fmtNonFinite = (v: number) => (Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");

/**
 * Runs a planned pipeline to the end, or resumes it. Returns the process exit code: 0 done (or nothing to do), 1
 * stopped on a NaN or Inf, 130 interrupted by Ctrl-C, 143 by SIGTERM. Throws `RunError` for unusable output folders
 * and checkpoints.
 */
export async function runPipeline(loaded: LoadedConfig, plan: Plan, opts: RunOptions = {}): Promise<number> {
  const cfg = loaded.config.run;
  const out = cfg.out!;
  const print = opts.print ?? ((l: string) => console.log(l));
  const warn = opts.warn ?? ((l: string) => console.error(l));
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
  if (opts.resume && latest!.step >= cfg.steps) {
    print(
      `nothing to do: ${latest!.dir} is at step ${latest!.step} and the run has ${cfg.steps} steps; ` +
        `pass --steps N with N > ${latest!.step} to train further, or --fresh to start over`,
    );
    return 0;
  }
  // Read and checked before anything is compiled, so a mismatched checkpoint fails in a second.
  const resumed = opts.resume ? await readResumeState(latest!, plan, cfg.seed, cfg.executor, warn) : null;

  const executor = await createExecutor(cfg.executor as ExecutorName);
  const sched = new Scheduler(plan, executor, cfg.seed, cfg.steps);
  let signal: "SIGINT" | "SIGTERM" | null = null;
  let progress: Progress | null = null;
  const listeners: [Deno.Signal, () => void][] = (["SIGINT", "SIGTERM"] as const).map((sig) => [sig, () => {
    if (signal) Deno.exit(sig === "SIGINT" ? 130 : 143);
    signal = sig;
    const line = `${sig === "SIGINT" ? "Ctrl-C" : "SIGTERM"}: finishing this step and saving a checkpoint ` +
      `(${sig === "SIGINT" ? "Ctrl-C" : "a second signal"} again quits without saving)`;
    if (progress) progress.log(line);
    else warn(line);
  }]);
  for (const [sig, f] of listeners) {
    try {
      Deno.addSignalListener(sig, f);
    } catch {
      // no such signal here (Windows has no SIGTERM listener): it then kills the process, checkpoints stay intact
    }
  }
  try {
    const compiled = await sched.compile();
    for (const c of compiled) {
      print(`compiled phase "${c.optimizer}": ${c.nodes} nodes on ${executor.name} in ${(c.ms / 1000).toFixed(1)} s`);
    }
    const baseDir = loaded.file.replace(/[^/]*$/, "") || "./";
    const updated = new Set(plan.phases.flatMap((p) => p.updates));
    await sched.initialise(async (m, path) => {
      const want = sched.layouts[m];
      // A resume overwrites trained models' weights: their init file is not read (it may have moved since). Frozen
      // models (a teacher) are not in checkpoints and come from their init file again.
      if (resumed && updated.has(m)) {
        return Object.fromEntries(want.entries.map((e) => [e.path, new Float32Array(e.size)]));
      }
      const file = path.startsWith("/") ? path : `${baseDir}${path}`;
      let tensors: Awaited<ReturnType<typeof readSafetensors>>["tensors"];
      try {
        ({ tensors } = await readSafetensors(file));
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        throw new RunError(`${loaded.file}: models.${m}.init: no such file "${file}"`);
      }
      const vals: Record<string, Float32Array> = {};
      for (const e of want.entries) {
        const t = tensors[e.path];
        if (!t) throw new RunError(`${file}: model "${m}" needs tensor "${e.path}" [${e.shape}], not in the file`);
        if (t.shape.join(",") !== e.shape.join(",")) {
          throw new RunError(`${file}: tensor "${e.path}" is [${t.shape}], model "${m}" expects [${e.shape}]`);
        }
        vals[e.path] = toFloat32(t);
      }
      return vals;
    });
    // Only what this system wrote is removed: --out may name a folder that holds other things too.
    if (opts.fresh) await Deno.remove(checkpointRoot(out), { recursive: true }).catch(() => {});
    await Deno.mkdir(out, { recursive: true });
    const metricsFile = `${out}/metrics.jsonl`;
    let start = 0;
    let metrics: Record<string, number> = {};
    let lastCheckpoint: string | null = null;
    if (resumed) {
      for (const [key, data] of Object.entries(resumed.tensors)) sched.set(key, data);
      start = resumed.state.step;
      metrics = { ...resumed.state.metrics };
      lastCheckpoint = latest!.dir;
      await truncateMetrics(metricsFile, start);
      print(`resuming from ${latest!.dir} (step ${start} of ${cfg.steps})`);
    } else {
      await Deno.writeTextFile(metricsFile, "");
    }
    if (signal) {
      print("interrupted before the first step: nothing new to save");
      return signal === "SIGINT" ? 130 : 143;
    }
    progress = new Progress(cfg.steps, cfg.log_every, opts.tty);
    progress.start(start);
    const ckStage = Object.values(plan.stages).find((s) => s.def.kind === "checkpoint");
    let keep = (ckStage?.params as { keep?: number } | undefined)?.keep ?? DEFAULT_KEEP;
    let savedStep = resumed ? start : -1;
    const save = async (step: number, k: number) => {
      keep = k;
      lastCheckpoint = await writeCheckpoint(out, step, await checkpointFiles(step), k);
      savedStep = step;
      return lastCheckpoint;
    };
    const checkpointFiles = async (step: number) => {
      const files: Record<string, Uint8Array | string> = {};
      const state: Record<string, { data: Float32Array; shape: number[] }> = {};
      // Frozen models (no optimizer updates them: a teacher, a feature network) are rebuilt from their init on
      // resume, so checkpoints hold only what training changes.
      const trained = new Set(plan.phases.flatMap((p) => p.updates));
      const frozen = (key: string) => key.startsWith("model.") && !trained.has(key.slice("model.".length));
      for (const key of sched.keys().filter((k) => !frozen(k))) {
        const data = await sched.get(key);
        for (let i = 0; i < data.length; i++) {
          if (!Number.isFinite(data[i])) throw new NonFiniteState(key, i, data[i]);
        }
        state[key] = { data, shape: [data.length] };
      }
      files["state.safetensors"] = encodeSafetensors(state, { step: String(step), format: "add-scheduler-store/1" });
      const asFile = (m: string, flat: Float32Array) => {
        const tensors = Object.fromEntries(
          sched.layouts[m].entries.map((
            e,
          ) => [e.path, { data: flat.subarray(e.offset, e.offset + e.size), shape: e.shape }]),
        );
        return encodeSafetensors(tensors, { step: String(step), model: m });
      };
      for (const m of Object.keys(plan.models).filter((m) => trained.has(m))) {
        files[`${m}.safetensors`] = asFile(m, state[storeKey.model(m)].data);
        const e = state[storeKey.ema(m)];
        if (e) files[`${m}.ema.safetensors`] = asFile(m, e.data);
      }
      const info: CheckpointState = {
        step,
        seed: cfg.seed,
        executor: executor.name,
        rng: new Rng(cfg.seed).state(),
        metrics,
      };
      files["state.json"] = JSON.stringify(info, null, 2) + "\n";
      files["config.yaml"] = stringify(resolvedConfig(loaded, plan));
      return files;
    };
    const stopMessage = (step: number, what: string) => {
      progress!.finish();
      warn(
        `step ${step}: ${what}; stopping. ` +
          (lastCheckpoint
            ? `The last good checkpoint is ${lastCheckpoint} (step ${savedStep}; continue from it with --resume).`
            : "No checkpoint was written."),
      );
      return 1;
    };
    const loadedData = new Map<string, Promise<Dataset>>();
    const loadDataset = (name: string): Promise<Dataset> => {
      let d = loadedData.get(name);
      if (!d) {
        const info = plan.datasets[name];
        d = datasetKinds().get(info.kind)!.load(info.params, cfg.seed);
        loadedData.set(name, d);
      }
      return d;
    };
    const times = new Map<string, number>(); // wall ms per phase and per host/effect stage, for the closing line
    const timed = async <T>(key: string, f: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      try {
        return await f();
      } finally {
        times.set(key, (times.get(key) ?? 0) + performance.now() - t0);
      }
    };
    const loopStart = performance.now();
    for (let step = start + 1; step <= cfg.steps; step++) {
      const host = new Map<string, HostArray>();
      const hctx = (stage: string): HostContext => ({
        stage,
        seed: cfg.seed,
        step,
        out,
        rng: new Rng(cfg.seed).fold(`host/${stage}`).fold(step),
        dataset: (name) => loadDataset(name),
        executor,
        models: plan.models,
        readModel: (model, o) => sched.readModel(model, o?.ema),
        log: (l) => progress!.log(l),
      });
      for (const name of plan.hosts) {
        const st = plan.stages[name];
        const ins: Record<string, HostArray> = {};
        for (const [port, ref] of Object.entries(st.inputs)) ins[port] = host.get(`${ref.stage}.${ref.port}`)!;
        const outs = await timed(name, () => st.def.host!(hctx(name), st.params, ins));
        for (const [port, v] of Object.entries(outs)) host.set(`${name}.${port}`, v);
      }
      const m = await sched.runPhases(step, host, times);
      const bad = Object.entries(m).find(([, v]) => !Number.isFinite(v));
      if (bad) return stopMessage(step, `${bad[0]} is ${fmtNonFinite(bad[1])}`);
      metrics = { ...metrics, ...m };
      // Before the effects, so a checkpoint at this step never precedes its metrics row (resume keeps rows ≤ it).
      if (step % cfg.log_every === 0 || step === cfg.steps) {
        await Deno.writeTextFile(metricsFile, JSON.stringify({ step, ...metrics }) + "\n", { append: true });
      }
      try {
        for (const name of plan.effects) {
          const st = plan.stages[name];
          const due = st.at === "end"
            ? step === cfg.steps
            : st.at === "start"
            ? step === start + 1
            : step % st.every === 0 || (step === cfg.steps && st.def.alsoLast === true);
          if (!due) continue;
          const ins: Record<string, HostArray> = {};
          for (const [port, ref] of Object.entries(st.inputs)) ins[port] = host.get(`${ref.stage}.${ref.port}`)!;
          const ctx: EffectContext = {
            ...hctx(name),
            metrics,
            last: step === cfg.steps,
            every: st.at ? 1 : st.every,
            updateEma: (model, decay) => sched.updateEma(model, decay),
            saveCheckpoint: (k) => save(step, k),
          };
          await timed(name, () => st.def.effect!(ctx, st.params, ins));
        }
        progress.update(step, metrics, signal !== null);
        if (signal && step < cfg.steps) {
          progress.finish();
          const dir = savedStep === step ? lastCheckpoint : await save(step, keep);
          print(`interrupted at step ${step}: saved ${dir}; continue with --resume`);
          return signal === "SIGINT" ? 130 : 143;
        }
      } catch (e) {
        if (e instanceof NonFiniteState) return stopMessage(step, e.message);
        throw e;
      }
    }
    progress.finish();
    // Name what the run produced, so the user knows where to look.
    const made: string[] = [];
    for await (const e of Deno.readDir(out)) {
      if (!e.name.startsWith(".")) made.push(e.isDirectory ? `${e.name}/` : e.name);
    }
    made.sort();
    print(timeLine(times, performance.now() - loopStart, cfg.steps - start));
    print(`done: ${cfg.steps} steps; outputs in ${out}/ (${made.join(", ")})`);
    return 0;
  } finally {
    for (const [sig, f] of listeners) {
      try {
        Deno.removeSignalListener(sig, f);
      } catch {
        // never added
      }
    }
    await sched.dispose();
    await executor.close();
  }
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
  for (const [n, m] of Object.entries(plan.models)) c.models[n].params = m.params as Record<string, unknown>;
  for (const [n, d] of Object.entries(plan.datasets)) c.data[n].params = d.params as Record<string, unknown>;
  for (const [n, st] of Object.entries(plan.stages)) c.stages[n].params = st.params as Record<string, unknown>;
  return c;
}

/** Reads a checkpoint's state for a resume and checks it against the plan: every key present, every size right. */
async function readResumeState(
  ref: CheckpointRef,
  plan: Plan,
  seed: number,
  executor: string,
  warn: (l: string) => void,
): Promise<{ state: CheckpointState; tensors: Record<string, Float32Array> }> {
  const file = `${ref.dir}/state.safetensors`, json = `${ref.dir}/state.json`;
  let state: CheckpointState;
  try {
    state = JSON.parse(await Deno.readTextFile(json));
  } catch (e) {
    throw new RunError(`${json}: cannot read the checkpoint's state (${(e as Error).message.split("\n")[0]})`);
  }
  if (state.step !== ref.step) {
    throw new RunError(`${json}: step ${state.step}, but the folder is for step ${ref.step}`);
  }
  const { tensors } = await readSafetensors(file);
  const need = new Map<string, number>(), optional = new Map<string, number>();
  const trained = new Set(plan.phases.flatMap((p) => p.updates));
  for (const [m, info] of Object.entries(plan.models)) {
    const n = layoutOf(info.shapes).total;
    // Frozen models are not saved (they come from their init); an older checkpoint's copy is accepted and ignored.
    (trained.has(m) ? need : optional).set(storeKey.model(m), n);
    optional.set(storeKey.ema(m), n);
  }
  for (const p of plan.phases) {
    for (const m of p.updates) {
      for (const w of ["m", "v"] as const) need.set(storeKey.moment(p.optimizer, m, w), need.get(storeKey.model(m))!);
    }
  }
  const out: Record<string, Float32Array> = {};
  for (const [key, n] of [...need, ...optional]) {
    const t = tensors[key];
    if (!t) {
      if (!need.has(key)) continue;
      throw new RunError(
        `${file}: no "${key}" (${n} values) in the checkpoint; the config's models or optimizers changed since it ` +
          `was written (see ${ref.dir}/config.yaml)`,
      );
    }
    const got = t.shape.reduce((a, b) => a * b, 1);
    if (got !== n) {
      throw new RunError(
        `${file}: "${key}" has ${got} values, the config needs ${n}; the model's shape changed since the ` +
          `checkpoint was written (see ${ref.dir}/config.yaml)`,
      );
    }
    out[key] = toFloat32(t);
  }
  const unused = Object.keys(tensors).filter((k) => !need.has(k) && !optional.has(k));
  if (unused.length) warn(`${file}: warning: ignoring ${unused.join(", ")} (not in this config)`);
  if (state.seed !== seed) {
    warn(
      `${json}: warning: the checkpoint was trained with seed ${state.seed}, this run has seed ${seed}; ` +
        `it will not reproduce an uninterrupted run`,
    );
  }
  if (state.executor !== executor && executor !== "auto") {
    warn(`${json}: warning: the checkpoint was trained on ${state.executor}, this run uses ${executor}`);
  }
  return { state, tensors: out };
}

/** Keeps the rows of `metrics.jsonl` up to `step` (a resume rewrites what came after its checkpoint). */
async function truncateMetrics(file: string, step: number): Promise<void> {
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return;
  }
  const keep = text.split("\n").filter((l) => {
    try {
      return l.trim() !== "" && JSON.parse(l).step <= step;
    } catch {
      return false; // a row cut short by a kill
    }
  });
  const tmp = `${file}.tmp`;
  await Deno.writeTextFile(tmp, keep.map((l) => l + "\n").join(""));
  await Deno.rename(tmp, file);
}
