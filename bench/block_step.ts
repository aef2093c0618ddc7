/**
 * `deno task bench`: times the prototype's block training step on every executor and the same step in PyTorch CPU
 * (Debian's python3-torch) in the same run, then the session start-up time of a graph of more than 10,000 nodes.
 *
 * Then a ROOFLINE line: the FLOPs of the step's convolutions over the cpu executor's measured GEMM rate, the least
 * time the step could take on this machine, and the ratio that would give against the peer.
 *
 * Ends with one line per executor:
 *   RESULT block_step executor=<name> ms=<median> torch_ms=<median> ratio=<ms/torch_ms>
 *
 * Flags: --executors cpu,wasm,webgpu  --steps N  --warmup N
 */
import { createExecutor } from "../engine/executors/auto.ts";
import type { ExecutorName } from "../engine/executors/executor.ts";
import { grad } from "../engine/grad.ts";
import { add } from "../engine/math.ts";
import { mse } from "../engine/nn.ts";
import { adamw } from "../engine/optim.ts";
import { layoutOf, pack, packHost, unpack } from "../engine/pack.ts";
import { StepProgram } from "../engine/program.ts";
import { Rng } from "../engine/rng.ts";
import { Trace } from "../engine/tensor.ts";
import { gemmGflops } from "./gemm.ts";
import { fastestPeer } from "./torch_peer.ts";
import { blockForward, blockShapes, type BlockSize, blockStepGraph } from "./block.ts";

const args = new Map<string, string>();
for (let i = 0; i < Deno.args.length; i += 2) args.set(Deno.args[i].replace(/^--/, ""), Deno.args[i + 1]);
const SIZE: BlockSize = { batch: 8, channels: 32, size: 32 };
const executors = (args.get("executors") ?? "cpu,wasm,webgpu").split(",") as ExecutorName[];
const steps = Number(args.get("steps") ?? 30), warmup = Number(args.get("warmup") ?? 3);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function initialParams(rng: Rng) {
  const shapes = blockShapes(SIZE.channels);
  const layout = layoutOf(shapes);
  const arrays: Record<string, Float32Array> = {};
  for (const e of layout.entries) {
    const fanIn = e.shape.length === 4 ? e.shape[1] * 9 : e.shape.length === 2 ? e.shape[1] : 0;
    arrays[e.path] = fanIn
      ? rng.fold(e.path).normal(e.size).map((v) => v / Math.sqrt(fanIn))
      : new Float32Array(e.size).fill(e.path === "gn.w" ? 1 : 0);
  }
  return packHost(arrays, layout);
}

async function timeExecutor(name: ExecutorName, n: number): Promise<{ ms: number; nodes: number; loss: number }> {
  const ex = await createExecutor(name);
  try {
    const { graph, layout } = blockStepGraph(SIZE);
    const prog = await StepProgram.create(ex, graph, { state: { params: "params", m: "m", v: "v" } });
    const rng = new Rng(0);
    prog.setState("params", initialParams(rng));
    prog.setState("m", new Float32Array(layout.total));
    prog.setState("v", new Float32Array(layout.total));
    const numel = SIZE.batch * SIZE.channels * SIZE.size * SIZE.size;
    const x = rng.fold("x").normal(numel), y = rng.fold("y").normal(numel);
    const times: number[] = [];
    let loss = NaN;
    for (let s = 1; s <= warmup + n; s++) {
      const t0 = performance.now();
      loss = (await prog.run({ x, y, step: Float32Array.of(s) }, ["loss"])).loss[0];
      if (s > warmup) times.push(performance.now() - t0);
    }
    await prog.dispose();
    return { ms: median(times), nodes: graph.nodes.length, loss };
  } finally {
    await ex.close();
  }
}

/** The fastest PyTorch peer of the block step over the BLAS set-ups present (bench/torch_peer.ts). */
async function torchPeers(): Promise<number | null> {
  const script = new URL("./block_step_torch.py", import.meta.url).pathname;
  const { batch, channels, size } = SIZE;
  const r = await fastestPeer("PyTorch CPU peer", script, [batch, channels, size, steps, warmup].map(String));
  return r?.ms ?? null;
}

