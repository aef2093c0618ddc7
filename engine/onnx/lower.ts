/**
 * Lowers an IR graph to one ONNX model (opset 17) that onnxruntime runs: one small pattern of standard ops per IR
 * primitive (the `LOWERINGS` table; the conv ones are in `conv.ts`), so a whole training step stays an ordinary
 * inference graph.
 *
 * Value and node names are short base-36 counters under a prefix no input or output name starts with, so they never
 * clash with the caller's names and a 30k-node graph stays small.
 *
 * @module
 */
import { type DType, type Graph, type Node, type Op, size } from "../ir.ts";
import { DataType, encodeModel, typedRaw, type ValueInfoDef } from "./proto.ts";
import {
  Builder,
  type GradWeightLowering,
  inShape,
  type LowerArgs,
  type Lowering,
  type OnnxTarget,
  onnxType,
} from "./builder.ts";
import { defaultGradWeight, lowerConv2d, lowerConv2dGradInput, lowerConv2dGradWeight } from "./conv.ts";

export { defaultGradWeight } from "./conv.ts";
export { type GradWeightLowering, type OnnxTarget, onnxType } from "./builder.ts";

/** The opset every lowered model imports. */
export const OPSET = 17;

/**
 * Most elements one reduction stage may fold. One-stage sums over ~262k elements lost precision in onnxruntime, and
 * llvmpipe's WebGPU stops any shader loop after 65,535 iterations, so longer reductions go in stages.
 */
export const REDUCE_STAGE_LIMIT = 4096;

/** Const data converted to the node's dtype, as raw bytes. */
function constRaw(data: Float32Array | Int32Array | Uint8Array, dtype: DType): Uint8Array {
  if (dtype === "f32") return typedRaw(data instanceof Float32Array ? data : Float32Array.from(data));
  if (dtype === "i32") return typedRaw(data instanceof Int32Array ? data : Int32Array.from(data));
  const b = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) b[i] = data[i] ? 1 : 0;
  return b;
}

/** Splits n into factors, each at most `limit`, or returns null when a prime factor exceeds it. */
function factorize(n: number, limit: number): number[] | null {
  const primes: number[] = [];
  let m = n;
  for (let p = 2; p * p <= m; p++) {
    while (m % p === 0) {
      primes.push(p);
      m /= p;
    }
  }
  if (m > 1) primes.push(m);
  if (primes.some((p) => p > limit)) return null;
  // Pack largest first into as few factors as possible.
  primes.sort((a, b) => b - a);
  const groups: number[] = [];
  for (const p of primes) {
    const i = groups.findIndex((g) => g * p <= limit);
    if (i >= 0) groups[i] *= p;
    else groups.push(p);
  }
  return groups.sort((a, b) => b - a);
}

/**
 * Factors of n that fit the stage limit in as few, and as even, stages as possible: 8192 as 128·64 rather than 4096·2,
 * so that no stage is a cheap pass over a tiny axis followed by a long one.
 */
function balancedFactors(n: number): number[] | null {
  const best = factorize(n, REDUCE_STAGE_LIMIT);
  if (best === null) return null;
  for (let limit = Math.ceil(Math.sqrt(n)); limit < REDUCE_STAGE_LIMIT; limit++) {
    const f = factorize(n, limit);
    if (f !== null && f.length <= best.length) return f;
  }
  return best;
}

/**
 * How a reduction over `axes` (sorted, non-negative) is staged: `dims`, the input reshaped so that every reduced axis
 * longer than the limit becomes factors that fit; `reduced`, which of those dims are reduced; `padAfter`, per
 * input axis, the padding that first gives an axis with a big prime factor a length that factors.
 */
