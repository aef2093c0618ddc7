/**
 * Every IR primitive lowered to ONNX and run on the cpu, wasm and webgpu executors, against plain-TS loops in float64.
 * WebGPU runs on whatever adapter Deno finds (llvmpipe here), so shapes stay tiny.
 */
import type { ConvAttrs, DType, Graph, Node } from "../../engine/ir.ts";
import { size, strides } from "../../engine/ir.ts";
import { createExecutor, hasHardwareGpu } from "../../engine/executors/auto.ts";
import type { Executor, HostArray } from "../../engine/executors/executor.ts";
import { type GradWeightLowering, lowerToOnnx } from "../../engine/onnx/lower.ts";
import * as ortNode from "onnxruntime-node";

// ---------------------------------------------------------------- tiny graph builder and reference loops

class B {
  nodes: Node[] = [];
  feeds: Record<string, T> = {};
  expect: Record<string, T> = {};
  outputs: { name: string; node: number }[] = [];
  add(op: string, inputs: number[], attrs: object, shape: number[], dtype: DType = "f32"): number {
    this.nodes.push({ op, inputs, attrs, shape, dtype } as Node);
    return this.nodes.length - 1;
  }
  input(name: string, t: T, dtype: DType = "f32"): number {
    this.feeds[name] = t;
    return this.add("input", [], { name }, t.shape, dtype);
  }
  out(name: string, node: number, expected: T): void {
    this.outputs.push({ name, node });
    this.expect[name] = expected;
  }
  graph(): Graph {
    return { nodes: this.nodes, outputs: this.outputs };
  }
}

interface T {
  data: ArrayLike<number>;
  shape: number[];
}

let seed = 12345;
function rand(): number {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}
function randT(shape: number[], lo = -1, hi = 1): T {
  return { data: Array.from({ length: size(shape) }, () => lo + (hi - lo) * rand()), shape };
}

/** Builds a tensor by evaluating `f` at every multi-index of `shape`. */
function gen(shape: number[], f: (idx: number[]) => number): T {
  const n = size(shape);
  const data = new Float64Array(n);
  const st = strides(shape);
  for (let i = 0; i < n; i++) data[i] = f(shape.map((d, a) => Math.floor(i / st[a]) % d));
  return { data, shape };
}
function at(t: T, idx: number[]): number {
  const st = strides(t.shape);
  let k = 0;
  for (let a = 0; a < idx.length; a++) k += idx[a] * st[a];
  return t.data[k];
}
/** Numpy broadcasting of an operand's index from an output index. */
function bat(t: T, idx: number[]): number {
  const off = idx.length - t.shape.length;
  return at(t, t.shape.map((d, a) => (d === 1 ? 0 : idx[a + off])));
}
function map2(a: T, b: T, shape: number[], f: (x: number, y: number) => number): T {
  return gen(shape, (i) => f(bat(a, i), bat(b, i)));
}
function reduce(t: T, axes: number[], keep: boolean, kind: "sum" | "max"): { t: T; shape: number[] } {
  const kshape = t.shape.map((d, a) => (axes.includes(a) ? 1 : d));
  const acc = new Float64Array(size(kshape)).fill(kind === "sum" ? 0 : -Infinity);
  const ks = strides(kshape);
  gen(t.shape, (i) => {
    const k = i.reduce((s, v, a) => s + (axes.includes(a) ? 0 : v * ks[a]), 0);
    const v = at(t, i);
    acc[k] = kind === "sum" ? acc[k] + v : Math.max(acc[k], v);
    return 0;
  });
  const shape = keep ? kshape : t.shape.filter((_, a) => !axes.includes(a));
  return { t: { data: acc, shape }, shape };
}
function erf(x: number): number {
  // Abramowitz & Stegun 7.1.26 (error < 1.5e-7).
  const s = Math.sign(x), a = Math.abs(x), t = 1 / (1 + 0.3275911 * a);
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t *
      Math.exp(-a * a);
  return s * y;
}

