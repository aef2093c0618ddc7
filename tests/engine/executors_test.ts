// Every executor against the float64 reference on fresh random inputs: primitives, large reductions, strided and
// grouped convolutions, and whole gradient graphs (first and second order).
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Executor } from "../../engine/executors/executor.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { grad, vjp } from "../../engine/grad.ts";
import type { Graph } from "../../engine/ir.ts";
import { graphInputs } from "../../engine/ir.ts";
import * as m from "../../engine/math.ts";
import * as nn from "../../engine/nn.ts";
import * as o from "../../engine/ops.ts";
import { Rng } from "../../engine/rng.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";

interface Case {
  name: string;
  build: (tr: Trace) => Record<string, Tensor>;
  /** Relative tolerance against the reference. */
  tol?: number;
  /** Skip on these executors (llvmpipe is slow; big cases run on cpu and wasm only). */
  heavy?: boolean;
}

const inp = (tr: Trace, name: string, shape: number[]) => tr.input(name, shape);

const CASES: Case[] = [
  {
    name: "softmax on each axis, attention, normalize and group norm, with gradients",
    build: (tr) => {
      const x = inp(tr, "x", [2, 5, 7]), w = inp(tr, "w", [2, 5, 7]);
      const q = inp(tr, "q", [2, 6, 8]), k = inp(tr, "k", [2, 4, 8]), v = inp(tr, "v", [2, 4, 8]);
      const att = nn.attention(q, k, v, 2);
      const [gq, gk] = vjp(o.sum(m.mul(att, att)), [q, k]);
      const [gn] = vjp(o.sum(m.mul(o.normalize(x, 1e-5), w)), [x]);
      const gnorm = nn.groupNorm(m.add(m.mul(inp(tr, "img", [2, 4, 3, 3]), 3), 1), 2);
      return { a0: o.softmax(x, 0), a1: m.mul(o.softmax(x, 1), w), a2: o.softmax(x, 2), att, gq, gk, gn, gnorm };
    },
  },
  {
    name: "unary ops",
    build: (tr) => {
      const x = inp(tr, "x", [3, 17]);
      const px = m.add(m.abs(x), 0.1);
      return {
        a: m.add(m.add(m.neg(m.exp(x)), m.log(px)), m.sqrt(px)),
        b: m.add(m.add(m.reciprocal(px), m.sin(x)), m.cos(x)),
        c: m.add(m.add(m.tanh(x), m.sigmoid(x)), m.add(m.erf(x), m.sign(x))),
      };
    },
  },
  {
    name: "binary ops, broadcasting, compare and where",
    build: (tr) => {
      const a = inp(tr, "a", [2, 3, 5]), b = inp(tr, "b", [3, 1]);
      return {
        s: m.add(m.sub(m.mul(a, b), m.div(a, m.add(m.abs(b), 1))), m.pow(m.add(m.abs(a), 0.5), b)),
        mx: m.add(m.maximum(a, b), m.minimum(a, b)),
        w: o.where(m.less(a, b), a, o.where(m.greater(a, 0.5), b, m.mul(a, 3))),
      };
    },
  },
  {
    name: "reductions with keepdims",
    build: (tr) => {
      const x = inp(tr, "x", [4, 5, 6]);
      return { s: o.sum(x, [0, 2], true), mx: o.max(x, [1]), mean: m.mean(x, 2) };
    },
  },
  {
    name: "sum and max over more than 65,535 elements",
    build: (tr) => {
      const x = inp(tr, "x", [300_000]);
      const y = inp(tr, "y", [3, 70_001]);
      return { s: o.sum(x), mx: o.max(x), r: o.sum(y, 1), mean: m.mean(m.mul(y, y)) };
    },
    tol: 2e-5,
  },
  {
    name: "batched matmul with broadcasting",
    build: (tr) => ({ c: o.matmul(inp(tr, "a", [2, 3, 7, 5]), inp(tr, "b", [3, 5, 4])) }),
  },
  {
    name: "conv2d stride 2, asymmetric padding, grouped and depthwise",
    build: (tr) => {
      const x = inp(tr, "x", [2, 4, 9, 8]);
      return {
        s2: o.conv2d(x, inp(tr, "w1", [6, 4, 3, 3]), { stride: 2, pad: [1, 0, 2, 1] }),
        g2: o.conv2d(x, inp(tr, "w2", [6, 2, 3, 3]), { groups: 2, pad: 1 }),
        dw: o.conv2d(x, inp(tr, "w3", [4, 1, 3, 3]), { groups: 4, stride: 2, pad: 1 }),
      };
    },
  },
  {
    name: "conv2d gradients (input and weight) for stride 2 and groups",
    build: (tr) => {
      const x = inp(tr, "x", [2, 4, 9, 8]);
      const w = inp(tr, "w", [6, 2, 3, 3]), wd = inp(tr, "wd", [4, 1, 3, 3]);
      const l = m.add(
        o.sum(m.square(o.conv2d(x, w, { groups: 2, stride: 2, pad: 1 }))),
        o.sum(m.square(o.conv2d(x, wd, { groups: 4, stride: 2, pad: [0, 1, 1, 0] }))),
      );
      const [gx, gw, gwd] = vjp(l, [x, w, wd]);
      return { gx, gw, gwd };
    },
    tol: 1e-4,
  },
  {
    name: "shape ops: reshape, transpose, slice, pad, concat, expand, gather, cast",
    build: (tr) => {
      const x = inp(tr, "x", [3, 4, 5]);
      const idx = tr.constant([2, 0, 1, 1], [2, 2], "i32");
      const t = o.transpose(o.reshape(x, [12, 5]), [1, 0]);
      return {
        t,
        sp: o.pad(o.slice(x, [1, 0, 2], [3, 3, 5]), [0, 1, 2], [1, 0, 0]),
        c: o.concat([x, m.mul(x, 2), o.sliceAxis(x, 2, 0, 1)], 2),
        e: o.expand(o.sliceAxis(x, 0, 0, 1), [2, 3, 4, 5]),
        g: o.gather(x, idx, 1),
        cast: m.add(o.cast(m.greater(x, 0), "f32"), o.cast(o.cast(m.mul(x, 3), "i32"), "f32")),
      };
    },
  },
  {
    name: "a conv block's gradient of a gradient (R1-style)",
    build: (tr) => {
      const x = inp(tr, "x", [2, 3, 8, 8]);
      const p = { w1: inp(tr, "w1", [8, 3, 3, 3]), w2: inp(tr, "w2", [4, 8, 3, 3]), gn: inp(tr, "gn", [8]) };
      const d = (xi: Tensor) =>
        o.sum(
          nn.leakyRelu(o.conv2d(nn.silu(nn.groupNorm(o.conv2d(xi, p.w1, { pad: 1 }), 4, p.gn)), p.w2, { stride: 2 })),
        );
      const [gx] = vjp(d(x), [x]);
      const r1 = o.sum(m.square(gx));
      return { r1, ...grad(r1, p) };
    },
    tol: 2e-4,
  },
];

