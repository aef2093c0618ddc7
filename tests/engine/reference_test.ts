/**
 * Tests of the reference executor: each primitive on small hand-computed cases, the conv adjoint identities on random
 * data, erf against known values, and the Executor contract (buffers, dtypes, errors).
 */
import type { ConvAttrs, DType, Graph, Node } from "../../engine/ir.ts";
import { evaluate, ReferenceExecutor } from "../../engine/executors/reference.ts";

// ---------------------------------------------------------------------------------------------------------------------
// Helpers (no std library: plain asserts)

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-12, msg = ""): void {
  const a = Array.from(actual), e = Array.from(expected);
  if (a.length !== e.length) throw new Error(`${msg} length ${a.length} !== ${e.length}: ${a} vs ${e}`);
  for (let i = 0; i < a.length; i++) {
    const ok = Number.isNaN(e[i]) ? Number.isNaN(a[i]) : a[i] === e[i] || Math.abs(a[i] - e[i]) <= tol;
    if (!ok) {
      throw new Error(`${msg} mismatch at ${i}: got ${a[i]}, expected ${e[i]}\n  got      ${a}\n  expected ${e}`);
    }
  }
}

function assertEq<T>(actual: T, expected: T, msg = ""): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${msg} got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
  }
}

async function assertThrows(f: () => unknown, includes: string): Promise<void> {
  try {
    await f();
  } catch (e) {
    const m = (e as Error).message;
    if (!m.includes(includes)) throw new Error(`error "${m}" does not mention "${includes}"`);
    return;
  }
  throw new Error(`expected an error mentioning "${includes}"`);
}

const inp = (name: string, shape: number[], dtype: DType = "f32"): Node => ({
  op: "input",
  inputs: [],
  attrs: { name },
  shape,
  dtype,
});

type Feed = Record<string, { data: ArrayLike<number>; shape: number[] }>;

/** Evaluates `nodes` and returns the value of the last node. */
function last(nodes: Node[], feed: Feed): Float64Array {
  return evaluate({ nodes, outputs: [{ name: "y", node: nodes.length - 1 }] }, feed).y;
}

/** A graph applying one no-attr op to inputs a (and b, c) with the given shapes. */
function op(o: Node["op"], shapes: number[][], outShape: number[], dtype: DType = "f32", dtypes: DType[] = []): Node[] {
  const names = ["a", "b", "c"];
  const nodes: Node[] = shapes.map((s, i) => inp(names[i], s, dtypes[i] ?? "f32"));
  nodes.push({ op: o, inputs: shapes.map((_, i) => i), attrs: {}, shape: outShape, dtype } as Node);
  return nodes;
}

function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1;
  };
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => i + from);

// ---------------------------------------------------------------------------------------------------------------------
// Elementwise

Deno.test("unary ops", () => {
  const x = [-2, -0.5, 0, 0.5, 3];
  const f = (o: Node["op"], data = x) =>
    last(op(o, [[data.length]], [data.length]), { a: { data, shape: [data.length] } });
  assertClose(f("neg"), [2, 0.5, -0, -0.5, -3]);
  assertClose(f("abs"), [2, 0.5, 0, 0.5, 3]);
  assertClose(f("sign"), [-1, -1, 0, 1, 1]);
  assertClose(f("reciprocal"), [-0.5, -2, Infinity, 2, 1 / 3]);
  assertClose(f("sqrt", [0, 1, 4, 9, -1]), [0, 1, 2, 3, NaN]);
  assertClose(f("exp", [0, 1, -1, 2, 0]), [1, Math.E, 1 / Math.E, Math.E * Math.E, 1]);
  assertClose(f("log", [1, Math.E, 0.5, 0, -1]), [0, 1, -Math.LN2, -Infinity, NaN]);
  assertClose(f("sin", [0, Math.PI / 2, -Math.PI / 6, 0, 0]), [0, 1, -0.5, 0, 0], 1e-15);
  assertClose(f("cos", [0, Math.PI, Math.PI / 3, 0, 0]), [1, -1, 0.5, 1, 1], 1e-15);
  assertClose(f("tanh", [0, 1, -1, 20, -20]), [0, 0.7615941559557649, -0.7615941559557649, 1, -1]);
  assertClose(f("sigmoid", [0, 2, -2, 1000, -1000]), [0.5, 0.8807970779778823, 0.11920292202211755, 1, 0]);
  assertClose(f("erf", [0, 0.5, -0.5, 10, -10]), [0, 0.5204998778130465, -0.5204998778130465, 1, -1]);
});

