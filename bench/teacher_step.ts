/**
 * `deno task bench:teacher` (and the second half of `deno task bench`): one training step of the shipped teacher's
 * UNet — `configs/teacher.yaml`'s network, batch 32, v-target MSE, AdamW — on each executor, against the same network
 * written in PyTorch CPU (bench/teacher_step_torch.py) with the same weights (models/teacher_next) and the same batch.
 * Before any time counts, the losses of the first steps must agree to 1e-4 (relative), so both time the same step.
 *
 * Ends with a ROOFLINE line (the step's contraction FLOPs at the cpu executor's 1024³ GEMM rate, the least time the
 * step could take here) and one line per executor:
 *   RESULT teacher_step executor=<name> ms=<median> torch_ms=<median> ratio=<ms/torch_ms> roofline_share=<floor/ms>
 *
 * Flags: --executors cpu,wasm  --steps N  --warmup N  --batch N
 */
import { parse as parseYaml } from "yaml";
import { createExecutor } from "../engine/executors/auto.ts";
import type { ExecutorName } from "../engine/executors/executor.ts";
import type { Graph } from "../engine/ir.ts";
import { grad } from "../engine/grad.ts";
import { mse } from "../engine/nn.ts";
import { adamw } from "../engine/optim.ts";
import { type Layout, layoutOf, pack, packHost, unpack } from "../engine/pack.ts";
import { StepProgram } from "../engine/program.ts";
import { Rng } from "../engine/rng.ts";
import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { Trace } from "../engine/tensor.ts";
import { unet, unetForward, type UNetParams } from "../models/unet.ts";
import { contractionFlops } from "./flops.ts";
import { gemmGflops } from "./gemm.ts";
import { fastestPeer } from "./torch_peer.ts";

const args = new Map<string, string>();
for (let i = 0; i < Deno.args.length; i += 2) args.set(Deno.args[i].replace(/^--/, ""), Deno.args[i + 1]);
const executors = (args.get("executors") ?? "cpu,wasm").split(",") as ExecutorName[];
const steps = Number(args.get("steps") ?? 10), warmup = Number(args.get("warmup") ?? 3);
const BATCH = Number(args.get("batch") ?? 32), TOKENS = 32, LR = 4e-4, WEIGHT_DECAY = 0.01;
const root = new URL("../", import.meta.url).pathname;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const config = parseYaml(await Deno.readTextFile(`${root}configs/teacher.yaml`));
const net: UNetParams = unet.params.parse(config.models.unet.params);
const layout: Layout = layoutOf(unet.shapes(net));
const weights = await readSafetensors(`${root}models/teacher_next/unet.safetensors`);
const params = packHost(
  Object.fromEntries(Object.entries(weights.tensors).map(([k, t]) => [k, toFloat32(t)])),
  layout,
);

/** The batch: noisy images, timesteps, text states as wide as use-lite's, v-targets; fixed for every step. */
function batch() {
  const rng = new Rng(7), s = net.size, c = net.in_channels;
  return {
    x: rng.fold("x").normal(BATCH * c * s * s),
    t: Float32Array.from({ length: BATCH }, (_, i) => Math.floor((i * 997 + 13) % 1000)),
    tokens: rng.fold("tokens").normal(BATCH * TOKENS * net.context_dim),
    pooled: rng.fold("pooled").normal(BATCH * net.pooled_dim).map((v) => v / Math.sqrt(net.pooled_dim)),
    target: rng.fold("target").normal(BATCH * c * s * s),
  };
}

function stepGraph(): Graph {
  const tr = new Trace(), s = net.size, c = net.in_channels;
  const flat = tr.input("params", [layout.total]);
  const m = tr.input("m", [layout.total]), v = tr.input("v", [layout.total]);
  const x = tr.input("x", [BATCH, c, s, s]), t = tr.input("t", [BATCH]);
  const tokens = tr.input("tokens", [BATCH, TOKENS, net.context_dim]);
  const pooled = tr.input("pooled", [BATCH, net.pooled_dim]);
  const target = tr.input("target", [BATCH, c, s, s]);
  const p = unpack(flat, layout);
  const loss = mse(unetForward(net, p, x, t, tokens, pooled), target);
  const upd = adamw(flat, pack(grad(loss, p), layout), m, v, tr.input("step", []), {
    lr: LR,
    weightDecay: WEIGHT_DECAY,
  });
  return tr.build({ loss, params: upd.p, m: upd.m, v: upd.v });
}

