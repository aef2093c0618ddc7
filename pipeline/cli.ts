/**
 * The command line: `run <config> [--steps N] [--out DIR] [--executor E] [--set path=value]… [--resume] [--fresh]
 * [--dry-run]`. Config problems print one `file:line:col: message` line each and exit 2 before anything is written.
 *
 * Users with their own stages write a script that registers them and calls `runCli(Deno.args)`.
 *
 * @module
 */
import { Command, CommanderError, Option } from "commander";
import { ConfigError, loadConfig } from "./config.ts";
import { fmtBytes, type Plan, planPipeline } from "./plan.ts";
import { RunError, runPipeline } from "./run.ts";
import { describeCadence } from "./cadence.ts";
import { modelChunks, tracePhase } from "./trace_phase.ts";
import { knownPackLimit, webGpuPackLimit } from "../engine/executors/executor.ts";
import type { Layout } from "../engine/pack.ts";
import { fmtSpec } from "./stage.ts";

/** The command line's options, as commander parses them. */
interface CliOptions {
  steps?: string;
  out?: string;
  executor?: string;
  set: string[];
  resume?: boolean;
  fresh?: boolean;
  dryRun?: boolean;
}

/** Prints one line. */
export type Print = (s: string) => void;

/** Runs the CLI on `argv` (without the program name); returns the exit code. */
export async function runCli(argv: readonly string[], print: Print = (s) => console.log(s)): Promise<number> {
  const err = (s: string) => console.error(s);
  let code = 0;
  const program = new Command()
    .name("deno task run")
    .description("Runs a YAML pipeline: validates it, compiles its update phases, trains, checkpoints.")
    .exitOverride()
    .configureOutput({ writeOut: (s) => print(s.trimEnd()), writeErr: (s) => err(s.trimEnd()) })
    .argument("<config>", "the pipeline's YAML file")
    .option("--steps <n>", "number of training steps (run.steps)")
    .option("--out <dir>", "output folder (run.out)")
    .addOption(
      new Option("--executor <name>", "where compiled graphs run (run.executor)").choices([
        "cpu",
        "wasm",
        "webgpu",
        "auto",
        "reference",
      ]),
    )
    .option(
      "--set <path=value>",
      "override any config value, e.g. --set stages.opt.params.lr=1e-3 (repeatable)",
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option("--resume", "continue from the latest checkpoint in the output folder")
    .option("--fresh", "start over in an output folder that already has checkpoints (deletes them)")
    .option("--dry-run", "validate, print the DAG and the execution plan, and exit")
    .action(async (file: string, o: CliOptions) => {
      code = await runConfigFile(file, o, print, err);
    });
  try {
    await program.parseAsync([...argv], { from: "user" });
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    throw e;
  }
  return code;
}

/** Reads, plans and runs (or prints, with `--dry-run`) one config; the exit code. Bad input is one line, exit 2. */
async function runConfigFile(file: string, o: CliOptions, print: Print, err: Print): Promise<number> {
  // Named in errors as the user typed them: "--steps abc", not the "--set run.steps=abc" it becomes.
  const sets: (string | { set: string; from: string })[] = [...o.set];
  if (o.steps !== undefined) sets.push({ set: `run.steps=${o.steps}`, from: `--steps ${o.steps}` });
  if (o.out !== undefined) sets.push({ set: `run.out=${JSON.stringify(o.out)}`, from: `--out ${o.out}` });
  if (o.executor !== undefined) sets.push({ set: `run.executor=${o.executor}`, from: `--executor ${o.executor}` });
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    err(`${file}: cannot read the config (${why})`);
    return 2;
  }
  try {
    const loaded = loadConfig(file, text, sets);
    const { steps } = loaded.config.run;
    // Tracing while planning makes what tracing throws a config error, before a run writes anything.
    const plan = planPipeline(loaded, { tracer: (p, phase) => tracePhase(p, phase, steps) });
    for (const w of plan.warnings) err(w);
    if (o.dryRun) {
      printPlan(loaded.config.run, plan, print);
      return 0;
    }
    return await runPipeline(loaded, plan, { resume: o.resume, fresh: o.fresh, print });
  } catch (e) {
    if (e instanceof ConfigError) {
      for (const line of e.lines) err(line);
      return 2;
    }
    if (e instanceof RunError) {
      err(e.message);
      return e.code;
    }
    if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
      const msg = (e as Error).message.split("\n")[0];
      // The hint fits only files outside the task's --allow-read=. --allow-write=.; other denials say their own.
      const hint = /(read|write) access to/.test(msg)
        ? " (the task may only read and write inside the project; use --out inside it)"
        : "";
      err(`permission denied: ${msg}${hint}`);
      return 2;
    }
    throw e;
  }
}