Deno.test("erf known values", () => {
  const xs = [0.5, 1, 2, -3, 0.1, 3.5, -6, 1e-9];
  const want = [
    0.5204998778130465,
    0.8427007929497149,
    0.9953222650189527,
    -0.9999779095030014,
    0.1124629160182849,
    0.9999992569016276,
    -1,
    1.1283791670955126e-9,
  ];
  assertClose(last(op("erf", [[8]], [8]), { a: { data: xs, shape: [8] } }), want, 1e-15);
});

Deno.test("binary ops with broadcasting", () => {
  const a23 = { data: [1, 2, 3, 4, 5, 6], shape: [2, 3] };
  const f = (o: Node["op"], a: Feed[string], b: Feed[string], out: number[]) =>
    last(op(o, [a.shape, b.shape], out), { a, b });
  assertClose(f("add", a23, { data: [10, 20, 30], shape: [3] }, [2, 3]), [11, 22, 33, 14, 25, 36]);
  assertClose(f("sub", a23, { data: [1, -1], shape: [2, 1] }, [2, 3]), [0, 1, 2, 5, 6, 7]);
  assertClose(f("mul", { data: [1, 2], shape: [2, 1] }, { data: [1, -2, 3], shape: [1, 3] }, [2, 3]), [
    1,
    -2,
    3,
    2,
    -4,
    6,
  ]);
  assertClose(f("div", a23, { data: [-2], shape: [] }, [2, 3]), [-0.5, -1, -1.5, -2, -2.5, -3]);
  assertClose(f("pow", { data: [2, -2, 4, 1], shape: [4] }, { data: [3, 3, 0.5, NaN], shape: [4] }, [4]), [
    8,
    -8,
    2,
    1,
  ]);
  assertClose(f("maximum", { data: [-1, 5, -3], shape: [3] }, { data: [-2, 0], shape: [2, 1] }, [2, 3]), [
    -1,
    5,
    -2,
    0,
    5,
    0,
  ]);
  assertClose(f("minimum", { data: [-1, 5, NaN], shape: [3] }, { data: [0], shape: [1] }, [3]), [-1, 0, NaN]);
  // Rank-3 against rank-1 and a middle broadcast axis.
  assertClose(
    f("add", { data: range(4), shape: [2, 1, 2] }, { data: [100, 200, 300], shape: [3, 1] }, [2, 3, 2]),
    [100, 101, 200, 201, 300, 301, 102, 103, 202, 203, 302, 303],
  );
});

Deno.test("compare ops give bool", () => {
  const a = { data: [-1, 0, 2], shape: [3] }, b = { data: [0, 2], shape: [2, 1] };
  const f = (o: Node["op"]) => last(op(o, [[3], [2, 1]], [2, 3], "bool"), { a, b });
  assertClose(f("less"), [1, 0, 0, 1, 1, 0]);
  assertClose(f("greater"), [0, 0, 1, 0, 0, 0]);
  assertClose(f("equal"), [0, 1, 0, 0, 0, 1]);
});

Deno.test("where broadcasts all three operands", () => {
  const nodes = op("where", [[2, 1], [1, 3], []], [2, 3], "f32", ["bool", "f32", "f32"]);
  const y = last(nodes, {
    a: { data: [1, 0], shape: [2, 1] },
    b: { data: [1, -2, 3], shape: [1, 3] },
    c: { data: [-7], shape: [] },
  });
  assertClose(y, [1, -2, 3, -7, -7, -7]);
});

// ---------------------------------------------------------------------------------------------------------------------
// Reductions and matmul

Deno.test("sum and max over axes, with keepdims", () => {
  const x = { data: [1, -2, 3, -4, 5, -6], shape: [2, 3] };
  const red = (o: "sum" | "max", axes: number[], keepdims: boolean, shape: number[], xx = x) =>
    last([inp("a", xx.shape), { op: o, inputs: [0], attrs: { axes, keepdims }, shape, dtype: "f32" }], { a: xx });
  assertClose(red("sum", [0], false, [3]), [-3, 3, -3]);
  assertClose(red("sum", [1], true, [2, 1]), [2, -5]);
  assertClose(red("sum", [0, 1], false, []), [-3]);
  assertClose(red("sum", [], false, [2, 3]), x.data);
  assertClose(red("max", [1], false, [2]), [3, 5]);
  assertClose(red("max", [0], true, [1, 3]), [1, 5, 3]);
  assertClose(red("max", [0, 1], true, [1, 1]), [5]);
  const x3 = { data: range(24), shape: [2, 3, 4] };
  // sum over axes 0 and 2: out[j] = Σ_i Σ_k (12i + 4j + k) = 48 + 32j + 12
  assertClose(red("sum", [0, 2], false, [3], x3), [60, 92, 124]);
  assertClose(red("max", [1], true, [2, 1, 4], x3), [8, 9, 10, 11, 20, 21, 22, 23]);
  assertClose(red("max", [0], false, [2], { data: [1, NaN, 2, 3], shape: [2, 2] }), [2, NaN]);
});