function feedsFor(g: Graph, seed: number): Record<string, { data: Float32Array; shape: number[] }> {
  const rng = new Rng(seed);
  const feeds: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const i of graphInputs(g)) {
    feeds[i.name] = { data: rng.fold(i.name).normal(i.shape.reduce((a, b) => a * b, 1)), shape: i.shape };
  }
  return feeds;
}

async function compare(ex: Executor, c: Case) {
  const tr = new Trace();
  const graph = tr.build(c.build(tr));
  const feeds = feedsFor(graph, 7);
  const want = evaluate(graph, feeds);
  const prep = await ex.prepare(graph);
  const bufs: Record<string, ReturnType<Executor["upload"]>> = {};
  for (const [k, v] of Object.entries(feeds)) bufs[k] = ex.upload(v.data, v.shape, "f32");
  const outs = await prep.run(bufs);
  for (const [name, ref] of Object.entries(want)) {
    const got = await ex.read(outs[name]);
    let scale = 0;
    for (const v of ref) scale = Math.max(scale, Math.abs(v));
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref[i]) / Math.max(1, scale));
    if (!(worst <= (c.tol ?? 2e-5))) {
      throw new Error(`${ex.name} / ${c.name} / output "${name}": max error ${worst.toExponential(2)} vs reference`);
    }
  }
  for (const b of [...Object.values(bufs), ...Object.values(outs)]) ex.dispose(b);
  await prep.dispose();
}

for (const name of ["cpu", "wasm", "webgpu"] as const) {
  Deno.test({
    name: `executors: ${name} matches the float64 reference`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async (t) => {
      const ex = await createExecutor(name);
      try {
        for (const c of CASES) await t.step(c.name, () => compare(ex, c));
        if (ex.liveBuffers() !== 0) throw new Error(`${ex.liveBuffers()} buffers leaked`);
      } finally {
        await ex.close();
      }
    },
  });
}

Deno.test("ADD_CPU_THREADS: the cpu executor's threads, every core when unset, one line for a bad value", async () => {
  const { cpuThreadsFromEnv } = await import("../../engine/executors/ort_node.ts");
  if (cpuThreadsFromEnv("3") !== 3) throw new Error("ADD_CPU_THREADS=3 is not 3 threads");
  // "" is unset; `undefined` would read the environment (the parameter's default), which a caller may have set.
  if (cpuThreadsFromEnv("") !== (navigator.hardwareConcurrency || 1)) throw new Error("unset: not every core");
  for (const bad of ["0", "-1", "1.5", "two"]) {
    let msg = "";
    try {
      cpuThreadsFromEnv(bad);
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.startsWith(`ADD_CPU_THREADS=${bad}: expected an integer`)) throw new Error(`${bad}: "${msg}"`);
  }
});

Deno.test("ADD_CPU_ARENA: on for small graphs, off above the limit, forced either way, one line for a bad value", async () => {
  const { ARENA_LIMIT_BYTES, cpuArena } = await import("../../engine/executors/ort_node.ts");
  if (!cpuArena(ARENA_LIMIT_BYTES, "") || cpuArena(ARENA_LIMIT_BYTES + 1, "")) {
    throw new Error("unset: the arena should be on up to the limit and off above it");
  }
  if (cpuArena(0, "0") || !cpuArena(4 * ARENA_LIMIT_BYTES, "1")) throw new Error("ADD_CPU_ARENA=0/1 is not forced");
  let msg = "";
  try {
    cpuArena(0, "yes");
  } catch (e) {
    msg = (e as Error).message;
  }
  if (msg !== "ADD_CPU_ARENA=yes: expected 0 or 1") throw new Error(`bad value: "${msg}"`);
});

Deno.test({
  name: "executors: cpu without its arena (ADD_CPU_ARENA=0, as Stable Diffusion-size graphs run) matches the reference",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const before = Deno.env.get("ADD_CPU_ARENA");
    Deno.env.set("ADD_CPU_ARENA", "0");
    const ex = await createExecutor("cpu");
    try {
      for (const c of CASES.slice(0, 3)) await compare(ex, c);
    } finally {
      await ex.close();
      if (before === undefined) Deno.env.delete("ADD_CPU_ARENA");
      else Deno.env.set("ADD_CPU_ARENA", before);
    }
  },
});