/** Forward conv and both gradients by direct loops. */
function convRef(x: T, w: T, gy: T | null, a: ConvAttrs) {
  const [N, Cin, H, W] = x.shape, [Cout, Cg, kh, kw] = w.shape;
  const Ho = Math.floor((H + a.pad[0] + a.pad[2] - kh) / a.stride[0]) + 1;
  const Wo = Math.floor((W + a.pad[1] + a.pad[3] - kw) / a.stride[1]) + 1;
  const y = new Float64Array(N * Cout * Ho * Wo),
    gx = new Float64Array(size(x.shape)),
    gw = new Float64Array(size(w.shape));
  const opg = Cout / a.groups;
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < Cout; o++) {
      for (let i = 0; i < Ho; i++) {
        for (let j = 0; j < Wo; j++) {
          const yi = ((n * Cout + o) * Ho + i) * Wo + j;
          for (let c = 0; c < Cg; c++) {
            for (let p = 0; p < kh; p++) {
              for (let q = 0; q < kw; q++) {
                const hh = i * a.stride[0] - a.pad[0] + p, ww = j * a.stride[1] - a.pad[1] + q;
                if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
                const xi = ((n * Cin + Math.floor(o / opg) * Cg + c) * H + hh) * W + ww;
                const wi = ((o * Cg + c) * kh + p) * kw + q;
                y[yi] += x.data[xi] * w.data[wi];
                if (gy) {
                  gx[xi] += gy.data[yi] * w.data[wi];
                  gw[wi] += gy.data[yi] * x.data[xi];
                }
              }
            }
          }
        }
      }
    }
  }
  return {
    y: { data: y, shape: [N, Cout, Ho, Wo] },
    gx: { data: gx, shape: x.shape },
    gw: { data: gw, shape: w.shape },
  };
}
function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// ---------------------------------------------------------------- running and comparing

function host(t: T, dtype: DType): HostArray {
  return dtype === "f32"
    ? Float32Array.from(t.data)
    : dtype === "i32"
    ? Int32Array.from(t.data)
    : Uint8Array.from(t.data);
}

/** Runs a built graph and compares every output with |got - want| <= atol + rtol * |want|. Returns the outputs. */
async function check(ex: Executor, b: B, tol = { atol: 1e-5, rtol: 1e-5 }): Promise<Record<string, HostArray>> {
  const before = ex.liveBuffers();
  const g = b.graph();
  // Every other output stays on the device, so webgpu reads both GPU and host outputs back.
  const prepared = await ex.prepare(g, { resident: g.outputs.filter((_, i) => i % 2 === 0).map((o) => o.name) });
  const feeds = Object.fromEntries(
    Object.entries(b.feeds).map(([k, t]) => {
      const node = g.nodes.find((n) => n.op === "input" && n.attrs.name === k)!;
      return [k, ex.upload(host(t, node.dtype), t.shape, node.dtype)];
    }),
  );
  const res = await prepared.run(feeds);
  const got: Record<string, HostArray> = {};
  for (const { name, node } of g.outputs) {
    const r = res[name];
    const want = b.expect[name];
    const shape = g.nodes[node].shape;
    if (r.shape.join() !== want.shape.join() || shape.join() !== want.shape.join()) {
      throw new Error(`${name}: shape [${r.shape}] / graph [${shape}], want [${want.shape}]`);
    }
    const data = await ex.read(r);
    got[name] = data;
    for (let i = 0; i < want.data.length; i++) {
      const w = want.data[i], v = data[i];
      if (!(Math.abs(v - w) <= tol.atol + tol.rtol * Math.abs(w))) {
        throw new Error(`${ex.name} ${name}[${i}] = ${v}, want ${w}`);
      }
    }
    ex.dispose(r);
  }
  for (const buf of Object.values(feeds)) ex.dispose(buf);
  await prepared.dispose();
  if (ex.liveBuffers() !== before) throw new Error(`leaked ${ex.liveBuffers() - before} buffers`);
  return got;
}