async function timeExecutor(name: ExecutorName, graph: Graph, n: number) {
  const ex = await createExecutor(name);
  try {
    const prog = await StepProgram.create(ex, graph, { state: { params: "params", m: "m", v: "v" } });
    prog.setState("params", params);
    prog.setState("m", new Float32Array(layout.total));
    prog.setState("v", new Float32Array(layout.total));
    const b = batch(), losses: number[] = [], times: number[] = [];
    for (let s = 1; s <= warmup + n; s++) {
      const t0 = performance.now();
      losses.push((await prog.run({ ...b, step: Float32Array.of(s) }, ["loss"])).loss[0]);
      if (s > warmup) times.push(performance.now() - t0);
    }
    await prog.dispose();
    return { ms: median(times), losses };
  } finally {
    await ex.close();
  }
}

/** Writes the weights, the batch and the layout where the Python peer reads them. */
async function writePeerInputs(dir: string) {
  const b = batch();
  const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  await Deno.writeFile(`${dir}/params.bin`, bytes(params));
  for (const [k, a] of Object.entries(b)) await Deno.writeFile(`${dir}/${k}.bin`, bytes(a));
  const spec = {
    net,
    batch: BATCH,
    tokens: TOKENS,
    lr: LR,
    weight_decay: WEIGHT_DECAY,
    layout: layout.entries.map((e) => ({ path: e.path, shape: e.shape, offset: e.offset })),
  };
  await Deno.writeTextFile(`${dir}/spec.json`, JSON.stringify(spec));
}

const graph = stepGraph();
const flops = contractionFlops(graph);
console.log(
  `teacher UNet: ${
    layout.total.toLocaleString("en")
  } parameters, batch ${BATCH}, step graph ${graph.nodes.length} nodes, ` +
    `${(flops / 1e9).toFixed(2)} GFLOP of contractions`,
);
/** The PyTorch peer's median and its first losses, over the BLAS set-ups present; null without python3-torch. */
async function peer(): Promise<{ ms: number; losses: number[] } | null> {
  const dir = await Deno.makeTempDir({ prefix: "teacher_step_" });
  try {
    await writePeerInputs(dir);
    const script = new URL("./teacher_step_torch.py", import.meta.url).pathname;
    const r = await fastestPeer("PyTorch CPU peer", script, [dir, String(steps), String(warmup)]);
    return r && { ms: r.ms, losses: r.losses as number[] };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
const torch = await peer();
if (torch === null) console.log("PyTorch peer: /usr/bin/python3 with torch not found (apt-get install python3-torch)");

const gflops = executors.includes("cpu") ? await gemmGflops(10) : NaN;
const floorMs = flops / (gflops * 1e9) * 1000;
const results: string[] = [];
for (const name of executors) {
  const n = name === "cpu" ? steps : Math.min(steps, 3);
  try {
    const r = await timeExecutor(name, graph, n);
    if (torch) {
      const k = Math.min(warmup, torch.losses.length);
      for (let i = 0; i < k; i++) {
        const a = r.losses[i], b = torch.losses[i];
        if (Math.abs(a - b) > 1e-4 * Math.abs(b)) {
          throw new Error(`loss of step ${i + 1} is ${a} here and ${b} in PyTorch: not the same step`);
        }
      }
    }
    console.log(
      `${name}: ${r.ms.toFixed(1)} ms/step median of ${n} (losses ${r.losses.slice(0, 3).map((l) => l.toFixed(6))}` +
        `${torch ? `; PyTorch ${torch.losses.slice(0, 3).map((l) => l.toFixed(6))}` : ""})`,
    );
    const t = torch?.ms ?? NaN;
    results.push(
      `RESULT teacher_step executor=${name} ms=${r.ms.toFixed(1)} torch_ms=${t.toFixed(1)} ratio=${
        (r.ms / t).toFixed(3)
      } roofline_share=${(floorMs / r.ms).toFixed(3)}`,
    );
  } catch (e) {
    console.log(`${name}: failed: ${(e as Error).message}`);
  }
}
console.log(
  `ROOFLINE teacher_step gflop=${(flops / 1e9).toFixed(2)} cpu_gemm_gflops=${gflops.toFixed(1)} floor_ms=${
    floorMs.toFixed(1)
  } floor_ratio=${torch ? (floorMs / torch.ms).toFixed(3) : "NaN"}`,
);
for (const line of results) console.log(line);