Deno.test("normalize over the last axis: hand values, zero mean and unit variance, ε", () => {
  const nz = (data: number[], shape: number[], eps: number) =>
    last([inp("a", shape), { op: "normalize", inputs: [0], attrs: { eps }, shape, dtype: "f32" }], {
      a: { data, shape },
    });
  // Rows (1, 3) and (2, 2): mean 2, var 1 → (−1, 1)/√(1 + ε); a constant row gives zeros.
  const eps = 0.25, r = 1 / Math.sqrt(1 + eps);
  assertClose(nz([1, 3, 2, 2], [2, 2], eps), [-r, r, 0, 0]);
  const x = range(15).map((v) => Math.cos(v) * 4 + 10);
  const y = nz(x, [3, 5], 1e-9);
  for (let row = 0; row < 3; row++) {
    const ys = Array.from(y.slice(row * 5, row * 5 + 5)), xs = x.slice(row * 5, row * 5 + 5);
    const mu = xs.reduce((a, v) => a + v, 0) / 5, v = xs.reduce((a, u) => a + (u - mu) ** 2, 0) / 5;
    // mean 0 and second moment var / (var + ε)
    assertClose([ys.reduce((a, u) => a + u, 0) / 5, ys.reduce((a, u) => a + u * u, 0) / 5], [0, v / (v + 1e-9)]);
  }
});

Deno.test("softmax along one axis: hand values, rows sum to 1, shift-invariant, no overflow", () => {
  const sm = (data: number[], shape: number[], axis: number) =>
    last([inp("a", shape), { op: "softmax", inputs: [0], attrs: { axis }, shape, dtype: "f32" }], {
      a: { data, shape },
    });
  // Along axis 1 of [2, 2]: each row is (1, e^{Δ}) / (1 + e^{Δ}).
  const e = Math.exp(1);
  assertClose(sm([0, 1, 3, 3], [2, 2], 1), [1 / (1 + e), e / (1 + e), 0.5, 0.5]);
  // Along axis 0 of the same data: columns (0, 3) and (1, 3).
  const e3 = Math.exp(3), e2 = Math.exp(2);
  assertClose(sm([0, 1, 3, 3], [2, 2], 0), [1 / (1 + e3), 1 / (1 + e2), e3 / (1 + e3), e2 / (1 + e2)]);
  // A middle axis of [2, 3, 2], and a shift by 1000 changes nothing (no overflow).
  const x = range(12).map((v) => Math.sin(v) * 3);
  const y = sm(x, [2, 3, 2], 1), shifted = sm(x.map((v) => v + 1000), [2, 3, 2], 1);
  assertClose(shifted, Array.from(y));
  for (const [o, i] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
    const at = (k: number) => o * 6 + k * 2 + i;
    const z = [0, 1, 2].reduce((s, k) => s + Math.exp(x[at(k)]), 0);
    assertClose([0, 1, 2].map((k) => y[at(k)]), [0, 1, 2].map((k) => Math.exp(x[at(k)]) / z));
  }
});

Deno.test("matmul, including batch broadcasting", () => {
  const mm = (as: number[], bs: number[], out: number[], a: number[], b: number[]) =>
    last(op("matmul", [as, bs], out), { a: { data: a, shape: as }, b: { data: b, shape: bs } });
  // [[1,2,3],[4,5,6]] @ [[1,-1],[0,2],[-3,1]]
  assertClose(mm([2, 3], [3, 2], [2, 2], [1, 2, 3, 4, 5, 6], [1, -1, 0, 2, -3, 1]), [-8, 6, -14, 12]);
  // A batch of two against one shared matrix.
  assertClose(mm([2, 1, 2], [2, 2], [2, 1, 2], [1, 2, 3, 4], [1, 0, 0, -1]), [1, -2, 3, -4]);
  // Random broadcast case against an explicit loop: [2,1,3,4] @ [5,4,2] → [2,5,3,2].
  const r = rng(1);
  const A = range(24).map(r), B = range(40).map(r);
  const got = mm([2, 1, 3, 4], [5, 4, 2], [2, 5, 3, 2], A, B);
  const want: number[] = [];
  for (let s = 0; s < 2; s++) {
    for (let t = 0; t < 5; t++) {
      for (let i = 0; i < 3; i++) {
        for (let j = 0; j < 2; j++) {
          let acc = 0;
          for (let p = 0; p < 4; p++) acc += A[s * 12 + i * 4 + p] * B[t * 8 + p * 2 + j];
          want.push(acc);
        }
      }
    }
  }
  assertClose(got, want, 1e-14);
});

