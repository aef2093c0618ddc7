/**
 * Lowers an IR graph to one ONNX model (opset 17) that onnxruntime runs: one small pattern of standard ops per IR
 * primitive, so a whole training step stays an ordinary inference graph.
 *
 * Value and node names are short base-36 counters under a prefix no input or output name starts with, so they never
 * clash with the caller's names and a 30k-node graph stays small.
 *
 * @module
 */
import { type ConvAttrs, type DType, type Graph, type Node, size } from "../ir.ts";
import {
  type AttrDef,
  DataType,
  type DataTypeCode,
  encodeModel,
  int64Raw,
  type NodeDef,
  type TensorDef,
  typedRaw,
  type ValueInfoDef,
} from "./proto.ts";

/** Which onnxruntime executor the model is for; picks between lowerings that are fastest on each. */
export type OnnxTarget = "cpu" | "wasm" | "webgpu";

/** The opset every lowered model imports. */
export const OPSET = 17;

/**
 * Most elements one reduction stage may fold. One-stage sums over ~262k elements lost precision in onnxruntime, and
 * llvmpipe's WebGPU stops any shader loop after 65,535 iterations, so longer reductions go in stages.
 */
export const REDUCE_STAGE_LIMIT = 4096;

const UNARY: Record<string, string> = {
  neg: "Neg",
  exp: "Exp",
  log: "Log",
  sqrt: "Sqrt",
  reciprocal: "Reciprocal",
  sin: "Sin",
  cos: "Cos",
  tanh: "Tanh",
  sigmoid: "Sigmoid",
  erf: "Erf",
  abs: "Abs",
  sign: "Sign",
};
const BINARY: Record<string, string> = {
  add: "Add",
  sub: "Sub",
  mul: "Mul",
  div: "Div",
  pow: "Pow",
  maximum: "Max",
  minimum: "Min",
  less: "Less",
  greater: "Greater",
  equal: "Equal",
};

/** The ONNX element type of an IR dtype. */
export function onnxType(d: DType): DataTypeCode {
  return d === "f32" ? DataType.FLOAT : d === "i32" ? DataType.INT32 : DataType.BOOL;
}

/** Accumulates ONNX nodes and initializers, handing out fresh names. */
class Builder {
  readonly nodes: NodeDef[] = [];
  readonly inits: TensorDef[] = [];
  private next = 0;
  private readonly shared = new Map<string, string>();

  constructor(private readonly prefix: string) {}

  fresh(): string {
    return `${this.prefix}${(this.next++).toString(36)}`;
  }

  /** Emits one node with one output (named `out`, or fresh) and returns the output's name. */
  op(opType: string, inputs: readonly string[], attrs?: AttrDef[], out?: string): string {
    const o = out ?? this.fresh();
    this.nodes.push({ opType, inputs, outputs: [o], name: `${this.prefix}n${this.nodes.length.toString(36)}`, attrs });
    return o;
  }

  init(dataType: DataTypeCode, dims: readonly number[], raw: Uint8Array, name = this.fresh()): string {
    this.inits.push({ name, dataType, dims, raw });
    return name;
  }

  /** A 1-D int64 initializer (shapes, axes, pads), shared between every node that needs the same values. */
  i64(values: readonly number[]): string {
    const key = `i64:${values.join(",")}`;
    let name = this.shared.get(key);
    if (name === undefined) {
      name = this.init(DataType.INT64, [values.length], int64Raw(values));
      this.shared.set(key, name);
    }
    return name;
  }

  /** A 1-D float32 initializer of `n` ones (a unit scale), shared by length. */
  onesF32(n: number): string {
    const key = `ones:${n}`;
    let name = this.shared.get(key);
    if (name === undefined) {
      name = this.init(DataType.FLOAT, [n], typedRaw(new Float32Array(n).fill(1)));
      this.shared.set(key, name);
    }
    return name;
  }