function stagedDims(
  shape: readonly number[],
  axes: readonly number[],
): { dims: number[]; reduced: boolean[]; padAfter: number[] } {
  const rank = shape.length;
  const dims: number[] = [];
  const reduced: boolean[] = [];
  const padAfter = new Array<number>(rank).fill(0);
  for (let a = 0; a < rank; a++) {
    const n = shape[a];
    if (!axes.includes(a) || n <= REDUCE_STAGE_LIMIT) {
      dims.push(n);
      reduced.push(axes.includes(a));
      continue;
    }
    let parts = balancedFactors(n);
    if (parts === null) {
      let unit = 1;
      while (unit * REDUCE_STAGE_LIMIT < n) unit *= REDUCE_STAGE_LIMIT;
      const lead = Math.ceil(n / unit);
      padAfter[a] = lead * unit - n;
      parts = [lead];
      for (let u = unit; u > 1; u /= REDUCE_STAGE_LIMIT) parts.push(REDUCE_STAGE_LIMIT);
    }
    for (const p of parts) {
      dims.push(p);
      reduced.push(true);
    }
  }
  return { dims, reduced, padAfter };
}

/**
 * Emits a reduction in stages of at most `REDUCE_STAGE_LIMIT` elements each (keepdims throughout, so axis numbers stay
 * put), then reshapes to the IR's output shape.
 */
const lowerReduce: Lowering<"sum" | "max"> = (a) => {
  const { b, n, out } = a;
  const kind = n.op, x = a.ins[0], shape = inShape(a, 0), dtype = n.dtype;
  const rank = shape.length;
  const axes = [...new Set(n.attrs.axes.map((i) => (i < 0 ? i + rank : i)))].sort((p, q) => p - q);
  const opType = kind === "sum" ? "ReduceSum" : "ReduceMax";
  // ReduceSum takes axes as an input since opset 13, ReduceMax as an attribute until opset 18.
  const stage = (v: string, ax: number[], keep: boolean, o?: string) =>
    kind === "sum"
      ? b.op(opType, [v, b.i64(ax)], [{ name: "keepdims", i: keep ? 1 : 0 }], o)
      : b.op(opType, [v], [{ name: "axes", ints: ax }, { name: "keepdims", i: keep ? 1 : 0 }], o);
  if (axes.length === 0) return b.reshape(x, n.shape, out);
  const total = axes.reduce((p, i) => p * shape[i], 1);
  if (total <= REDUCE_STAGE_LIMIT) return stage(x, axes, n.attrs.keepdims, out);

  const { dims, reduced, padAfter } = stagedDims(shape, axes);
  let v = x;
  if (padAfter.some((p) => p > 0)) {
    // The pad value is neutral for the reduction: 0 for sums, the lowest value for max.
    const fill = kind === "sum" ? 0 : dtype === "f32" ? -Infinity : -2147483648;
    v = b.op("Pad", [v, b.i64([...new Array(rank).fill(0), ...padAfter]), b.scalar(dtype, fill)]);
  }
  if (dims.length !== rank) v = b.reshape(v, dims);

  // Innermost reduced dims first: they are contiguous in memory, so early stages read linearly.
  let group: number[] = [];
  let prod = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    if (!reduced[i]) continue;
    if (prod * dims[i] > REDUCE_STAGE_LIMIT && group.length > 0) {
      v = stage(v, group.sort((p, q) => p - q), true);
      group = [];
      prod = 1;
    }
    group.push(i);
    prod *= dims[i];
  }
  v = stage(v, group.sort((p, q) => p - q), true);
  return b.reshape(v, n.shape, out);
};

/** One ONNX op over the node's operands, without attributes: the IR primitive and the ONNX op agree exactly. */
const plain = (opType: string): Lowering<Op> => ({ b, ins, out }) => b.op(opType, ins, undefined, out);

/** The primitives that become ONNX nodes; inputs and consts become graph inputs and initializers instead. */
type ComputedOp = Exclude<Op, "input" | "const">;

/**
 * The lowering of every computed primitive. Typed by primitive, so that a primitive added to the IR without a
 * lowering fails `deno check` rather than a run.
 */