// ---------------------------------------------------------------- cases

type Case = [string, (ex: Executor) => Promise<unknown>];

const UN: [string, (x: number) => number][] = [
  ["neg", (x) => -x],
  ["exp", Math.exp],
  ["log", Math.log],
  ["sqrt", Math.sqrt],
  ["reciprocal", (x) => 1 / x],
  ["sin", Math.sin],
  ["cos", Math.cos],
  ["tanh", Math.tanh],
  ["sigmoid", (x) => 1 / (1 + Math.exp(-x))],
  ["erf", erf],
  ["abs", Math.abs],
  ["sign", Math.sign],
];
const BIN: [string, (x: number, y: number) => number][] = [
  ["add", (x, y) => x + y],
  ["sub", (x, y) => x - y],
  ["mul", (x, y) => x * y],
  ["div", (x, y) => x / y],
  ["pow", (x, y) => Math.pow(x, y)],
  ["maximum", Math.max],
  ["minimum", Math.min],
  ["less", (x, y) => +(x < y)],
  ["greater", (x, y) => +(x > y)],
  ["equal", (x, y) => +(x === y)],
];

function convCase(name: string, xs: number[], ws: number[], a: ConvAttrs): Case {
  return [name, async (ex) => {
    const b = new B();
    const xt = randT(xs), wt = randT(ws);
    const { y } = convRef(xt, wt, null, a);
    const gyt = randT(y.shape);
    const { gx, gw } = convRef(xt, wt, gyt, a);
    const x = b.input("x", xt), w = b.input("w", wt), gy = b.input("gy", gyt);
    b.out("y", b.add("conv2d", [x, w], a, y.shape), y);
    b.out("gx", b.add("conv2d_grad_input", [gy, w], a, xs), gx);
    b.out("gw", b.add("conv2d_grad_weight", [x, gy], a, ws), gw);
    const got = await check(ex, b, { atol: 1e-5, rtol: 1e-4 });
    // The adjoint identity <conv(x,w), g> = <x, gx(g,w)> = <w, gw(x,g)>, on the executor's own outputs.
    const lhs = dot(got.y, gyt.data), r1 = dot(xt.data, got.gx), r2 = dot(wt.data, got.gw);
    const scale = Math.abs(lhs) + 1;
    if (Math.abs(lhs - r1) > 1e-4 * scale || Math.abs(lhs - r2) > 1e-4 * scale) {
      throw new Error(`adjoint identity: ${lhs} vs ${r1} vs ${r2}`);
    }
  }];
}

