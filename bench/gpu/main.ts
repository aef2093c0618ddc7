/**
 * The GPU benchmark: on a lent GPU machine (through bench/gpu/run.sh, which unpacks what bench/gpu/pack.sh carried),
 * it checks that `navigator.gpu`'s adapter is the real GPU, records its limits and the largest model whose packed
 * parameters fit one buffer, then runs on `webgpu` the block step (bench/block_step.ts), the teacher UNet step
 * (bench/teacher_step.ts) and `configs/add.yaml` for 200 steps, the first two against their PyTorch peers on the same
 * machine (CUDA where torch sees one), and writes one JSON of results.
 *
 *   deno run -A bench/gpu/main.ts [--out out/gpu] [--work out/gpu-work] [--quick] [--allow-software] [--add-steps 200]
 *
 * `--out` gets results.json and one log per workload (few files: the device tool brings back at most eight); the
 * run's own folder and its cache (the bank of teacher pairs) go under `--work`.
 *
 * `--quick` (a few steps, a small bank of teacher pairs) with `--allow-software` is the local half: the same script end
 * to end on a software adapter (llvmpipe), where a full run would take hours. Without `--allow-software` a software
 * adapter is an error, written into the results so that a run that measured the wrong device says so.
 *
 * @module
 */
import { hasHardwareGpu } from "../../engine/executors/auto.ts";
import { findTimeLine, type RunTime } from "../time_line.ts";
import { adapterReport, largestPackedBuffer, modelFits } from "./limits.ts";
import { parseResultLines, type ResultLine } from "./results.ts";

const args = Deno.args;
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const QUICK = args.includes("--quick"), ALLOW_SOFTWARE = args.includes("--allow-software");
const OUT = flag("out") ?? "out/gpu", WORK = flag("work") ?? "out/gpu-work";
const ADD_STEPS = Number(flag("add-steps") ?? (QUICK ? 2 : 200));
const root = new URL("../../", import.meta.url).pathname;
/** Extra `deno run` flags for the child runs: run.sh's offline node_modules set-up (`--config …`), none here. */
const DENO_ARGS = (Deno.env.get("ADD_GPU_DENO_ARGS") ?? "").split(" ").filter(Boolean);

/** One child benchmark's outcome: its RESULT lines, its run time where it is a run, its wall time, its exit. */
interface Workload {
  command: string;
  ok: boolean;
  wall_s: number;
  results: ResultLine[];
  run?: RunTime | null;
  log: string;
}

/**
 * The Python that holds torch and torch's device there: `ADD_TORCH_PYTHON`, else `python3` (the GPU machine's own),
 * else Debian's; `cuda` where that torch sees a GPU. Null when none has torch.
 */
async function findTorch(): Promise<{ python: string; device: string } | null> {
  const env = Deno.env.get("ADD_TORCH_PYTHON");
  for (const python of env ? [env] : ["python3", "/usr/bin/python3"]) {
    try {
      const r = await new Deno.Command(python, {
        args: ["-c", "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"],
        stdout: "piped",
        stderr: "null",
      }).output();
      if (r.success) return { python, device: new TextDecoder().decode(r.stdout).trim() };
    } catch {
      // not on PATH: the next one
    }
  }
  return null;
}

/** Runs `deno run -A <script> <argv>` from the repository root, echoing its output and keeping it in `<OUT>/<name>.log`. */
async function runChild(name: string, script: string, argv: string[], env: Record<string, string>): Promise<Workload> {
  const command = [Deno.execPath(), "run", "-A", ...DENO_ARGS, script, ...argv];
  console.log(`\n== ${name}: ${command.slice(1).join(" ")}`);
  const t0 = performance.now();
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const chunks: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, to: (s: string) => void) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      chunks.push(text);
      to(text);
    }
  };
  const encoder = new TextEncoder();
  await Promise.all([
    pump(child.stdout, (s) => Deno.stdout.writeSync(encoder.encode(s))),
    pump(child.stderr, (s) => Deno.stderr.writeSync(encoder.encode(s))),
  ]);
  const status = await child.status;
  const log = chunks.join("");
  await Deno.writeTextFile(`${OUT}/${name}.log`, log);
  return {
    command: command.slice(1).join(" "),
    ok: status.success,
    wall_s: (performance.now() - t0) / 1000,
    results: parseResultLines(log),
    log: `${OUT}/${name}.log`,
  };
}