  /** A scalar initializer of an IR dtype, shared by value. */
  scalar(dtype: DType, v: number): string {
    const key = `${dtype}:${v}`;
    let name = this.shared.get(key);
    if (name === undefined) {
      const data = dtype === "f32"
        ? new Float32Array([v])
        : dtype === "i32"
        ? new Int32Array([v])
        : new Uint8Array([v ? 1 : 0]);
      name = this.init(onnxType(dtype), [], typedRaw(data));
      this.shared.set(key, name);
    }
    return name;
  }

  reshape(x: string, shape: readonly number[], out?: string): string {
    return this.op("Reshape", [x, this.i64(shape)], undefined, out);
  }

  transpose(x: string, perm: readonly number[], out?: string): string {
    return this.op("Transpose", [x], [{ name: "perm", ints: perm }], out);
  }
}

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
 * Emits a reduction in stages of at most `REDUCE_STAGE_LIMIT` elements each (keepdims throughout, so axis numbers stay
 * put), then reshapes to the IR's output shape.
 */
function lowerReduce(
  b: Builder,
  kind: "sum" | "max",
  x: string,
  shape: readonly number[],
  dtype: DType,
  axesIn: readonly number[],
  keepdims: boolean,
  outShape: readonly number[],
  out: string,
): string {
  const rank = shape.length;
  const axes = [...new Set(axesIn.map((a) => (a < 0 ? a + rank : a)))].sort((p, q) => p - q);
  const opType = kind === "sum" ? "ReduceSum" : "ReduceMax";
  // ReduceSum takes axes as an input since opset 13, ReduceMax as an attribute until opset 18.
  const stage = (v: string, ax: number[], keep: boolean, o?: string) =>
    kind === "sum"
      ? b.op(opType, [v, b.i64(ax)], [{ name: "keepdims", i: keep ? 1 : 0 }], o)
      : b.op(opType, [v], [{ name: "axes", ints: ax }, { name: "keepdims", i: keep ? 1 : 0 }], o);
  if (axes.length === 0) return b.reshape(x, outShape, out);
  const total = axes.reduce((p, a) => p * shape[a], 1);
  if (total <= REDUCE_STAGE_LIMIT) return stage(x, axes, keepdims, out);

  // Split every reduced axis longer than the limit into factors that fit, padding it first if it has a big prime.
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
  for (let a = dims.length - 1; a >= 0; a--) {
    if (!reduced[a]) continue;
    if (prod * dims[a] > REDUCE_STAGE_LIMIT && group.length > 0) {
      v = stage(v, group.sort((p, q) => p - q), true);
      group = [];
      prod = 1;
    }
    group.push(a);
    prod *= dims[a];
  }
  v = stage(v, group.sort((p, q) => p - q), true);
  return b.reshape(v, outShape, out);
}

type ConvNode = Extract<Node, { attrs: ConvAttrs }>;

/**
 * Input gradient as a plain Conv: gy dilated by the stride (zeros between rows and columns), correlated with the
 * kernel flipped in space and with its in/out channels swapped within each group.
 */
function gradInputConv(
  b: Builder,
  n: ConvNode,
  gy: string,
  w: string,
  gs: number[],
  ws: number[],
  out: string,
): string {
  const [N, O, Ho, Wo] = gs;
  const [, Ig, kh, kw] = ws;
  const [, , H, W] = n.shape;
  const { stride: [sh, sw], pad, groups: G } = n.attrs;
  let d = gy, Lh = Ho, Lw = Wo;
  if (sh > 1 || sw > 1) {
    d = b.reshape(d, [N, O, Ho, 1, Wo, 1]);
    d = b.op("Pad", [d, b.i64([0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1])]);
    Lh = Ho * sh;
    Lw = Wo * sw;
    d = b.reshape(d, [N, O, Lh, Lw]);
  }
  // Output row i reads dilated rows i + pad_top − (kh − 1) … i + pad_top; pads outside the data become crops.
  let top = kh - 1 - pad[0], left = kw - 1 - pad[1];
  let bottom = H - Lh + pad[0], right = W - Lw + pad[1];
  const cs = [Math.max(0, -top), Math.max(0, -left)], ce = [Lh + Math.min(0, bottom), Lw + Math.min(0, right)];
  if (cs[0] > 0 || cs[1] > 0 || ce[0] < Lh || ce[1] < Lw) d = b.op("Slice", [d, b.i64(cs), b.i64(ce), b.i64([2, 3])]);
  [top, left, bottom, right] = [top, left, bottom, right].map((p) => Math.max(0, p));
  const flipped = b.op("Slice", [
    w,
    b.i64([kh - 1, kw - 1]),
    b.i64([-kh - 1, -kw - 1]),
    b.i64([2, 3]),
    b.i64([-1, -1]),
  ]);
  const wt = G === 1 ? b.transpose(flipped, [1, 0, 2, 3]) : b.reshape(
    b.transpose(b.reshape(flipped, [G, O / G, Ig, kh, kw]), [0, 2, 1, 3, 4]),
    [G * Ig, O / G, kh, kw],
  );
  return b.op("Conv", [d, wt], [
    { name: "kernel_shape", ints: [kh, kw] },
    { name: "pads", ints: [top, left, bottom, right] },
    { name: "group", i: G },
  ], out);
}