const CASES: Case[] = [
  ["unary", (ex) => {
    const b = new B();
    const xt = randT([2, 3], 0.1, 2), st = { data: [-2, 0, 3.5, -0.25], shape: [4] };
    const x = b.input("x", xt), s = b.input("s", st);
    for (const [op, f] of UN) {
      const t = op === "sign" || op === "abs" ? st : xt;
      b.out(op, b.add(op, [t === st ? s : x], {}, t.shape), gen(t.shape, (i) => f(at(t, i))));
    }
    return check(ex, b, { atol: 2e-6, rtol: 2e-5 });
  }],
  ["binary, compare, broadcasting", (ex) => {
    const b = new B();
    const at_ = randT([2, 3], 0.5, 2), bt = { data: [0.5, 1, 1.5], shape: [3] }, ct = randT([2, 1], 0.5, 2);
    const a = b.input("a", at_), bb = b.input("b", bt), c = b.input("c", ct);
    for (const [op, f] of BIN) {
      const dt: DType = ["less", "greater", "equal"].includes(op) ? "bool" : "f32";
      b.out(`${op}_ab`, b.add(op, [a, bb], {}, [2, 3], dt), map2(at_, bt, [2, 3], f));
      b.out(`${op}_cb`, b.add(op, [c, bb], {}, [2, 3], dt), map2(ct, bt, [2, 3], f));
    }
    b.out("equal_self", b.add("equal", [bb, bb], {}, [3], "bool"), { data: [1, 1, 1], shape: [3] });
    return check(ex, b, { atol: 1e-6, rtol: 1e-5 });
  }],
  ["where, cast, stop_gradient, i32 and bool io", (ex) => {
    const b = new B();
    const xt = { data: [-1.5, 2.25, 3.75, -0.5], shape: [4] }, mt = { data: [1, 0, 0, 1], shape: [4] };
    const it = { data: [7, -3, 0, 2], shape: [4] };
    const x = b.input("x", xt), m = b.input("m", mt, "bool"), i = b.input("i", it, "i32");
    b.input("unused", { data: [1, 2], shape: [2] }); // simplify() keeps unused inputs, so ort must accept them
    const zero = b.add("const", [], { data: new Float32Array([0]) }, [], "f32");
    b.out("where", b.add("where", [m, x, zero], {}, [4]), { data: [-1.5, 0, 0, -0.5], shape: [4] });
    b.out("f2i", b.add("cast", [x], {}, [4], "i32"), { data: [-1, 2, 3, 0], shape: [4] });
    b.out("i2f", b.add("cast", [i], {}, [4], "f32"), it);
    b.out("b2f", b.add("cast", [m], {}, [4], "f32"), mt);
    b.out("f2b", b.add("cast", [x], {}, [4], "bool"), { data: [1, 1, 1, 1], shape: [4] });
    const sg = b.add("stop_gradient", [x], {}, [4]);
    b.out("sg", sg, xt);
    b.out("imax", b.add("maximum", [i, b.add("const", [], { data: new Int32Array([1]) }, [], "i32")], {}, [4], "i32"), {
      data: [7, 1, 1, 2],
      shape: [4],
    });
    b.out("x_again", x, xt); // an output that is an input
    b.out("sg_again", sg, xt); // two outputs on one node
    return check(ex, b);
  }],
  ["sum and max, axes and keepdims", (ex) => {
    const b = new B();
    const xt = randT([2, 3, 4]);
    const x = b.input("x", xt);
    for (const [axes, keep] of [[[1], true], [[1], false], [[0, 2], false], [[0, 1, 2], false], [[2], true]] as const) {
      for (const kind of ["sum", "max"] as const) {
        const r = reduce(xt, [...axes], keep, kind);
        b.out(`${kind}${axes}${keep}`, b.add(kind, [x], { axes, keepdims: keep }, r.shape), r.t);
      }
    }
    return check(ex, b);
  }],
  ["staged reductions over 300,000 and a prime 65,537", async (ex) => {
    const b = new B();
    const xt = randT([3, 100000], 0, 1), pt = randT([65537], -1, 1);
    const x = b.input("x", xt), p = b.input("p", pt);
    const sum = reduce(xt, [0, 1], false, "sum"), max = reduce(xt, [1], true, "max");
    b.out("sum", b.add("sum", [x], { axes: [0, 1], keepdims: false }, []), sum.t);
    b.out("max", b.add("max", [x], { axes: [1], keepdims: true }, [3, 1]), max.t);
    b.out("psum", b.add("sum", [p], { axes: [0], keepdims: false }, []), reduce(pt, [0], false, "sum").t);
    b.out("pmax", b.add("max", [p], { axes: [0], keepdims: true }, [1]), reduce(pt, [0], true, "max").t);
    const got = await check(ex, b, { atol: 0, rtol: 1e-5 });
    const rel = Math.abs(got.sum[0] - sum.t.data[0]) / sum.t.data[0];
    console.log(`    ${ex.name}: 300,000-element sum relative error ${rel.toExponential(2)}`);
  }],
  ["matmul with batch broadcasting", (ex) => {
    const b = new B();
    const at_ = randT([2, 3, 4]), bt = randT([4, 5]), ct = randT([1, 2, 3]), dt = randT([3, 3, 2]);
    const mm = (x: T, y: T, shape: number[]) =>
      gen(shape, (i) => {
        const r = i.length, K = x.shape[x.shape.length - 1];
        let s = 0;
        for (let k = 0; k < K; k++) {
          s += bat(x, [...i.slice(0, r - 2), i[r - 2], k]) * bat(y, [...i.slice(0, r - 2), k, i[r - 1]]);
        }
        return s;
      });
    b.out("ab", b.add("matmul", [b.input("a", at_), b.input("b", bt)], {}, [2, 3, 5]), mm(at_, bt, [2, 3, 5]));
    b.out("cd", b.add("matmul", [b.input("c", ct), b.input("d", dt)], {}, [3, 2, 2]), mm(ct, dt, [3, 2, 2]));
    return check(ex, b);
  }],
  convCase("conv 3x3 stride 1 pad 1", [2, 3, 5, 6], [4, 3, 3, 3], { stride: [1, 1], pad: [1, 1, 1, 1], groups: 1 }),
  convCase("conv 3x3 stride 2 asymmetric pad", [2, 2, 8, 7], [3, 2, 3, 3], {
    stride: [2, 2],
    pad: [1, 0, 2, 1],
    groups: 1,
  }),
  convCase("conv 2x3 stride [2,1] no pad", [1, 2, 7, 6], [2, 2, 2, 3], {
    stride: [2, 1],
    pad: [0, 0, 0, 0],
    groups: 1,
  }),
  convCase("grouped conv (2 groups) stride 2", [2, 4, 7, 7], [6, 2, 3, 3], {
    stride: [2, 2],
    pad: [1, 1, 1, 1],
    groups: 2,
  }),
  convCase("depthwise conv", [1, 3, 6, 5], [3, 1, 3, 3], { stride: [1, 1], pad: [1, 1, 1, 1], groups: 3 }),
  ["reshape, transpose, slice, pad, concat, expand, gather", (ex) => {
    const b = new B();
    const xt = randT([2, 3, 4]), yt = randT([2, 1, 4]), idx = { data: [2, 0, 2, 1], shape: [2, 2] };
    const x = b.input("x", xt), y = b.input("y", yt), ix = b.input("idx", idx, "i32");
    b.out("reshape", b.add("reshape", [x], {}, [4, 6]), { data: xt.data, shape: [4, 6] });
    b.out(
      "transpose",
      b.add("transpose", [x], { perm: [2, 0, 1] }, [4, 2, 3]),
      gen([4, 2, 3], (i) => at(xt, [i[1], i[2], i[0]])),
    );
    b.out(
      "slice",
      b.add("slice", [x], { starts: [1, 0, 1], ends: [2, 3, 3] }, [1, 3, 2]),
      gen([1, 3, 2], (i) => at(xt, [i[0] + 1, i[1], i[2] + 1])),
    );
    b.out(
      "pad",
      b.add("pad", [x], { before: [0, 1, 2], after: [1, 0, 1] }, [3, 4, 7]),
      gen([3, 4, 7], (i) => (i[0] < 2 && i[1] >= 1 && i[2] >= 2 && i[2] < 6 ? at(xt, [i[0], i[1] - 1, i[2] - 2]) : 0)),
    );
    b.out(
      "concat",
      b.add("concat", [x, y], { axis: 1 }, [2, 4, 4]),
      gen([2, 4, 4], (i) => (i[1] < 3 ? at(xt, i) : at(yt, [i[0], 0, i[2]]))),
    );
    b.out("expand", b.add("expand", [y], {}, [3, 2, 5, 4]), gen([3, 2, 5, 4], (i) => bat(yt, i)));
    // Upsampling-shaped broadcasts, which cpu and wasm lower to Resize (factors 2 and 4; a leading unit axis).
    const ut = randT([2, 3, 1, 5, 1]), u = b.input("u", ut);
    b.out("upsample", b.add("expand", [u], {}, [2, 3, 2, 5, 4]), gen([2, 3, 2, 5, 4], (i) => bat(ut, i)));
    b.out("upsample_rank", b.add("expand", [u], {}, [1, 2, 3, 4, 5, 2]), gen([1, 2, 3, 4, 5, 2], (i) => bat(ut, i)));
    b.out(
      "gather1",
      b.add("gather", [x, ix], { axis: 1 }, [2, 2, 2, 4]),
      gen([2, 2, 2, 4], (i) => at(xt, [i[0], at(idx, [i[1], i[2]]), i[3]])),
    );
    b.out(
      "gather0",
      b.add("gather", [y, b.add("const", [], { data: new Int32Array([1, 0, 1]) }, [3], "i32")], { axis: 0 }, [3, 1, 4]),
      gen([3, 1, 4], (i) => at(yt, [[1, 0, 1][i[0]], 0, i[2]])),
    );
    return check(ex, b);
  }],
  ["resident state fed back 200 times", async (ex) => {
    const g: Graph = {
      nodes: [
        { op: "input", inputs: [], attrs: { name: "s" }, shape: [4], dtype: "f32" },
        { op: "const", inputs: [], attrs: { data: new Float32Array([0.5]) }, shape: [], dtype: "f32" },
        { op: "mul", inputs: [0, 1], attrs: {}, shape: [4], dtype: "f32" },
        { op: "add", inputs: [2, 1], attrs: {}, shape: [4], dtype: "f32" },
        { op: "sum", inputs: [3], attrs: { axes: [0], keepdims: false }, shape: [], dtype: "f32" },
      ],
      // The new state goes out under the input's own name, as a step graph's parameters do.
      outputs: [{ name: "s", node: 3 }, { name: "total", node: 4 }],
    };
    const p = await ex.prepare(g, { resident: ["s"] });
    let s = ex.upload(new Float32Array([0, 1, 2, 3]), [4], "f32");
    const live = ex.liveBuffers();
    for (let i = 0; i < 200; i++) {
      const r = await p.run({ s });
      ex.dispose(s);
      ex.dispose(r.total);
      s = r.s;
      if (ex.liveBuffers() !== live) throw new Error(`step ${i}: ${ex.liveBuffers()} live buffers, want ${live}`);
    }
    const v = await ex.read(s);
    if (v.some((e) => Math.abs(e - 1) > 1e-6)) throw new Error(`fixed point: ${v}`);
    ex.dispose(s);
    await p.dispose();
  }],
];