// ---------------------------------------------------------------------------------------------------------------------
// Convolution

function convGraph(xs: number[], ws: number[], ys: number[], attrs: ConvAttrs): Graph {
  return {
    nodes: [
      inp("x", xs),
      inp("w", ws),
      inp("g", ys),
      { op: "conv2d", inputs: [0, 1], attrs, shape: ys, dtype: "f32" },
      { op: "conv2d_grad_input", inputs: [2, 1], attrs, shape: xs, dtype: "f32" },
      { op: "conv2d_grad_weight", inputs: [0, 2], attrs, shape: ws, dtype: "f32" },
    ],
    outputs: [{ name: "y", node: 3 }, { name: "gx", node: 4 }, { name: "gw", node: 5 }],
  };
}

function conv(xs: number[], ws: number[], ys: number[], attrs: ConvAttrs, x: number[], w: number[], g?: number[]) {
  const ysize = ys.reduce((p, q) => p * q, 1);
  return evaluate(convGraph(xs, ws, ys, attrs), {
    x: { data: x, shape: xs },
    w: { data: w, shape: ws },
    g: { data: g ?? new Array(ysize).fill(0), shape: ys },
  });
}

const plain = (stride = 1, pad: ConvAttrs["pad"] = [0, 0, 0, 0], groups = 1): ConvAttrs => ({
  stride: [stride, stride],
  pad,
  groups,
});

Deno.test("conv2d hand-computed cases", () => {
  const x9 = range(9, 1);
  // Kernel [[1,0],[0,-1]]: x[i,j] − x[i+1,j+1] is −4 everywhere on 1..9.
  assertClose(conv([1, 1, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2], plain(), x9, [1, 0, 0, -1]).y, [-4, -4, -4, -4]);
  // Stride 2, pad top 1 and right 1: padded rows [0000],[1230],[4560],[7890]; kernel [[1,2],[3,4]].
  const s2 = plain(2, [1, 0, 0, 1]);
  assertClose(conv([1, 1, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2], s2, x9, [1, 2, 3, 4]).y, [11, 9, 67, 33]);
  // Two input channels into one output: x0 − x1.
  assertClose(
    conv([1, 2, 2, 2], [1, 2, 1, 1], [1, 1, 2, 2], plain(), [1, 2, 3, 4, 10, 20, 30, 40], [1, -1]).y,
    [-9, -18, -27, -36],
  );
  // Two batch items.
  assertClose(conv([2, 1, 1, 2], [1, 1, 1, 2], [2, 1, 1, 1], plain(), [1, 2, 3, 4], [1, 10]).y, [21, 43]);
  // Groups 2 over 4 channels: out0 = x0 + x1, out1 = x2 − x3.
  assertClose(
    conv([1, 4, 1, 1], [2, 2, 1, 1], [1, 2, 1, 1], plain(1, [0, 0, 0, 0], 2), [1, 2, 3, 4], [1, 1, 1, -1]).y,
    [
      3,
      -1,
    ],
  );
  // Depthwise 1x2: channel 0 sums pairs, channel 1 takes differences.
  assertClose(
    conv([1, 2, 2, 2], [2, 1, 1, 2], [1, 2, 2, 1], plain(1, [0, 0, 0, 0], 2), range(8, 1), [1, 1, 1, -1]).y,
    [3, 7, -1, -1],
  );
  // Depthwise with channel multiplier 2: outputs 0,1 read channel 0, outputs 2,3 read channel 1.
  assertClose(conv([1, 2, 1, 1], [4, 1, 1, 1], [1, 4, 1, 1], plain(1, [0, 0, 0, 0], 2), [10, 100], [1, 2, 3, 4]).y, [
    10,
    20,
    300,
    400,
  ]);
});