export const LOWERINGS: { [O in ComputedOp]: Lowering<O> } = {
  neg: plain("Neg"),
  exp: plain("Exp"),
  log: plain("Log"),
  sqrt: plain("Sqrt"),
  reciprocal: plain("Reciprocal"),
  sin: plain("Sin"),
  cos: plain("Cos"),
  tanh: plain("Tanh"),
  sigmoid: plain("Sigmoid"),
  erf: plain("Erf"),
  abs: plain("Abs"),
  sign: ({ b, n, ins, out, target }) => {
    if (target === "webgpu" && n.dtype !== "bool") {
      // ort-web's WebGPU EP has no Sign kernel; a CPU fallback would cost two transfers per use. NaN maps to 0.
      const zero = b.scalar(n.dtype, 0);
      const pos = b.op("Cast", [b.op("Greater", [ins[0], zero])], [{ name: "to", i: onnxType(n.dtype) }]);
      const neg = b.op("Cast", [b.op("Less", [ins[0], zero])], [{ name: "to", i: onnxType(n.dtype) }]);
      return b.op("Sub", [pos, neg], undefined, out);
    }
    return b.op("Sign", ins, undefined, out);
  },
  add: plain("Add"),
  sub: plain("Sub"),
  mul: plain("Mul"),
  div: plain("Div"),
  pow: plain("Pow"),
  maximum: plain("Max"),
  minimum: plain("Min"),
  less: plain("Less"),
  greater: plain("Greater"),
  equal: plain("Equal"),
  where: plain("Where"),
  sum: lowerReduce,
  max: lowerReduce,
  matmul: plain("MatMul"),
  conv2d: lowerConv2d,
  conv2d_grad_input: lowerConv2dGradInput,
  conv2d_grad_weight: lowerConv2dGradWeight,
  reshape: ({ b, n, ins, out }) => b.reshape(ins[0], n.shape, out),
  transpose: ({ b, n, ins, out }) => b.transpose(ins[0], n.attrs.perm, out),
  slice: (a) => {
    const { b, n, ins, out } = a;
    const s = inShape(a, 0);
    const axes: number[] = [];
    for (let i = 0; i < s.length; i++) if (n.attrs.starts[i] !== 0 || n.attrs.ends[i] !== s[i]) axes.push(i);
    if (axes.length === 0) return b.op("Identity", ins, undefined, out);
    const starts = axes.map((i) => n.attrs.starts[i]);
    const ends = axes.map((i) => n.attrs.ends[i]);
    return b.op("Slice", [ins[0], b.i64(starts), b.i64(ends), b.i64(axes)], undefined, out);
  },
  pad: ({ b, n, ins, out }) => {
    if (n.attrs.before.every((p) => p === 0) && n.attrs.after.every((p) => p === 0)) {
      return b.op("Identity", ins, undefined, out);
    }
    return b.op("Pad", [ins[0], b.i64([...n.attrs.before, ...n.attrs.after])], undefined, out);
  },
  concat: ({ b, n, ins, out }) => b.op("Concat", ins, [{ name: "axis", i: n.attrs.axis }], out),
  expand: lowerExpand,
  gather: ({ b, n, ins, out }) => b.op("Gather", ins, [{ name: "axis", i: n.attrs.axis }], out),
  cast: ({ b, n, ins, out }) => b.op("Cast", ins, [{ name: "to", i: onnxType(n.dtype) }], out),
  // Opset ≥ 13 semantics: normalised along this one axis (not the flattened trailing axes of opset 11).
  softmax: ({ b, n, ins, out }) => b.op("Softmax", ins, [{ name: "axis", i: n.attrs.axis }], out),
  // LayerNormalization (opset 17) over the last axis, with a unit scale and no bias.
  normalize: ({ b, n, ins, out }) => {
    const ones = b.onesF32(n.shape[n.shape.length - 1]);
    return b.op("LayerNormalization", [ins[0], ones], [
      { name: "axis", i: -1 },
      { name: "epsilon", f: n.attrs.eps },
    ], out);
  },
  stop_gradient: plain("Identity"),
};