// ---------------------------------------------------------------- test registration

Deno.test("lowerToOnnx is deterministic and names stay short", () => {
  const g: Graph = {
    nodes: [
      { op: "input", inputs: [], attrs: { name: "_x" }, shape: [2, 2], dtype: "f32" },
      { op: "exp", inputs: [0], attrs: {}, shape: [2, 2], dtype: "f32" },
      { op: "sum", inputs: [1], attrs: { axes: [0, 1], keepdims: false }, shape: [], dtype: "f32" },
    ],
    outputs: [{ name: "loss", node: 2 }],
  };
  const a = lowerToOnnx(g, "cpu"), b = lowerToOnnx(g, "cpu");
  if (a.length !== b.length || a.some((v, i) => v !== b[i])) throw new Error("not deterministic");
  if (a.length > 200) throw new Error(`model of ${a.length} bytes for 3 nodes`);
});

Deno.test("an upsampling broadcast is a Resize on cpu and wasm, an Expand on webgpu and elsewhere", () => {
  const g = (from: number[], to: number[]): Graph => ({
    nodes: [
      { op: "input", inputs: [], attrs: { name: "x" }, shape: from, dtype: "f32" },
      { op: "expand", inputs: [0], attrs: {}, shape: to, dtype: "f32" },
    ],
    outputs: [{ name: "y", node: 1 }],
  });
  const ops = (m: Uint8Array) => ["Resize", "Expand"].filter((o) => new TextDecoder().decode(m).includes(o));
  const up = g([2, 3, 4, 1, 5, 1], [2, 3, 4, 2, 5, 2]);
  if (ops(lowerToOnnx(up, "cpu")).join() !== "Resize") throw new Error("cpu: no Resize");
  if (ops(lowerToOnnx(up, "wasm")).join() !== "Resize") throw new Error("wasm: no Resize");
  if (ops(lowerToOnnx(up, "webgpu")).join() !== "Expand") throw new Error("webgpu: not an Expand");
  // A factor of 3 (inexact reciprocal) and a broadcast over channels stay Expands.
  if (ops(lowerToOnnx(g([2, 4, 1, 5, 1], [2, 4, 3, 5, 3]), "cpu")).join() !== "Expand") throw new Error("factor 3");
  if (ops(lowerToOnnx(g([1, 3, 1, 1], [2, 3, 4, 4]), "cpu")).join() !== "Expand") throw new Error("channels");
});