Deno.test("conv2d gradients hand-computed cases", () => {
  const x9 = range(9, 1), w4 = [1, 2, 3, 4];
  const c = (g: number[], attrs = plain()) => conv([1, 1, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2], attrs, x9, w4, g);
  // A unit gradient at one output places the kernel over that output's window in gx, and that window of x in gw.
  assertClose(c([1, 0, 0, 0]).gx, [1, 2, 0, 3, 4, 0, 0, 0, 0]);
  assertClose(c([0, 0, 0, 1]).gx, [0, 0, 0, 0, 1, 2, 0, 3, 4]);
  assertClose(c([1, 0, 0, 0]).gw, [1, 2, 4, 5]);
  assertClose(c([0, 0, 0, 1]).gw, [5, 6, 8, 9]);
  // Stride 2 with pad top 1 / right 1: taps landing in the padding are dropped.
  const s2 = plain(2, [1, 0, 0, 1]);
  assertClose(c([1, 1, 1, 1], s2).gx, [3, 4, 3, 1, 2, 1, 3, 4, 3]);
  // gw[ky,kx] = Σ over outputs of padded x at (2oy+ky, 2ox+kx): see the padded grid in the forward test.
  assertClose(c([1, 1, 1, 1], s2).gw, [0 + 0 + 4 + 6, 0 + 0 + 5 + 0, 1 + 3 + 7 + 9, 2 + 0 + 8 + 0]);
});

Deno.test("conv2d adjoint identities on random data", () => {
  const configs: { x: number[]; w: number[]; attrs: ConvAttrs }[] = [
    { x: [2, 3, 7, 6], w: [4, 3, 3, 3], attrs: plain(1, [1, 1, 1, 1]) },
    { x: [1, 4, 8, 8], w: [6, 2, 3, 2], attrs: { stride: [2, 2], pad: [0, 1, 2, 0], groups: 2 } },
    { x: [2, 4, 9, 7], w: [4, 1, 3, 3], attrs: { stride: [2, 2], pad: [1, 0, 1, 2], groups: 4 } },
    { x: [1, 6, 5, 5], w: [12, 1, 1, 1], attrs: plain(1, [0, 0, 0, 0], 6) },
    { x: [2, 2, 10, 9], w: [3, 2, 4, 4], attrs: { stride: [2, 1], pad: [2, 0, 1, 3], groups: 1 } },
    { x: [1, 2, 11, 11], w: [2, 1, 3, 3], attrs: { stride: [3, 3], pad: [1, 1, 0, 0], groups: 2 } },
    { x: [3, 1, 4, 4], w: [2, 1, 2, 2], attrs: plain(2) },
  ];
  const r = rng(7);
  for (const { x: xs, w: ws, attrs } of configs) {
    const [n, , h, wd] = xs, [o, , kh, kw] = ws;
    const ys = [
      n,
      o,
      Math.floor((h + attrs.pad[0] + attrs.pad[2] - kh) / attrs.stride[0]) + 1,
      Math.floor((wd + attrs.pad[1] + attrs.pad[3] - kw) / attrs.stride[1]) + 1,
    ];
    const sz = (s: number[]) => s.reduce((p, q) => p * q, 1);
    const x = range(sz(xs)).map(r), w = range(sz(ws)).map(r), g = range(sz(ys)).map(r);
    const { y, gx, gw } = conv(xs, ws, ys, attrs, x, w, g);
    const dot = (p: ArrayLike<number>, q: ArrayLike<number>) => Array.from(p).reduce((s, v, i) => s + v * q[i], 0);
    const lhs = dot(y, g), viaX = dot(x, gx), viaW = dot(w, gw);
    const tol = 1e-10 * Math.max(1, Math.abs(lhs));
    const what = JSON.stringify({ xs, ws, attrs });
    if (Math.abs(lhs - viaX) > tol) throw new Error(`<conv(x,w),g> ${lhs} != <x,grad_input> ${viaX} for ${what}`);
    if (Math.abs(lhs - viaW) > tol) throw new Error(`<conv(x,w),g> ${lhs} != <w,grad_weight> ${viaW} for ${what}`);
    if (Math.abs(lhs) < 1e-3) throw new Error(`degenerate config ${what}`);
  }
});

// ---------------------------------------------------------------------------------------------------------------------
// Layout ops

