/**
 * The reference executor's convolutions: conv2d and its two gradients on small hand-computed cases (strides, pads,
 * groups), the adjoint identities ⟨conv(x), g⟩ = ⟨x, grad_input(g)⟩ = ⟨w, grad_weight(x, g)⟩ on random data, and
 * that a small conv and a 256² matmul stay fast enough for the tests that lean on the interpreter.
 */
import type { ConvAttrs, Graph } from "../../engine/ir.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { assertClose, inp, last, op, range, rng } from "../helpers/reference_helpers.ts";

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