// The executors above use each target's default weight-gradient lowering; every alternative is checked here too.
Deno.test("conv weight gradient: every lowering (gemm, matmul, conv) vs plain loops on onnxruntime-node", async () => {
  const convs: [number[], number[], ConvAttrs][] = [
    [[2, 3, 5, 6], [4, 3, 3, 3], { stride: [1, 1], pad: [1, 1, 1, 1], groups: 1 }],
    [[2, 2, 8, 7], [3, 2, 3, 3], { stride: [2, 2], pad: [1, 0, 0, 1], groups: 1 }],
    [[1, 2, 7, 6], [2, 2, 2, 3], { stride: [2, 1], pad: [0, 0, 0, 0], groups: 1 }],
  ];
  for (const [xs, ws, a] of convs) {
    const xt = randT(xs), wt = randT(ws);
    const gyt = randT(convRef(xt, wt, null, a).y.shape);
    const { gw } = convRef(xt, wt, gyt, a);
    const b = new B();
    b.out("gw", b.add("conv2d_grad_weight", [b.input("x", xt), b.input("gy", gyt)], a, ws), gw);
    for (const how of ["gemm", "matmul", "conv"] as GradWeightLowering[]) {
      const s = await ortNode.InferenceSession.create(lowerToOnnx(b.graph(), "cpu", { gradWeight: how }));
      const feed = (t: T) => new ortNode.Tensor("float32", Float32Array.from(t.data), t.shape);
      const got = (await s.run({ x: feed(xt), gy: feed(gyt) })).gw.data as Float32Array;
      await s.release();
      for (let i = 0; i < gw.data.length; i++) {
        if (Math.abs(got[i] - gw.data[i]) > 1e-5 + 1e-4 * Math.abs(gw.data[i])) {
          throw new Error(`${how} x[${xs}] w[${ws}] at ${i}: ${got[i]} vs ${gw.data[i]}`);
        }
      }
    }
  }
});

const gpuAvailable = await (async () => {
  try {
    return !!(await navigator.gpu?.requestAdapter());
  } catch {
    return false;
  }
})();

for (const name of ["cpu", "wasm", "webgpu"] as const) {
  Deno.test({
    name: `ort lowering on ${name}`,
    ignore: name === "webgpu" && !gpuAvailable,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async (t) => {
      const t0 = performance.now();
      const ex = await createExecutor(name);
      console.log(`    ${name}: executor ready in ${(performance.now() - t0).toFixed(0)} ms`);
      try {
        for (const [label, fn] of CASES) await t.step(label, async () => void (await fn(ex)));
      } finally {
        await ex.close();
      }
    },
  });
}

Deno.test("auto picks webgpu only on a hardware adapter", async () => {
  const hw = await hasHardwareGpu();
  const adapter = gpuAvailable ? await navigator.gpu.requestAdapter() : null;
  if (adapter?.info.description.includes("llvmpipe") && hw) throw new Error("llvmpipe counted as hardware");
});