Deno.test("reshape, transpose, slice, pad", () => {
  const a23 = { a: { data: range(6, 1), shape: [2, 3] } };
  const one = (n: Node, inShape = [2, 3], feed: Feed = a23) => last([inp("a", inShape), n], feed);
  assertClose(one({ op: "reshape", inputs: [0], attrs: {}, shape: [3, 2], dtype: "f32" }), range(6, 1));
  assertClose(one({ op: "transpose", inputs: [0], attrs: { perm: [1, 0] }, shape: [3, 2], dtype: "f32" }), [
    1,
    4,
    2,
    5,
    3,
    6,
  ]);
  // Rank 3, perm [2,0,1]: out[k,i,j] = x[i,j,k] = 12i + 4j + k.
  const t3 = one({ op: "transpose", inputs: [0], attrs: { perm: [2, 0, 1] }, shape: [4, 2, 3], dtype: "f32" }, [
    2,
    3,
    4,
  ], { a: { data: range(24), shape: [2, 3, 4] } });
  const want: number[] = [];
  for (let k = 0; k < 4; k++) for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) want.push(12 * i + 4 * j + k);
  assertClose(t3, want);
  const x34 = { a: { data: range(12), shape: [3, 4] } };
  assertClose(
    one(
      { op: "slice", inputs: [0], attrs: { starts: [1, 1], ends: [3, 3] }, shape: [2, 2], dtype: "f32" },
      [3, 4],
      x34,
    ),
    [5, 6, 9, 10],
  );
  assertClose(
    one(
      { op: "slice", inputs: [0], attrs: { starts: [0, 3], ends: [3, 4] }, shape: [3, 1], dtype: "f32" },
      [3, 4],
      x34,
    ),
    [3, 7, 11],
  );
  const x22 = { a: { data: [1, -2, 3, 4], shape: [2, 2] } };
  assertClose(
    one({ op: "pad", inputs: [0], attrs: { before: [1, 0], after: [0, 2] }, shape: [3, 4], dtype: "f32" }, [2, 2], x22),
    [0, 0, 0, 0, 1, -2, 0, 0, 3, 4, 0, 0],
  );
});

Deno.test("concat, expand, gather", async () => {
  const feed = {
    a: { data: [1, 2], shape: [2, 1] },
    b: { data: [3, 4, 5, 6], shape: [2, 2] },
    c: { data: [7, 8], shape: [2, 1] },
  };
  const cat: Node[] = [inp("a", [2, 1]), inp("b", [2, 2]), inp("c", [2, 1]), {
    op: "concat",
    inputs: [0, 1, 2],
    attrs: { axis: 1 },
    shape: [2, 4],
    dtype: "f32",
  }];
  assertClose(last(cat, feed), [1, 3, 4, 7, 2, 5, 6, 8]);
  const cat0: Node[] = [inp("a", [2, 1]), inp("c", [2, 1]), {
    op: "concat",
    inputs: [0, 1, 0],
    attrs: { axis: 0 },
    shape: [6, 1],
    dtype: "f32",
  }];
  assertClose(last(cat0, feed), [1, 2, 7, 8, 1, 2]);

  const ex: Node[] = [inp("a", [3, 1]), { op: "expand", inputs: [0], attrs: {}, shape: [2, 3, 2], dtype: "f32" }];
  assertClose(last(ex, { a: { data: [1, -2, 3], shape: [3, 1] } }), [1, 1, -2, -2, 3, 3, 1, 1, -2, -2, 3, 3]);

  const ga = (xs: number[], is: number[], axis: number, out: number[], x: number[], idx: number[]) =>
    last([inp("x", xs), inp("i", is, "i32"), {
      op: "gather",
      inputs: [0, 1],
      attrs: { axis },
      shape: out,
      dtype: "f32",
    }], {
      x: { data: x, shape: xs },
      i: { data: idx, shape: is },
    });
  // Rows of a [3,2] by 2-D indices.
  assertClose(ga([3, 2], [2, 2], 0, [2, 2, 2], range(6, 1), [2, 0, 1, 2]), [5, 6, 1, 2, 3, 4, 5, 6]);
  // Columns of a [2,3] by 2-D indices: out shape [2] + [2,2].
  assertClose(ga([2, 3], [2, 2], 1, [2, 2, 2], [10, 20, 30, 40, 50, 60], [0, 2, 2, 1]), [
    10,
    30,
    30,
    20,
    40,
    60,
    60,
    50,
  ]);
  // Scalar index removes the axis; negative indices count from the end as in numpy.take.
  assertClose(ga([2, 3], [], 1, [2], [10, 20, 30, 40, 50, 60], [-1]), [30, 60]);
  await assertThrows(() => ga([3, 2], [2], 0, [2, 2], range(6), [0, 3]), "out of range");
  await assertThrows(() => ga([3, 2], [2], 0, [2, 2], range(6), [-4, 0]), "out of range");
});

