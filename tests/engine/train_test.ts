// A small conv net trained on a toy task reaches a loss threshold on every executor; cpu and reference agree step
// by step; on webgpu the number of live buffers stays flat while state is fed back for 200 steps.
import { createExecutor } from "../../engine/executors/auto.ts";
import type { ExecutorName } from "../../engine/executors/executor.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { grad } from "../../engine/grad.ts";
import type { Graph } from "../../engine/ir.ts";
import { add, tanh } from "../../engine/math.ts";
import { conv, mse, silu } from "../../engine/nn.ts";
import { conv2d } from "../../engine/ops.ts";
import { adamw } from "../../engine/optim.ts";
import { type Layout, layoutOf, pack, packHost, unpack } from "../../engine/pack.ts";
import { StepProgram } from "../../engine/program.ts";
import { Rng } from "../../engine/rng.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";

const B = 8, H = 8;
const SHAPES = {
  "c1.w": [8, 1, 3, 3],
  "c1.b": [8],
  "c2.w": [8, 2, 3, 3], // grouped: 8 → 8 in 4 groups
  "c2.b": [8],
  "c3.w": [1, 8, 3, 3],
  "c3.b": [1],
};

function net(p: Record<string, Tensor>, x: Tensor): Tensor {
  const h = silu(conv(x, p["c1.w"], p["c1.b"], { pad: 1 }));
  const h2 = add(h, silu(conv(h, p["c2.w"], p["c2.b"], { pad: 1, groups: 4 })));
  return conv(h2, p["c3.w"], p["c3.b"], { pad: 1 });
}

function stepGraph(): { graph: Graph; layout: Layout } {
  const layout = layoutOf(SHAPES);
  const tr = new Trace();
  const flat = tr.input("params", [layout.total]);
  const mm = tr.input("m", [layout.total]), vv = tr.input("v", [layout.total]);
  const step = tr.input("step", []);
  const x = tr.input("x", [B, 1, H, H]), y = tr.input("y", [B, 1, H, H]);
  const p = unpack(flat, layout);
  const loss = mse(net(p, x), y);
  const upd = adamw(flat, pack(grad(loss, p), layout), mm, vv, step, { lr: 1e-2 });
  return { graph: tr.build({ loss, params: upd.p, m: upd.m, v: upd.v }), layout };
}

/** The toy task: targets from a fixed hidden "teacher" filter, y = tanh(conv(x, k)). */
function task(rng: Rng) {
  const x = rng.fold("x").normal(B * H * H);
  const tr = new Trace();
  const xi = tr.input("x", [B, 1, H, H]);
  const k = tr.constant(rng.fold("k").normal(9).map((v) => v / 3), [1, 1, 3, 3]);
  const y = evaluate(tr.build({ y: tanh(conv2d(xi, k, { pad: 1 })) }), { x: { data: x, shape: [B, 1, H, H] } }).y;
  return { x, y: Float32Array.from(y) };
}

function initParams(layout: Layout, rng: Rng): Float32Array {
  const arrays: Record<string, Float32Array> = {};
  for (const e of layout.entries) {
    const fanIn = e.shape.length === 4 ? e.shape[1] * 9 : 1;
    arrays[e.path] = e.shape.length === 4
      ? rng.fold(e.path).normal(e.size).map((v) => v / Math.sqrt(fanIn))
      : new Float32Array(e.size);
  }
  return packHost(arrays, layout);
}

async function train(name: ExecutorName, steps: number, onStep?: (live: number) => void): Promise<number[]> {
  const ex = await createExecutor(name);
  try {
    const { graph, layout } = stepGraph();
    const prog = await StepProgram.create(ex, graph, { state: { params: "params", m: "m", v: "v" } });
    const rng = new Rng(42);
    const { x, y } = task(rng);
    prog.setState("params", initParams(layout, rng));
    prog.setState("m", new Float32Array(layout.total));
    prog.setState("v", new Float32Array(layout.total));
    const losses: number[] = [];
    for (let s = 1; s <= steps; s++) {
      const out = await prog.run({ x, y, step: Float32Array.of(s) }, ["loss"]);
      losses.push(out.loss[0]);
      onStep?.(ex.liveBuffers());
    }
    await prog.dispose();
    if (ex.liveBuffers() !== 0) throw new Error(`${name}: ${ex.liveBuffers()} buffers leaked after dispose`);
    return losses;
  } finally {
    await ex.close();
  }
}

const THRESHOLD = 0.02;
const opts = { sanitizeResources: false, sanitizeOps: false };

function assertLearns(name: string, losses: number[]) {
  const last = losses[losses.length - 1];
  if (!(last < THRESHOLD && last < losses[0] / 10)) {
    throw new Error(`${name}: loss ${losses[0].toFixed(4)} → ${last.toFixed(4)}, expected below ${THRESHOLD}`);
  }
}

Deno.test({
  name: "train: cpu reaches the threshold and matches the reference step by step",
  ...opts,
  fn: async () => {
    const cpu = await train("cpu", 300);
    const ref = await train("reference", 300);
    assertLearns("cpu", cpu);
    assertLearns("reference", ref);
    for (let i = 0; i < cpu.length; i++) {
      const err = Math.abs(cpu[i] - ref[i]) / Math.max(ref[i], 1e-3);
      // float32 against float64 through Adam: tight early, loose later as rounding compounds
      const tol = i < 50 ? 1e-4 : 2e-2;
      if (!(err <= tol)) throw new Error(`step ${i + 1}: cpu ${cpu[i]} vs reference ${ref[i]} (rel ${err})`);
    }
  },
});

Deno.test({
  name: "train: wasm reaches the threshold",
  ...opts,
  fn: async () => assertLearns("wasm", await train("wasm", 300)),
});

Deno.test({
  name: "train: webgpu reaches the threshold and live GPU buffers do not grow over 200+ steps",
  ...opts,
  fn: async () => {
    const live: number[] = [];
    const losses = await train("webgpu", 300, (n) => live.push(n));
    assertLearns("webgpu", losses);
    const first = live[9], grown = live.slice(10).filter((n) => n !== first);
    if (grown.length) throw new Error(`live buffers changed after step 10: ${first} → ${grown.slice(0, 5)}`);
  },
});