/** A deep stack of blocks (forward, backward and Adam) to measure session start-up on a graph of ≥ 10k nodes. */
async function startup(name: ExecutorName): Promise<{ nodes: number; ms: number }> {
  const depth = 56;
  const shapes: Record<string, number[]> = {};
  for (let d = 0; d < depth; d++) for (const [k, v] of Object.entries(blockShapes(16))) shapes[`b${d}.${k}`] = v;
  const layout = layoutOf(shapes);
  const tr = new Trace();
  const flat = tr.input("params", [layout.total]), m = tr.input("m", [layout.total]), v = tr.input("v", [layout.total]);
  const x = tr.input("x", [2, 16, 8, 8]);
  const p = unpack(flat, layout);
  let h = x;
  for (let d = 0; d < depth; d++) {
    const pd: typeof p = {};
    for (const k of Object.keys(blockShapes(16))) pd[k] = p[`b${d}.${k}`];
    h = add(h, blockForward(pd, h));
  }
  const loss = mse(h, x);
  const upd = adamw(flat, pack(grad(loss, p), layout), m, v, tr.input("step", []), { lr: 1e-3 });
  const graph = tr.build({ loss, params: upd.p, m: upd.m, v: upd.v });
  const ex = await createExecutor(name);
  try {
    const t0 = performance.now();
    const prep = await ex.prepare(graph, { resident: ["params", "m", "v"] });
    const ms = performance.now() - t0;
    await prep.dispose();
    return { nodes: graph.nodes.length, ms };
  } finally {
    await ex.close();
  }
}

/** FLOPs of the step's convolutions: 2 forward, the second's input gradient, both weight gradients. */
function convFlops(s: BlockSize): number {
  const one = 2 * s.batch * s.size * s.size * (2 * s.channels) * s.channels * 9;
  return 5 * one;
}

const torch = await torchPeers();
console.log(
  torch === null
    ? "PyTorch peer: /usr/bin/python3 with torch not found (apt-get install python3-torch); torch_ms=NaN"
    : `PyTorch CPU peer: ${torch.toFixed(2)} ms/step (the fastest set-up above)`,
);

let roofline = "";
if (executors.includes("cpu")) {
  // The target ratio is only reachable if the step can run that fast at all: its convolutions alone need
  // convFlops at the best GEMM rate onnxruntime reaches here. Measured first: the wasm and webgpu runtimes leave
  // threads behind that would slow it.
  const gflops = await gemmGflops(steps), flops = convFlops(SIZE);
  const floor = flops / (gflops * 1e9) * 1000;
  roofline = `ROOFLINE conv_gflop=${(flops / 1e9).toFixed(3)} cpu_gemm_gflops=${gflops.toFixed(1)} floor_ms=${
    floor.toFixed(2)
  } floor_ratio=${torch === null ? "NaN" : (floor / torch).toFixed(3)}`;
}
const results: string[] = [];
for (const name of executors) {
  const n = name === "webgpu" || name === "wasm" ? Math.min(steps, 10) : steps;
  try {
    const r = await timeExecutor(name, n);
    console.log(
      `${name}: ${r.ms.toFixed(2)} ms/step median of ${n} (graph ${r.nodes} nodes, loss ${r.loss.toFixed(4)})`,
    );
    const t = torch ?? NaN;
    results.push(
      `RESULT block_step executor=${name} ms=${r.ms.toFixed(2)} torch_ms=${t.toFixed(2)} ratio=${
        (r.ms / t).toFixed(3)
      }`,
    );
  } catch (e) {
    console.log(`${name}: failed: ${(e as Error).message}`);
  }
}
for (const name of executors) {
  const s = await startup(name);
  console.log(`STARTUP executor=${name} nodes=${s.nodes} ms=${s.ms.toFixed(0)}`);
}
if (roofline) console.log(roofline);
for (const line of results) console.log(line);