Deno.test("cast, const, stop_gradient", () => {
  const x = { data: [-2.7, -0.5, 0.5, 2.9, 0], shape: [5] };
  const cast = (dtype: DType, from: DType = "f32", xx = x) =>
    last([inp("a", [5], from), { op: "cast", inputs: [0], attrs: {}, shape: [5], dtype }], { a: xx });
  assertClose(cast("i32"), [-2, 0, 0, 2, 0]);
  assertClose(cast("bool", "f32", { data: [0, -1, 0.5, NaN, -0], shape: [5] }), [0, 1, 1, 1, 0]);
  assertClose(cast("f32"), x.data);
  assertClose(cast("f32", "bool", { data: [1, 0, 1, 1, 0], shape: [5] }), [1, 0, 1, 1, 0]);
  assertClose(cast("f32", "i32", { data: [-3, 7, 0, 1, 2], shape: [5] }), [-3, 7, 0, 1, 2]);

  const k: Node[] = [
    { op: "const", inputs: [], attrs: { data: new Float32Array([0.5, -1.25]) }, shape: [2], dtype: "f32" },
    { op: "const", inputs: [], attrs: { data: new Int32Array([3, -4]) }, shape: [2], dtype: "i32" },
    { op: "mul", inputs: [0, 1], attrs: {}, shape: [2], dtype: "f32" },
    { op: "stop_gradient", inputs: [2], attrs: {}, shape: [2], dtype: "f32" },
  ];
  assertClose(last(k, {}), [1.5, 5]);
});

Deno.test("traced shape mismatches and bad graphs are reported", async () => {
  const bad: Node[] = [inp("a", [2, 3]), inp("b", [3]), {
    op: "add",
    inputs: [0, 1],
    attrs: {},
    shape: [3, 2],
    dtype: "f32",
  }];
  const feed = { a: { data: range(6), shape: [2, 3] }, b: { data: range(3), shape: [3] } };
  await assertThrows(() => last(bad, feed), "traced as [3,2]");
  await assertThrows(
    () => last(op("add", [[2, 3], [2]], [2, 3]), { ...feed, b: { data: [1, 2], shape: [2] } }),
    "broadcast",
  );
  await assertThrows(() => last(op("add", [[2, 3], [3]], [2, 3]), { a: feed.a }), 'missing input "b"');
  await assertThrows(
    () => last(op("add", [[2, 3], [3]], [2, 3]), { ...feed, a: { data: range(6), shape: [3, 2] } }),
    '"a"',
  );
  await assertThrows(
    () => evaluate({ nodes: [{ op: "neg", inputs: [0], attrs: {}, shape: [], dtype: "f32" }], outputs: [] }, {}),
    "not an earlier one",
  );
});

// ---------------------------------------------------------------------------------------------------------------------
// Executor contract

