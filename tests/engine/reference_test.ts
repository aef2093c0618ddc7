/**
 * Tests of the reference executor: each primitive on small hand-computed cases (the convolutions in
 * reference_conv_test.ts), erf against known values, and the Executor contract (buffers, dtypes, errors).
 */
import type { DType, Graph, Node } from "../../engine/ir.ts";
import { evaluate, ReferenceExecutor } from "../../engine/executors/reference.ts";
import {
  assertClose,
  assertEq,
  assertThrows,
  type Feed,
  inp,
  last,
  op,
  range,
  rng,
} from "../helpers/reference_helpers.ts";

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