/**
 * A broadcast whose every expanded axis follows another axis is a nearest-neighbour upsampling of the merged shape
 * (`[n, c, h, 1, w, 1] → [n, c, h, 2, w, 2]` is `[n, c, h, w]` twice as high and wide): on cpu and wasm that goes to
 * Resize, whose 2-D nearest kernel is about 5× faster than Expand there and copies the same values. Only images (both
 * merged spatial axes longer than 1) scaled by powers of two, where onnxruntime's index arithmetic is exact, as
 * measured; anything else stays an Expand.
 */
function upsamplePlan(inShape: readonly number[], outShape: readonly number[]): number[][] | undefined {
  const lead = outShape.length - inShape.length;
  const merged: number[] = [], scales: number[] = [];
  for (let k = 0; k < outShape.length; k++) {
    const i = k < lead ? 1 : inShape[k - lead], o = outShape[k];
    if (i === o) merged.push(i), scales.push(1);
    else if (merged.length > 0) scales[scales.length - 1] *= o;
    else merged.push(1), scales.push(o);
  }
  while (merged.length < 4) merged.unshift(1), scales.unshift(1);
  const pow2 = (f: number) => Number.isInteger(Math.log2(f));
  const image = merged.length === 4 && merged[2] > 1 && merged[3] > 1 && scales[0] === 1 && scales[1] === 1;
  if (!image || !scales.every(pow2)) return undefined;
  return [merged, scales];
}

function lowerExpand(a: LowerArgs<"expand">): string {
  const { b, n, ins, out } = a;
  const plan = a.target === "webgpu" ? undefined : upsamplePlan(inShape(a, 0), n.shape);
  if (!plan || plan[1].every((f) => f === 1)) return b.op("Expand", [ins[0], b.i64(n.shape)], undefined, out);
  const [merged, scales] = plan;
  const up = b.op("Resize", [b.reshape(ins[0], merged), "", b.f32(scales)], [
    { name: "mode", s: "nearest" },
    { name: "coordinate_transformation_mode", s: "asymmetric" },
    { name: "nearest_mode", s: "floor" },
  ]);
  return b.reshape(up, n.shape, out);
}

/** Lowers one computed node through `LOWERINGS`, writing its value to `out`. */
function lowerNode(args: Omit<LowerArgs<ComputedOp>, "n"> & { n: Node }): string {
  // Each entry accepts only its own primitive's node, which looking it up by `n.op` guarantees; hand-built graphs
  // can still carry an op the table lacks.
  const table = LOWERINGS as unknown as Partial<Record<string, Lowering<ComputedOp>>>;
  const lower = Object.hasOwn(table, args.n.op) ? table[args.n.op] : undefined;
  if (lower === undefined) throw new Error(`lowerToOnnx: no lowering for op ${args.n.op}`);
  return lower(args as LowerArgs<ComputedOp>);
}

/** A name prefix that no input or output name of the graph starts with; every generated name starts with it. */
function namePrefix(graph: Graph): string {
  const external = [
    ...graph.nodes.flatMap((n) => (n.op === "input" ? [n.attrs.name] : [])),
    ...graph.outputs.map((o) => o.name),
  ];
  let prefix = "_";
  while (external.some((s) => s.startsWith(prefix))) prefix += "_";
  return prefix;
}

/**
 * The ONNX name of each graph output, in order: its IR name, unless an input or an earlier output already has that
 * name (a step graph naturally outputs the new `w` under the input's name `w`, but an ONNX value has one producer),
 * in which case a generated one. Executors read results under these names.
 */
export function onnxOutputNames(graph: Graph): string[] {
  const prefix = namePrefix(graph);
  const taken = new Set(graph.nodes.flatMap((n) => (n.op === "input" ? [n.attrs.name] : [])));
  return graph.outputs.map((o, i) => {
    // ":" never occurs in the base-36 counters the builder hands out.
    const name = taken.has(o.name) ? `${prefix}:${i}` : o.name;
    taken.add(name);
    return name;
  });
}