Deno.test("ReferenceExecutor: upload, read, prepare, run, dispose", async () => {
  const ex = new ReferenceExecutor();
  assertEq(ex.name, "reference");
  const graph: Graph = {
    nodes: [
      inp("x", [2, 2]),
      inp("i", [2], "i32"),
      { op: "exp", inputs: [0], attrs: {}, shape: [2, 2], dtype: "f32" },
      { op: "sum", inputs: [2], attrs: { axes: [1], keepdims: false }, shape: [2], dtype: "f32" },
      { op: "greater", inputs: [3, 0], attrs: {}, shape: [2, 2], dtype: "bool" },
      { op: "gather", inputs: [0, 1], attrs: { axis: 1 }, shape: [2, 2], dtype: "f32" },
      { op: "cast", inputs: [5], attrs: {}, shape: [2, 2], dtype: "i32" },
    ],
    outputs: [{ name: "s", node: 3 }, { name: "gt", node: 4 }, { name: "n", node: 6 }, { name: "x", node: 0 }],
  };
  const p = await ex.prepare(graph);
  assertEq(p.inputNames, ["x", "i"]);
  assertEq(p.outputNames, ["s", "gt", "n", "x"]);
  const x = ex.upload(new Float32Array([0, 1, 2.5, -1.5]), [2, 2], "f32");
  const i = ex.upload(new Int32Array([1, 0]), [2], "i32");
  assertEq(ex.liveBuffers(), 2);
  const out = await p.run({ x, i });
  assertEq(ex.liveBuffers(), 6);
  const s = await ex.read(out.s);
  if (!(s instanceof Float64Array)) throw new Error("f32 reads as Float64Array");
  assertClose(s, [1 + Math.E, Math.exp(2.5) + Math.exp(-1.5)], 1e-12);
  const gt = await ex.read(out.gt);
  if (!(gt instanceof Uint8Array)) throw new Error("bool reads as Uint8Array");
  assertClose(gt, [1, 1, 1, 1]);
  const n = await ex.read(out.n);
  if (!(n instanceof Int32Array)) throw new Error("i32 reads as Int32Array");
  assertClose(n, [1, 0, -1, 2]);
  assertEq(out.gt.dtype, "bool");
  assertEq(out.n.shape, [2, 2]);
  // An output that is an input comes back as a new buffer.
  if (out.x === x) throw new Error("output aliases the input buffer");
  assertClose(await ex.read(out.x), [0, 1, 2.5, -1.5]);

  // Uploads accept any host type and convert to the dtype.
  const b = ex.upload(new Float64Array([0, 2, -0.5]), [3], "bool");
  assertClose(await ex.read(b), [0, 1, 1]);
  const j = ex.upload(new Float32Array([1.9, -1.9]), [2], "i32");
  assertClose(await ex.read(j), [1, -1]);
  await assertThrows(() => ex.upload(new Float32Array(3), [2, 2], "f32"), "3 values");

  await assertThrows(() => p.run({ x }), 'missing input "i"');
  await assertThrows(() => p.run({ x: i, i }), '"x"');
  const wrongShape = ex.upload(new Float32Array(4), [4], "f32");
  await assertThrows(() => p.run({ x: wrongShape, i }), 'input "x"');

  for (const buf of [x, i, b, j, wrongShape, ...Object.values(out)]) ex.dispose(buf);
  assertEq(ex.liveBuffers(), 0);
  await assertThrows(() => ex.dispose(x), "already disposed");
  await assertThrows(() => ex.read(x), "already disposed");
  await assertThrows(() => p.run({ x, i }), "already disposed");
  await p.dispose();
  await assertThrows(() => p.run({}), "disposed Prepared");
  ex.upload(new Uint8Array([1]), [1], "bool");
  await ex.close();
  assertEq(ex.liveBuffers(), 0);
});

Deno.test("intermediates used by several nodes survive until their last use", () => {
  // x feeds nodes 1 and 3; node 1 feeds 2 and 4; a dead node (5) is computed and dropped.
  const nodes: Node[] = [
    inp("x", [3]),
    { op: "exp", inputs: [0], attrs: {}, shape: [3], dtype: "f32" },
    { op: "neg", inputs: [1], attrs: {}, shape: [3], dtype: "f32" },
    { op: "add", inputs: [0, 2], attrs: {}, shape: [3], dtype: "f32" },
    { op: "mul", inputs: [3, 1], attrs: {}, shape: [3], dtype: "f32" },
    { op: "sin", inputs: [4], attrs: {}, shape: [3], dtype: "f32" },
  ];
  const r = evaluate({ nodes, outputs: [{ name: "a", node: 4 }, { name: "b", node: 1 }] }, {
    x: { data: [0, 1, -1], shape: [3] },
  });
  assertClose(r.a, [0, 1, -1].map((v) => (v - Math.exp(v)) * Math.exp(v)), 1e-14);
  assertClose(r.b, [1, Math.E, 1 / Math.E], 1e-15);
});

Deno.test("conv 2x8x16x16 3x3 and 256x256 matmul are fast enough", () => {
  const r = rng(3);
  const attrs = plain(1, [1, 1, 1, 1]);
  const xs = [2, 8, 16, 16], ws = [8, 8, 3, 3];
  const x = range(4096).map(r), w = range(576).map(r), g = range(4096).map(r);
  let t = performance.now();
  conv(xs, ws, xs, attrs, x, w, g);
  const convMs = performance.now() - t;
  const a = range(65536).map(r);
  t = performance.now();
  last(op("matmul", [[256, 256], [256, 256]], [256, 256]), {
    a: { data: a, shape: [256, 256] },
    b: { data: a, shape: [256, 256] },
  });
  const mmMs = performance.now() - t;
  if (convMs > 1000 || mmMs > 1000) throw new Error(`too slow: conv ${convMs} ms, matmul ${mmMs} ms`);
});
