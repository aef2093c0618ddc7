/**
 * The graph IR: a flat list of nodes over a small set of primitives.
 *
 * Every tensor op in the engine is traced into one of these nodes. Shapes and dtypes are fixed while tracing, so
 * executors never infer anything. Node ids are indices into `Graph.nodes`, and a node only refers to earlier nodes,
 * so the list is always in topological order.
 *
 * @module
 */

/** Element types. Floats are float32 on real executors and float64 on the reference. */
export type DType = "f32" | "i32" | "bool";

/** A unary elementwise primitive. */
export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "reciprocal"
  | "sin"
  | "cos"
  | "tanh"
  | "sigmoid"
  | "erf"
  | "abs"
  | "sign";

/** A binary elementwise primitive, with numpy broadcasting. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum";

/** A comparison, giving bool, with numpy broadcasting. */
export type CompareOp = "less" | "greater" | "equal";

/** Attributes of a 2-D convolution (NCHW input, OIHW weight). */
export interface ConvAttrs {
  /** Kernel step, [along H, along W]. */
  stride: [number, number];
  /** Zero padding in pixels, [top, left, bottom, right]. */
  pad: [number, number, number, number];
  /** Channel groups, each convolved on its own (1: a plain convolution; input channels: depthwise). */
  groups: number;
}

/** One node of the graph. `attrs` depends on `op`; see `Attrs`. */
export type Node =
  | NodeBase<"input", { name: string }>
  | NodeBase<"const", { data: Float32Array | Int32Array | Uint8Array }>
  | NodeBase<UnaryOp, Record<string, never>>
  | NodeBase<BinaryOp, Record<string, never>>
  | NodeBase<CompareOp, Record<string, never>>
  | NodeBase<"where", Record<string, never>>
  | NodeBase<"sum" | "max", { axes: number[]; keepdims: boolean }>
  | NodeBase<"matmul", Record<string, never>>
  | NodeBase<"conv2d" | "conv2d_grad_input" | "conv2d_grad_weight", ConvAttrs>
  | NodeBase<"reshape", Record<string, never>>
  | NodeBase<"transpose", { perm: number[] }>
  | NodeBase<"slice", { starts: number[]; ends: number[] }>
  | NodeBase<"pad", { before: number[]; after: number[] }>
  | NodeBase<"concat", { axis: number }>
  | NodeBase<"expand", Record<string, never>>
  | NodeBase<"gather", { axis: number }>
  | NodeBase<"cast", Record<string, never>>
  | NodeBase<"softmax", { axis: number }>
  | NodeBase<"normalize", { eps: number }>
  | NodeBase<"stop_gradient", Record<string, never>>;

/** The fields of every node; `Node` pairs each primitive `O` with its attributes `A`. */
export interface NodeBase<O extends string, A> {
  /** The primitive this node applies. */
  op: O;
  /** Ids of the operands, each an earlier index into `Graph.nodes`. */
  inputs: number[];
  /** The primitive's attributes; `{}` for most. */
  attrs: A;
  /** Static shape of the result, fixed while tracing. */
  shape: number[];
  /** Element type of the result. */
  dtype: DType;
}

/** The primitive names. */
export type Op = Node["op"];

/**
 * The node of primitive `O`, with `attrs` narrowed to that primitive's: `NodeOf<"conv2d">` has `ConvAttrs`. Tables
 * keyed by primitive (`{ [O in Op]: (n: NodeOf<O>) => … }`) then need no casts in their entries. Not `Extract<Node,
 * { op: O }>`, which is `never` for primitives that share a variant (`NodeBase<UnaryOp, …>` is no `{ op: "neg" }`).
 */
export type NodeOf<O extends Op> = NarrowNode<Node, O>;
/** The variants of the union `N` whose `op` admits `O`, each with `op` narrowed to `O` (what `NodeOf` applies). */
export type NarrowNode<N, O> = N extends { op: infer P } ? O extends P ? N & { op: O } : never : never;

/** A traced program: nodes in topological order, and named outputs. */
export interface Graph {
  /** Every node; a node's id is its index here. */
  nodes: Node[];
  /** The named results, each the id of the node that computes it. */
  outputs: { name: string; node: number }[];
}

/** Number of elements of a shape. */
export function size(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a shape. */
export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** The graph's input nodes by name, in order of appearance. */
export function graphInputs(g: Graph): { name: string; node: number; shape: number[]; dtype: DType }[] {
  const out = [];
  for (let i = 0; i < g.nodes.length; i++) {
    const n = g.nodes[i];
    if (n.op === "input") out.push({ name: n.attrs.name, node: i, shape: n.shape, dtype: n.dtype });
  }
  return out;
}

/**
 * Removes nodes no output depends on and merges identical nodes (same op, inputs and attrs), renumbering the rest.
 * Inputs are always kept, so a graph's signature does not change with what it happens to use.
 */
export function simplify(g: Graph): Graph {
  const n = g.nodes.length;
  const live = new Uint8Array(n);
  for (const o of g.outputs) live[o.node] = 1;
  for (let i = n - 1; i >= 0; i--) {
    if (g.nodes[i].op === "input") live[i] = 1;
    if (live[i]) { for (const j of g.nodes[i].inputs) live[j] = 1; }
  }
  const remap = new Int32Array(n).fill(-1);
  const nodes: Node[] = [];
  const seen = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    if (!live[i]) continue;
    const old = g.nodes[i];
    const inputs = old.inputs.map((j) => remap[j]);
    let key: string | null = null;
    if (old.op !== "input") {
      key = old.op === "const"
        ? null
        : `${old.op}|${inputs.join(",")}|${JSON.stringify(old.attrs)}|${old.shape.join(",")}|${old.dtype}`;
      if (key !== null) {
        const hit = seen.get(key);
        if (hit !== undefined) {
          remap[i] = hit;
          continue;
        }
      }
    }
    remap[i] = nodes.length;
    if (key !== null) seen.set(key, nodes.length);
    nodes.push({ ...old, inputs } as Node);
  }
  return { nodes, outputs: g.outputs.map((o) => ({ name: o.name, node: remap[o.node] })) };
}

/**
 * `g` with the named inputs replaced by constants holding `values` (f32, one value per element of the input): for
 * weights a graph only reads, so that the executor's compiler may fold and re-lay them out once (onnxruntime's cpu
 * provider then runs convolutions on constant filters in its blocked NCHWc layout, fused with their bias and
 * activation). Node ids and outputs do not change; a name that is no f32 input, or a wrong length, is an error.
 */
export function withConstants(g: Graph, values: ReadonlyMap<string, Float32Array>): Graph {
  const found = new Set<string>();
  const nodes = g.nodes.map((n): Node => {
    if (n.op !== "input" || !values.has(n.attrs.name)) return n;
    const data = values.get(n.attrs.name)!;
    if (n.dtype !== "f32" || data.length !== size(n.shape)) {
      throw new Error(`withConstants: "${n.attrs.name}" is ${n.dtype}[${n.shape}], given ${data.length} f32 values`);
    }
    found.add(n.attrs.name);
    return { op: "const", inputs: [], attrs: { data }, shape: n.shape, dtype: "f32" };
  });
  const missing = [...values.keys()].filter((k) => !found.has(k));
  if (missing.length) throw new Error(`withConstants: no input named ${missing.map((m) => `"${m}"`).join(", ")}`);
  return { nodes, outputs: g.outputs };
}