/** Options of `lowerToOnnx` for models handed to other ONNX consumers. */
export interface LowerOptions {
  /**
   * i32 graph inputs to declare as int64 instead, each followed by a Cast to int32. The IR has no int64, but
   * consumers such as transformers.js feed token ids as int64.
   */
  int64Inputs?: readonly string[];
  /** How conv weight gradients are lowered; the default is the target's fastest (`defaultGradWeight`). */
  gradWeight?: GradWeightLowering;
}

/**
 * Lowers an IR graph to a serialized ONNX model (opset 17, ir_version 8).
 *
 * Input nodes become graph inputs under their IR names, consts become initializers, and each output becomes a graph
 * output named by `onnxOutputNames`. `target` picks per-executor lowerings (the conv weight gradient is one Gemm
 * per kernel tap on cpu/wasm and a Conv over batch-transposed tensors on webgpu; sign avoids a CPU fallback on webgpu).
 */
export function lowerToOnnx(graph: Graph, target: OnnxTarget, opts: LowerOptions = {}): Uint8Array {
  const int64 = new Set(opts.int64Inputs ?? []);
  const gradWeight = opts.gradWeight ?? defaultGradWeight(target);
  for (const name of int64) {
    const n = graph.nodes.find((m) => m.op === "input" && m.attrs.name === name);
    if (!n || n.dtype !== "i32") throw new Error(`lowerToOnnx: int64Inputs names "${name}", which is no i32 input`);
  }
  const b = new Builder(namePrefix(graph));
  const outNames = onnxOutputNames(graph);

  // The first output naming a computed node takes that node's ONNX value directly; later ones, inputs and consts
  // get an Identity, since ONNX needs one distinct value per graph output.
  const direct = new Map<number, string>();
  graph.outputs.forEach((o, k) => {
    const op = graph.nodes[o.node].op;
    if (op !== "input" && op !== "const" && !direct.has(o.node)) direct.set(o.node, outNames[k]);
  });

  const inputs: ValueInfoDef[] = [];
  const names: string[] = new Array(graph.nodes.length);
  graph.nodes.forEach((n, i) => {
    if (n.op === "input" && int64.has(n.attrs.name)) {
      inputs.push({ name: n.attrs.name, elemType: DataType.INT64, dims: n.shape });
      names[i] = b.op("Cast", [n.attrs.name], [{ name: "to", i: DataType.INT32 }]);
    } else if (n.op === "input") {
      names[i] = n.attrs.name;
      inputs.push({ name: n.attrs.name, elemType: onnxType(n.dtype), dims: n.shape });
    } else if (n.op === "const") {
      if (size(n.shape) !== n.attrs.data.length) {
        throw new Error(`lowerToOnnx: const node ${i} has ${n.attrs.data.length} values for shape [${n.shape}]`);
      }
      names[i] = b.init(onnxType(n.dtype), n.shape, constRaw(n.attrs.data, n.dtype));
    } else {
      const ins = n.inputs.map((j) => names[j]);
      names[i] = lowerNode({ b, g: graph, n, ins, out: direct.get(i) ?? b.fresh(), target, gradWeight });
    }
  });

  const outputs: ValueInfoDef[] = [];
  graph.outputs.forEach((o, k) => {
    const n = graph.nodes[o.node];
    if (direct.get(o.node) !== outNames[k]) b.op("Identity", [names[o.node]], undefined, outNames[k]);
    outputs.push({ name: outNames[k], elemType: onnxType(n.dtype), dims: n.shape });
  });
  return encodeModel({
    opset: OPSET,
    producer: "engine",
    graphName: "g",
    nodes: b.nodes,
    initializers: b.inits,
    inputs,
    outputs,
  });
}