await Deno.mkdir(OUT, { recursive: true });
const adapter = await adapterReport();
const hardware = await hasHardwareGpu();
const torch = await findTorch();
const torchEnv: Record<string, string> = torch
  ? { ADD_TORCH_PYTHON: torch.python, ADD_TORCH_DEVICE: torch.device }
  : {};
const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  quick: QUICK,
  host: { cpus: navigator.hardwareConcurrency, os: Deno.build.os, deno: Deno.version.deno },
  adapter,
  hardware_adapter: hardware,
  torch,
  workloads: {} as Record<string, Workload>,
};
const write = () => Deno.writeTextFile(`${OUT}/results.json`, JSON.stringify(results, null, 2) + "\n");

if (adapter) {
  const limits = {
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  };
  // A model larger than one buffer is split into several (engine/pack.ts chunkLayout): one buffer bounds the largest
  // parameter, memory the model (WebGPU does not report the GPU's memory, so that bound is not computed here).
  results.largest_packed_buffer_fp32_params = largestPackedBuffer(limits);
  results.largest_model = "bounded by GPU memory, not one buffer: each model packs into buffers of at most the above";
  results.models_pack = modelFits(limits);
  console.log(`adapter: ${JSON.stringify({ ...adapter, limits: undefined })}`);
  console.log(
    `buffer limits: ${JSON.stringify(limits)}; one packed buffer holds ${results.largest_packed_buffer_fp32_params} ` +
      `fp32 parameters (the largest parameter a model may have; a model above it splits into several)`,
  );
  console.log(`models (largest parameter fits, buffers at least): ${JSON.stringify(results.models_pack)}`);
}
if (!adapter || (!hardware && !ALLOW_SOFTWARE)) {
  results.error = adapter
    ? "navigator.gpu's adapter is a software one (llvmpipe or similar), not the GPU"
    : "no navigator.gpu adapter";
  await write();
  console.error(`bench/gpu: ${results.error}; results in ${OUT}/results.json`);
  Deno.exit(1);
}

const workloads = results.workloads as Record<string, Workload>;
/** A benchmark that exits 0 but whose webgpu side failed (it prints no RESULT for it) has not measured anything. */
const measured = (w: Workload) => ({ ...w, ok: w.ok && w.results.some((r) => r.fields.executor === "webgpu") });
const steps = QUICK ? ["--steps", "2", "--warmup", "1"] : ["--steps", "20", "--warmup", "3"];
const blockArgs = ["--executors", "webgpu", ...steps];
workloads.block_step = measured(await runChild("block_step", "bench/block_step.ts", blockArgs, torchEnv));
await write();
const teacherArgs = ["--executors", "webgpu", "--steps", QUICK ? "2" : "5", "--warmup", QUICK ? "1" : "2"];
if (QUICK) teacherArgs.push("--batch", "4");
workloads.teacher_step = measured(await runChild("teacher_step", "bench/teacher_step.ts", teacherArgs, torchEnv));
await write();

const off = ["report", "progress_eval", "preview", "plot", "ckpt"].flatMap((s) => ["--set", `stages.${s}=null`]);
// Locally the bank of teacher pairs shrinks to what a software adapter draws in a minute; on the GPU it is the run's.
const small = QUICK ? ["--set", "stages.pairs.params.pairs=16", "--set", "stages.pairs.params.steps=2"] : [];
const addArgs = ["configs/add.yaml", "--out", `${WORK}/add`, "--steps", String(ADD_STEPS), "--executor", "webgpu"];
const add = await runChild("add", "main.ts", [...addArgs, ...off, ...small, "--set", `run.cache=${WORK}/cache`], {});
add.run = findTimeLine(await Deno.readTextFile(add.log));
workloads.add = { ...add, ok: add.ok && add.run !== null };
await write();

const failed = Object.entries(workloads).filter(([, w]) => !w.ok).map(([n]) => n);
console.log(`\nresults: ${OUT}/results.json${failed.length ? ` (failed: ${failed.join(", ")})` : ""}`);
Deno.exit(failed.length ? 1 : 0);
