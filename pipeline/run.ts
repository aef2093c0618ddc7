/**
 * The run loop: compile, initialise or resume, then per step host stages → compiled phases → effects, with progress,
 * metrics.jsonl, checkpoints, NaN/Inf stop, and Ctrl-C saving a checkpoint before exiting.
 *
 * @module
 */
import { stringify } from "yaml";
import { createExecutor } from "../engine/executors/auto.ts";
import type { ExecutorName, HostArray } from "../engine/executors/executor.ts";
import { Rng } from "../engine/rng.ts";
import { decodeSafetensors, encodeSafetensors, readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { latestCheckpoint, listCheckpoints, writeCheckpoint } from "./checkpoint.ts";
import type { LoadedConfig } from "./config.ts";
import type { Plan } from "./plan.ts";
import { Progress } from "./progress.ts";
import { Scheduler } from "./scheduler.ts";
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
}

/** A clean, user-facing failure: printed as one line, exit code `code`. */
export class RunError extends Error {
  override name = "RunError";
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}

/** Default number of checkpoints kept when a run is interrupted and no checkpoint stage says otherwise. */
const DEFAULT_KEEP = 3;

/** Runs a planned pipeline to the end. Returns the process exit code (0 done, 1 stopped on NaN, 130 interrupted). */
export async function runPipeline(loaded: LoadedConfig, plan: Plan, opts: RunOptions = {}): Promise<number> {
  const cfg = loaded.config.run;
  const out = cfg.out!;
  const print = opts.print ?? ((l: string) => console.log(l));
  const existing = await listCheckpoints(out);
  if (opts.resume && existing.length === 0) {
    throw new RunError(`${out}: no checkpoint to resume from; run without --resume to start`, 2);
  }
  if (!opts.resume && existing.length > 0 && !opts.fresh) {
    throw new RunError(
      `${out} already has checkpoints (latest step ${existing[existing.length - 1].step}); ` +
        `pass --resume to continue, --fresh to start over there, or --out for another folder`,
      2,
    );
  }
  const executor = await createExecutor(cfg.executor as ExecutorName);
  const sched = new Scheduler(plan, executor, cfg.seed);
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) Deno.exit(130);
    interrupted = true;
  };
  try {
    Deno.addSignalListener("SIGINT", onSigint);
  } catch {
    // no signals (e.g. some test environments): Ctrl-C then kills the process, checkpoints stay intact
  }
  try {
    const compiled = await sched.compile();
    for (const c of compiled) {
      print(`compiled phase "${c.optimizer}": ${c.nodes} nodes on ${executor.name} in ${(c.ms / 1000).toFixed(1)} s`);
    }
    const baseDir = loaded.file.replace(/[^/]*$/, "") || "./";
    await sched.initialise(async (m, path) => {
      const file = path.startsWith("/") ? path : `${baseDir}${path}`;
      const { tensors } = await readSafetensors(file);
      const want = sched.layouts[m];
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
    if (opts.fresh && !opts.resume) await Deno.remove(out, { recursive: true }).catch(() => {});
    await Deno.mkdir(out, { recursive: true });
    const metricsFile = `${out}/metrics.jsonl`;
    let start = 0;
    if (opts.resume) {
      const ref = (await latestCheckpoint(out))!;
      const state = decodeSafetensors(
        await Deno.readFile(`${ref.dir}/state.safetensors`),
        `${ref.dir}/state.safetensors`,
      );
      for (const [key, t] of Object.entries(state.tensors)) sched.set(key, toFloat32(t));
      start = ref.step;
      await truncateMetrics(metricsFile, start);
      print(`resuming from ${ref.dir} (step ${start})`);
    } else {
      await Deno.writeTextFile(metricsFile, "");
    }
    if (start >= cfg.steps) {
      print(`nothing to do: the checkpoint is at step ${start} of ${cfg.steps}`);
      return 0;
    }
    const progress = new Progress(
      cfg.steps,
      cfg.log_every,
      opts.tty,
      (s) => Deno.stdout.writeSync(new TextEncoder().encode(s)),
    );
    progress.start(start);
    let metrics: Record<string, number> = {};
    let lastCheckpoint = existing.length ? existing[existing.length - 1].dir : null;
    let keep = DEFAULT_KEEP;
    const save = async (step: number, k: number) => {
      keep = k;
      const files: Record<string, Uint8Array | string> = {};
      const all: Record<string, { data: Float32Array; shape: number[] }> = {};
      for (const key of sched.keys()) {
        const data = await sched.get(key);
        all[key] = { data, shape: [data.length] };
      }
      files["state.safetensors"] = encodeSafetensors(all, { step: String(step), format: "add-scheduler-store/1" });
      for (const m of Object.keys(plan.models)) {
        const w = await sched.readModel(m);
        files[`${m}.safetensors`] = encodeSafetensors(
          Object.fromEntries(
            Object.entries(w).map(([p, d]) => [p, {
              data: d,
              shape: sched.layouts[m].entries.find((e) => e.path === p)!.shape,
            }]),
          ),
        );
        if (sched.keys().includes(`ema.${m}`)) {
          const e = await sched.readModel(m, true);
          files[`${m}.ema.safetensors`] = encodeSafetensors(
            Object.fromEntries(
              Object.entries(e).map(([p, d]) => [p, {
                data: d,
                shape: sched.layouts[m].entries.find((x) => x.path === p)!.shape,
              }]),
            ),
          );
        }
      }
      files["state.json"] = JSON.stringify(
        { step, seed: cfg.seed, executor: executor.name, rng: new Rng(cfg.seed).state(), metrics },
        null,
        2,
      ) + "\n";
      files["config.yaml"] = stringify(loaded.config);
      lastCheckpoint = await writeCheckpoint(out, step, files, k);
      return lastCheckpoint;
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
    for (let step = start + 1; step <= cfg.steps; step++) {
      const host = new Map<string, HostArray>();
      const hctx = (stage: string): HostContext => ({
        stage,
        seed: cfg.seed,
        step,
        out,
        rng: new Rng(cfg.seed).fold(`host/${stage}`).fold(step),
        dataset: (name) => loadDataset(name),
      });
      for (const name of plan.hosts) {
        const st = plan.stages[name];
        const ins: Record<string, HostArray> = {};
        for (const [port, ref] of Object.entries(st.inputs)) ins[port] = host.get(`${ref.stage}.${ref.port}`)!;
        const outs = await st.def.host!(hctx(name), st.params, ins);
        for (const [port, v] of Object.entries(outs)) host.set(`${name}.${port}`, v);
      }
      const m = await sched.runPhases(step, host);
      metrics = { ...metrics, ...m };
      const bad = Object.entries(m).find(([, v]) => !Number.isFinite(v));
      if (bad) {
        progress.finish();
        print(
          `step ${step}: ${bad[0]} is ${bad[1]}; stopping. ` +
            (lastCheckpoint
              ? `The last good checkpoint is ${lastCheckpoint} (continue with --resume).`
              : "No checkpoint was written."),
        );
        return 1;
      }
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
          readModel: (model, o) => sched.readModel(model, o?.ema),
          updateEma: (model, decay) => sched.updateEma(model, decay),
          saveCheckpoint: (k) => save(step, k),
          log: (l) => progress.log(l),
        };
        await st.def.effect!(ctx, st.params, ins);
      }
      if (step % cfg.log_every === 0 || step === cfg.steps) {
        await Deno.writeTextFile(metricsFile, JSON.stringify({ step, ...metrics }) + "\n", { append: true });
      }
      progress.update(step, m);
      if (interrupted && step < cfg.steps) {
        progress.finish();
        const dir = await save(step, keep);
        print(`interrupted at step ${step}: saved ${dir}; continue with --resume`);
        return 130;
      }
    }
    progress.finish();
    print(`done: ${cfg.steps} steps; outputs in ${out}/ (metrics.jsonl${lastCheckpoint ? `, checkpoints/` : ""})`);
    return 0;
  } finally {
    try {
      Deno.removeSignalListener("SIGINT", onSigint);
    } catch {
      // not added
    }
    await sched.dispose();
    await executor.close();
  }
}

async function truncateMetrics(file: string, step: number): Promise<void> {
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return;
  }
  const keep = text.split("\n").filter((l) => l.trim() && JSON.parse(l).step <= step);
  const tmp = `${file}.tmp`;
  await Deno.writeTextFile(tmp, keep.map((l) => l + "\n").join(""));
  await Deno.rename(tmp, file);
}