/** Conv attributes shared by the forward conv and the ConvTranspose of its input gradient. */
function convAttrs(n: ConvNode, kh: number, kw: number): AttrDef[] {
  const { stride, pad, groups } = n.attrs;
  return [
    { name: "kernel_shape", ints: [kh, kw] },
    { name: "strides", ints: stride },
    { name: "pads", ints: pad },
    { name: "group", i: groups },
  ];
}

/**
 * Weight gradient as one Conv over batch-transposed tensors: the batch becomes the channel axis being summed over,
 * and gy becomes the kernel, dilated by the forward stride.
 */
function gradWeightConv(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const { stride, pad, groups: g } = n.attrs;
  const [N, Cin, H, W] = xs;
  const [, , Ho, Wo] = gs;
  const [, cg, kh, kw] = n.shape;
  const xt = g === 1
    ? b.transpose(x, [1, 0, 2, 3])
    : b.reshape(b.transpose(b.reshape(x, [N, g, Cin / g, H, W]), [2, 1, 0, 3, 4]), [cg, g * N, H, W]);
  const gt = b.transpose(gy, [1, 0, 2, 3]);
  // End pads that make the output exactly kh x kw; when that would be negative, pad 0 and slice the rest off.
  const endH = kh + (Ho - 1) * stride[0] - H - pad[0];
  const endW = kw + (Wo - 1) * stride[1] - W - pad[1];
  let r = b.op("Conv", [xt, gt], [
    { name: "kernel_shape", ints: [Ho, Wo] },
    { name: "dilations", ints: stride },
    { name: "strides", ints: [1, 1] },
    { name: "pads", ints: [pad[0], pad[1], Math.max(0, endH), Math.max(0, endW)] },
    { name: "group", i: g },
  ]);
  if (endH < 0 || endW < 0) r = b.op("Slice", [r, b.i64([0, 0]), b.i64([kh, kw]), b.i64([2, 3])]);
  return b.transpose(r, [1, 0, 2, 3], out);
}

/**
 * The kh*kw strided windows of the zero-padded input that meet each kernel tap, in tap order, each [Cin, N*Ho*Wo]:
 * the shared first half of the MatMul and Gemm weight-gradient lowerings.
 */
function paddedWindows(b: Builder, n: ConvNode, x: string, xs: number[], gs: number[]): string[] {
  const { stride, pad } = n.attrs;
  const [N, Cin] = xs;
  const [, , Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  let xp = b.transpose(x, [1, 0, 2, 3]);
  if (pad.some((p) => p !== 0)) xp = b.op("Pad", [xp, b.i64([0, 0, pad[0], pad[1], 0, 0, pad[2], pad[3]])]);
  const windows: string[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const s = b.op("Slice", [
        xp,
        b.i64([i, j]),
        b.i64([i + (Ho - 1) * stride[0] + 1, j + (Wo - 1) * stride[1] + 1]),
        b.i64([2, 3]),
        b.i64(stride),
      ]);
      windows.push(b.reshape(s, [Cin, N * Ho * Wo]));
    }
  }
  return windows;
}