/** Prints the DAG and the execution plan. */
function printPlan(
  run: { executor: string; steps: number; out?: string; seed: number },
  plan: Plan,
  print: (s: string) => void,
) {
  // Before any line, so that a parameter over the limit is the run's one line, as it is in a run.
  const packing = dryRunPacking(plan, run.executor);
  const split = Object.values(packing.chunks).some((c) => c.length > 1);
  print(
    `pipeline: ${plan.order.length} stages, ${run.steps} steps, seed ${run.seed}, executor ${run.executor}, out ${run.out}`,
  );
  print("DAG (topological order):");
  for (const n of plan.order) {
    const s = plan.stages[n];
    const ins = Object.entries(s.inputs).map(([p, r]) => `${p}←${r.stage}.${r.port}`).join(", ");
    const outs = Object.entries(s.outputs).map(([p, t]) => `${p}:${fmtSpec(t)}`).join(", ");
    print(`  ${n} [${s.def.kind}, ${s.def.role}]${ins ? ` in(${ins})` : ""}${outs ? ` out(${outs})` : ""}`);
  }
  print("plan, each step:");
  let i = 1;
  for (const h of plan.hosts) print(`  ${i++}. host: ${h}`);
  for (const p of plan.phases) {
    const nodes = split
      ? tracePhase(plan, p, run.steps, packing.chunks).graph.nodes.length
      : plan.traced?.[p.optimizer] ?? tracePhase(plan, p, run.steps).graph.nodes.length;
    const every = p.every === 1 ? "every step" : `every ${p.every} steps`;
    print(
      `  ${i++}. compiled graph "${p.optimizer}" on ${run.executor} (${every}): stages ${p.stages.join(" → ")}; ` +
        `updates ${p.updates.join(", ")}${p.reads.length ? `; reads ${p.reads.join(", ")}` : ""}; ${nodes} nodes`,
    );
  }
  for (const line of packing.lines) print(line);
  for (const e of plan.effects) {
    const s = plan.stages[e];
    print(`  ${i++}. effect: ${e} [${s.def.kind}] ${describeCadence(s.cadence)}`);
  }
  for (const [name, info] of Object.entries(plan.models)) {
    const l = info.lora;
    if (!l) continue;
    const n = Object.keys(l.targets).length, adapters = plan.memory.models[name].params.toLocaleString("en-US");
    print(
      `LoRA: model "${name}" trains rank-${l.rank} adapters (alpha ${l.alpha}) on ${n} weight${n === 1 ? "" : "s"} ` +
        `of "${l.base}", frozen and held once: ${adapters} parameters`,
    );
  }
  const m = plan.memory;
  const models = Object.values(m.models).reduce((a, x) => a + x.bytes, 0);
  const machine = Number.isFinite(m.machine) ? ` of this machine's ${fmtBytes(m.machine)}` : "";
  print(
    `memory: about ${fmtBytes(m.total)}${machine} (models ${fmtBytes(models)}, one step's tensors ${
      fmtBytes(m.step)
    }, from the ${m.basis === "traced" ? "traced graphs" : "port types"})`,
  );
}

/** WebGPU's default buffer limits (the spec's), which an adapter may raise: the smallest packing limit webgpu has. */
const WEBGPU_DEFAULT_PACK_LIMIT = webGpuPackLimit({ maxBufferSize: 2 ** 28, maxStorageBufferBindingSize: 2 ** 27 });

/**
 * The models' packing on `executor` as far as a dry run knows it without creating the executor (`knownPackLimit`;
 * `ADD_PACK_LIMIT` applies), and a line per model that it splits — or that webgpu may split, whose limit is its
 * adapter's: the node counts are then those of one buffer per model.
 */
function dryRunPacking(plan: Plan, executor: string): { chunks: Record<string, Layout[]>; lines: string[] } {
  const limit = knownPackLimit(executor);
  let chunks: Record<string, Layout[]>;
  try {
    chunks = modelChunks(plan, limit ?? Infinity, `the ${executor} executor`);
  } catch (e) {
    throw new RunError((e as Error).message);
  }
  const n = (x: number) => x.toLocaleString("en-US");
  const lines: string[] = [];
  for (const [name, c] of Object.entries(chunks)) {
    const total = c.reduce((a, l) => a + l.total, 0);
    if (c.length > 1) {
      lines.push(
        `packing: model "${name}" (${n(total)} parameters) in ${c.length} buffers of at most ${n(limit!)} ` +
          `elements on ${executor}`,
      );
    } else if (limit === null && total > WEBGPU_DEFAULT_PACK_LIMIT) {
      lines.push(
        `packing: model "${name}" (${n(total)} parameters) splits on webgpu where the adapter's buffer limit is ` +
          `under its size (at WebGPU's default limits: ${Math.ceil(total / WEBGPU_DEFAULT_PACK_LIMIT)} buffers or ` +
          `more); the node counts above are for one buffer`,
      );
    }
  }
  return { chunks, lines };
}

export { runCommand } from "../ship/run_command.ts";