/**
 * Weight gradient (groups 1) as one batched MatMul over the kh*kw strided windows of the padded input:
 * [kh*kw, Cin, N*Ho*Wo] x [N*Ho*Wo, Cout]. The previous cpu default, kept as a measured alternative (it copies every
 * window once more, into the concatenation).
 */
function gradWeightMatMul(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const [N, Cin] = xs;
  const [, Cout, Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  const k = N * Ho * Wo;
  const windows = paddedWindows(b, n, x, xs, gs).map((w) => b.reshape(w, [1, Cin, k]));
  const cols = windows.length === 1 ? windows[0] : b.op("Concat", windows, [{ name: "axis", i: 0 }]);
  const gyt = b.reshape(b.transpose(gy, [0, 2, 3, 1]), [k, Cout]);
  const prod = b.op("MatMul", [cols, gyt]); // [kh*kw, Cin, Cout]
  return b.reshape(b.transpose(prod, [2, 1, 0]), [Cout, Cin, kh, kw], out);
}

/**
 * Weight gradient (groups 1) as one Gemm per kh*kw window of the padded input, gy [Cout, N*Ho*Wo] times the window
 * [Cin, N*Ho*Wo] transposed (Gemm's transB, no copy), each [Cout, Cin] result becoming one kernel tap. Unlike
 * `gradWeightMatMul` it never concatenates the windows (kh*kw copies of the input) nor transposes the product.
 */
function gradWeightGemm(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const [N, Cin] = xs;
  const [, Cout, Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  const gyt = b.reshape(b.transpose(gy, [1, 0, 2, 3]), [Cout, N * Ho * Wo]);
  const taps = paddedWindows(b, n, x, xs, gs).map((w) =>
    b.reshape(b.op("Gemm", [gyt, w], [{ name: "transB", i: 1 }]), [Cout, Cin, 1]) // one [Cout, Cin] tap
  );
  if (taps.length === 1) return b.reshape(taps[0], [Cout, Cin, kh, kw], out);
  return b.reshape(b.op("Concat", taps, [{ name: "axis", i: 2 }]), [Cout, Cin, kh, kw], out);
}

/** Lowers one IR node, writing its value to `out`. */
function lowerNode(
  b: Builder,
  g: Graph,
  n: Node,
  ins: string[],
  out: string,
  target: OnnxTarget,
  gradWeight: GradWeightLowering,
): string {
  const inShape = (k: number) => g.nodes[n.inputs[k]].shape;
  switch (n.op) {
    case "input":
    case "const":
      throw new Error("unreachable");
    case "where":
      return b.op("Where", ins, undefined, out);
    case "sum":
    case "max":
      return lowerReduce(
        b,
        n.op,
        ins[0],
        inShape(0),
        n.dtype,
        n.attrs.axes,
        n.attrs.keepdims,
        n.shape,
        out,
      );
    case "matmul":
      return b.op("MatMul", ins, undefined, out);
    case "conv2d": {
      const ws = inShape(1);
      return b.op("Conv", ins, convAttrs(n, ws[2], ws[3]), out);
    }
    case "conv2d_grad_input": {
      const ws = inShape(1);
      // onnxruntime's CPU ConvTranspose goes through col2im and is ~3× slower than a Conv with the flipped kernel.
      if (target !== "webgpu") return gradInputConv(b, n, ins[0], ins[1], inShape(0), ws, out);
      const [, , H, W] = n.shape;
      const [, , Ho, Wo] = inShape(0);
      const { stride, pad } = n.attrs;
      // The forward conv ignores the last (H + pads - kh) mod stride rows; output_padding restores them as zeros.
      const oph = H + pad[0] + pad[2] - ws[2] - (Ho - 1) * stride[0];
      const opw = W + pad[1] + pad[3] - ws[3] - (Wo - 1) * stride[1];
      const attrs = convAttrs(n, ws[2], ws[3]);
      if (oph !== 0 || opw !== 0) attrs.push({ name: "output_padding", ints: [oph, opw] });
      return b.op("ConvTranspose", ins, attrs, out);
    }
    case "conv2d_grad_weight": {
      const how = n.attrs.groups === 1 ? gradWeight : "conv";
      const f = how === "gemm" ? gradWeightGemm : how === "matmul" ? gradWeightMatMul : gradWeightConv;
      return f(b, n, ins[0], ins[1], inShape(0), inShape(1), out);
    }
    case "reshape":
      return b.reshape(ins[0], n.shape, out);
    case "transpose":
      return b.transpose(ins[0], n.attrs.perm, out);
    case "slice": {
      const s = inShape(0);
      const axes: number[] = [];
      for (let a = 0; a < s.length; a++) if (n.attrs.starts[a] !== 0 || n.attrs.ends[a] !== s[a]) axes.push(a);
      if (axes.length === 0) return b.op("Identity", ins, undefined, out);
      const starts = axes.map((a) => n.attrs.starts[a]);
      const ends = axes.map((a) => n.attrs.ends[a]);
      return b.op("Slice", [ins[0], b.i64(starts), b.i64(ends), b.i64(axes)], undefined, out);
    }
    case "pad":
      if (n.attrs.before.every((p) => p === 0) && n.attrs.after.every((p) => p === 0)) {
        return b.op("Identity", ins, undefined, out);
      }
      return b.op("Pad", [ins[0], b.i64([...n.attrs.before, ...n.attrs.after])], undefined, out);
    case "concat":
      return b.op("Concat", ins, [{ name: "axis", i: n.attrs.axis }], out);
    case "expand":
      return b.op("Expand", [ins[0], b.i64(n.shape)], undefined, out);
    case "gather":
      return b.op("Gather", ins, [{ name: "axis", i: n.attrs.axis }], out);
    case "cast":
      return b.op("Cast", ins, [{ name: "to", i: onnxType(n.dtype) }], out);
    case "stop_gradient":
      return b.op("Identity", ins, undefined, out);
    case "normalize": {
      // LayerNormalization (opset 17) over the last axis, with a unit scale and no bias.
      const L = n.shape[n.shape.length - 1];
      const ones = b.onesF32(L);
      return b.op("LayerNormalization", [ins[0], ones], [
        { name: "axis", i: -1 },
        { name: "epsilon", f: n.attrs.eps },
      ], out);
    }
    case "softmax":
      // Opset ≥ 13 semantics: normalised along this one axis (not the flattened trailing axes of opset 11).
      return b.op("Softmax", ins, [{ name: "axis", i: n.attrs.axis }], out);
    case "sign":
      if (target === "webgpu" && n.dtype !== "bool") {
        // ort-web's WebGPU EP has no Sign kernel; a CPU fallback would cost two transfers per use. NaN maps to 0.
        const zero = b.scalar(n.dtype, 0);
        const pos = b.op("Cast", [b.op("Greater", [ins[0], zero])], [{ name: "to", i: onnxType(n.dtype) }]);
        const neg = b.op("Cast", [b.op("Less", [ins[0], zero])], [{ name: "to", i: onnxType(n.dtype) }]);
        return b.op("Sub", [pos, neg], undefined, out);
      }
      return b.op("Sign", ins, undefined, out);
    default: {
      const unary = UNARY[n.op];
      if (unary !== undefined) return b.op(unary, ins, undefined, out);
      const binary = BINARY[n.op];
      if (binary !== undefined) return b.op(binary, ins, undefined, out);
      throw new Error(`lowerToOnnx: no lowering for op ${(n as Node).op}`);
    }
  }
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

/** Lowerings of the conv weight gradient (groups 1; grouped ones always use `conv`). */
export type GradWeightLowering = "gemm" | "matmul" | "conv";

/** The weight-gradient lowering each target uses unless told otherwise (measured: `deno task bench`). */
export function defaultGradWeight(target: OnnxTarget): GradWeightLowering {
  return target === "webgpu" ? "conv" : "gemm";
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
      names[i] = lowerNode(b, graph, n, n.inputs.map((j) => names[j]), direct.get(i) ?? b.fresh(), target, gradWeight);
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
