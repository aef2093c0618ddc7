/**
 * The reference executor: a plain float64 interpreter of the IR.
 *
 * It is the oracle every other executor and every gradient is checked against, so it favours being obviously right
 * over being fast: one straightforward kernel per primitive (the `KERNELS` table over `reference_kernels.ts`), float64
 * throughout, and every traced shape re-derived from the operands and checked. Every dtype is held as a Float64Array
 * (bools as 0/1, int32 as integral doubles).
 *
 * @module
 */
import {
  type BinaryOp,
  type CompareOp,
  type DType,
  type Graph,
  graphInputs,
  type Node,
  type NodeOf,
  type Op,
  size,
  type UnaryOp,
} from "../ir.ts";
import type { Buffer, Executor, HostArray, Prepared, PrepareOptions } from "./executor.ts";
import * as K from "./reference_kernels.ts";

function fail(msg: string): never {
  throw new Error(`reference: ${msg}`);
}

const fmt = (shape: readonly number[]) => `[${shape.join(",")}]`;

/**
 * Brings values into their dtype's domain: bool → 0/1 (x ≠ 0, so NaN is true as in numpy), i32 → truncated toward
 * zero and wrapped like int32 arithmetic. Copies only when something changes, because `data` may be shared with
 * another node or a caller's buffer.
 */
function toDType(data: Float64Array, dtype: DType): Float64Array {
  if (dtype === "f32") return data;
  const conv = dtype === "bool" ? (v: number) => (v !== 0 ? 1 : 0) : (v: number) => v | 0;
  let i = 0;
  while (i < data.length && conv(data[i]) === data[i]) i++;
  if (i === data.length) return data;
  const out = data.slice();
  for (; i < out.length; i++) out[i] = conv(out[i]);
  return out;
}

function checkShape(shape: readonly number[], what: string): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) fail(`${what}: bad shape ${shape}`);
}

/** What one primitive's kernel sees: its node (attrs narrowed to the primitive's), its operands, and the feeds. */
type Kernel<O extends Op> = {
  /** Operand count, checked before the graph runs; `variadic` is one or more. */
  arity: number | "variadic";
  run: (node: NodeOf<O>, args: K.Tensor[], feed: (name: string) => Float64Array) => K.Tensor;
};

const unary: Kernel<UnaryOp> = { arity: 1, run: (node, [a]) => K.unary(node.op, a) };
const binary: Kernel<BinaryOp | CompareOp> = { arity: 2, run: (node, [a, b]) => K.binary(node.op, a, b) };
/** Values that pass through: casting itself is `toDType`, applied to every node's result. */
const identity: Kernel<Op> = { arity: 1, run: (_node, [a]) => a };

/**
 * The kernel of every primitive. Typed by primitive, so that a primitive added to the IR without a reference kernel
 * fails `deno check` rather than a run.
 */
const KERNELS: { [O in Op]: Kernel<O> } = {
  input: { arity: 0, run: (node, _args, feed) => ({ data: feed(node.attrs.name), shape: node.shape }) },
  const: {
    arity: 0,
    run: (node) => {
      if (node.attrs.data.length !== size(node.shape)) {
        fail(`const has ${node.attrs.data.length} values for shape ${fmt(node.shape)}`);
      }
      return { data: Float64Array.from(node.attrs.data), shape: node.shape };
    },
  },
  neg: unary,
  exp: unary,
  log: unary,
  sqrt: unary,
  reciprocal: unary,
  sin: unary,
  cos: unary,
  tanh: unary,
  sigmoid: unary,
  erf: unary,
  abs: unary,
  sign: unary,
  add: binary,
  sub: binary,
  mul: binary,
  div: binary,
  pow: binary,
  maximum: binary,
  minimum: binary,
  less: binary,
  greater: binary,
  equal: binary,
  where: { arity: 3, run: (_node, [a, b, c]) => K.where(a, b, c) },
  sum: { arity: 1, run: (node, [a]) => K.reduce(node.op, a, node.attrs.axes, node.attrs.keepdims) },
  max: { arity: 1, run: (node, [a]) => K.reduce(node.op, a, node.attrs.axes, node.attrs.keepdims) },
  matmul: { arity: 2, run: (_node, [a, b]) => K.matmul(a, b) },
  conv2d: { arity: 2, run: (node, [a, b]) => K.conv2d(a, b, node.attrs) },
  conv2d_grad_input: { arity: 2, run: (node, [a, b]) => K.conv2dGradInput(a, b, node.attrs, node.shape) },
  conv2d_grad_weight: { arity: 2, run: (node, [a, b]) => K.conv2dGradWeight(a, b, node.attrs, node.shape) },
  reshape: { arity: 1, run: (node, [a]) => K.reshape(a, node.shape) },
  transpose: { arity: 1, run: (node, [a]) => K.transpose(a, node.attrs.perm) },
  slice: { arity: 1, run: (node, [a]) => K.slice(a, node.attrs.starts, node.attrs.ends) },
  pad: { arity: 1, run: (node, [a]) => K.pad(a, node.attrs.before, node.attrs.after) },
  concat: { arity: "variadic", run: (node, args) => K.concat(args, node.attrs.axis) },
  expand: { arity: 1, run: (node, [a]) => K.expand(a, node.shape) },
  gather: { arity: 2, run: (node, [a, b]) => K.gather(a, b, node.attrs.axis) },
  cast: identity,
  softmax: { arity: 1, run: (node, [a]) => K.softmax(a, node.attrs.axis) },
  normalize: { arity: 1, run: (node, [a]) => K.normalize(a, node.attrs.eps) },
  stop_gradient: identity,
};

/** The kernel of `op`, or undefined for an op the table lacks (a hand-built graph can carry one past the checker). */
function kernelOf(op: string): Kernel<Op> | undefined {
  // Each entry accepts only its own primitive's node, which looking it up by the node's op guarantees.
  const table = KERNELS as unknown as Partial<Record<string, Kernel<Op>>>;
  return Object.hasOwn(table, op) ? table[op] : undefined;
}

/** Checks the structure the interpreter relies on: known ops, operand counts, topological order, valid outputs. */
function validate(graph: Graph): void {
  graph.nodes.forEach((node, i) => {
    checkShape(node.shape, `node ${i} (${node.op})`);
    // An unknown op is checked as unary here and reported by name when it runs.
    const arity = kernelOf(node.op)?.arity ?? 1;
    if (arity === "variadic" ? node.inputs.length < 1 : node.inputs.length !== arity) {
      fail(`node ${i} (${node.op}) has ${node.inputs.length} inputs`);
    }
    for (const j of node.inputs) {
      if (!Number.isInteger(j) || j < 0 || j >= i) {
        fail(`node ${i} (${node.op}) refers to node ${j}, not an earlier one`);
      }
    }
  });
  for (const o of graph.outputs) {
    if (!Number.isInteger(o.node) || o.node < 0 || o.node >= graph.nodes.length) {
      fail(`output "${o.name}" refers to missing node ${o.node}`);
    }
  }
}

/** Evaluates one node from its operands (whose shapes are their nodes' traced shapes). */
function evalNode(node: Node, args: K.Tensor[], feed: (name: string) => Float64Array): K.Tensor {
  const kernel = kernelOf(node.op);
  if (kernel === undefined) return fail(`unknown op ${node.op}`);
  return kernel.run(node, args, feed);
}

/**
 * Runs a validated graph, returning the outputs' data in `graph.outputs` order. Values are dropped after their last
 * reader so that peak memory is that of a real executor rather than the whole graph.
 */
function execute(graph: Graph, feed: (name: string) => Float64Array): Float64Array[] {
  const nodes = graph.nodes;
  const lastUse = nodes.map((_, i) => i);
  nodes.forEach((n, i) => n.inputs.forEach((j) => lastUse[j] = i));
  for (const o of graph.outputs) lastUse[o.node] = nodes.length;
  const values: (Float64Array | undefined)[] = new Array(nodes.length);
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i];
    const args = node.inputs.map((j) => ({ data: values[j]!, shape: nodes[j].shape }));
    let r: K.Tensor;
    try {
      r = evalNode(node, args, feed);
    } catch (e) {
      // Name the node so a failure deep in a traced graph can be found.
      throw new Error(`${(e as Error).message} (at node ${i}: ${node.op})`, { cause: e });
    }
    if (!K.sameShape(r.shape, node.shape)) {
      fail(`node ${i} (${node.op}) computes shape ${fmt(r.shape)} but was traced as ${fmt(node.shape)}`);
    }
    values[i] = toDType(r.data, node.dtype);
    for (const j of node.inputs) if (lastUse[j] === i) values[j] = undefined;
    if (lastUse[i] === i) values[i] = undefined;
  }
  return graph.outputs.map((o) => values[o.node]!);
}

/** Converts host data to the reference representation for `dtype`, checking its length. */
function hostToF64(data: ArrayLike<number>, shape: readonly number[], dtype: DType, what: string): Float64Array {
  checkShape(shape as number[], what);
  if (data.length !== size(shape)) fail(`${what}: ${data.length} values for shape ${fmt(shape)}`);
  const out = Float64Array.from(data);
  return toDType(out, dtype);
}

class RefBuffer implements Buffer {
  disposed = false;
  constructor(
    readonly owner: ReferenceExecutor,
    readonly data: Float64Array,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {}
}

class RefPrepared implements Prepared {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  #inputs: Map<string, { shape: readonly number[]; dtype: DType }>;
  #disposed = false;

  constructor(readonly exec: ReferenceExecutor, readonly graph: Graph) {
    const ins = graphInputs(graph);
    this.inputNames = ins.map((i) => i.name);
    this.outputNames = graph.outputs.map((o) => o.name);
    this.#inputs = new Map(ins.map((i) => [i.name, i]));
  }

  run(inputs: Record<string, Buffer>): Promise<Record<string, Buffer>> {
    if (this.#disposed) fail("run on a disposed Prepared");
    const feed = (name: string): Float64Array => {
      const want = this.#inputs.get(name)!;
      const buf = inputs[name];
      if (buf === undefined) fail(`missing input "${name}"`);
      const rb = this.exec.own(buf, `input "${name}"`);
      if (!K.sameShape(rb.shape, want.shape) || rb.dtype !== want.dtype) {
        fail(`input "${name}" is ${rb.dtype}${fmt(rb.shape)}, graph expects ${want.dtype}${fmt(want.shape)}`);
      }
      return rb.data;
    };
    const outs = execute(this.graph, feed);
    const result: Record<string, Buffer> = {};
    this.graph.outputs.forEach((o, k) => {
      const n = this.graph.nodes[o.node];
      // Copy: the value may alias an input buffer or another output, and each returned buffer is the caller's own.
      result[o.name] = this.exec.wrap(outs[k].slice(), n.shape, n.dtype);
    });
    return Promise.resolve(result);
  }

  dispose(): Promise<void> {
    this.#disposed = true;
    return Promise.resolve();
  }
}

/**
 * The float64 reference executor. Buffers are host Float64Arrays; `read` returns Float64Array for f32, Int32Array
 * for i32 and Uint8Array for bool. Graph inputs are checked for shape and dtype; inputs the graph lacks are ignored.
 */
export class ReferenceExecutor implements Executor {
  /** Always "reference". */
  readonly name = "reference";
  #live = new Set<RefBuffer>();

  /** Copies `data` (any host array type) into a new float64 buffer, converting to the dtype's domain. */
  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer {
    return this.wrap(hostToF64(data, shape, dtype, "upload"), shape, dtype);
  }

  /** A copy of the buffer's contents in the natural host type of its dtype. */
  read(buf: Buffer): Promise<HostArray> {
    const rb = this.own(buf, "read");
    const d = rb.data;
    if (rb.dtype === "i32") return Promise.resolve(Int32Array.from(d));
    if (rb.dtype === "bool") return Promise.resolve(Uint8Array.from(d));
    return Promise.resolve(d.slice());
  }

  /** Frees a buffer; throws if it was already disposed or belongs to another executor. */
  dispose(buf: Buffer): void {
    const rb = this.own(buf, "dispose");
    rb.disposed = true;
    this.#live.delete(rb);
  }

  /** Validates the graph and returns a session that interprets it; `opts` has no effect here. */
  prepare(graph: Graph, _opts?: PrepareOptions): Promise<Prepared> {
    validate(graph);
    return Promise.resolve(new RefPrepared(this, graph));
  }

  /** Buffers uploaded or returned by `run` and not yet disposed. */
  liveBuffers(): number {
    return this.#live.size;
  }

  /** Forgets every live buffer. */
  close(): Promise<void> {
    for (const b of this.#live) b.disposed = true;
    this.#live.clear();
    return Promise.resolve();
  }

  /** @internal Registers a new buffer over `data` (which it takes ownership of). */
  wrap(data: Float64Array, shape: readonly number[], dtype: DType): RefBuffer {
    const b = new RefBuffer(this, data, Object.freeze([...shape]), dtype);
    this.#live.add(b);
    return b;
  }

  /** @internal Checks that `buf` is a live buffer of this executor. */
  own(buf: Buffer, what: string): RefBuffer {
    if (!(buf instanceof RefBuffer) || buf.owner !== this) fail(`${what}: buffer does not belong to this executor`);
    if (buf.disposed) fail(`${what}: buffer was already disposed`);
    return buf;
  }
}

/**
 * Evaluates a graph directly on host data, for tests: every graph input must be given with its traced shape, and
 * every output comes back as a Float64Array (bools as 0/1, int32 as integral doubles).
 */
export function evaluate(
  graph: Graph,
  inputs: Record<string, { data: ArrayLike<number>; shape: readonly number[] }>,
): Record<string, Float64Array> {
  validate(graph);
  const want = new Map(graphInputs(graph).map((i) => [i.name, i]));
  const feed = (name: string): Float64Array => {
    const w = want.get(name)!;
    const given = inputs[name];
    if (given === undefined) fail(`missing input "${name}"`);
    if (!K.sameShape(given.shape, w.shape)) {
      fail(`input "${name}" has shape ${fmt(given.shape)}, graph expects ${fmt(w.shape)}`);
    }
    return hostToF64(given.data, given.shape, w.dtype, `input "${name}"`);
  };
  const outs = execute(graph, feed);
  const result: Record<string, Float64Array> = {};
  graph.outputs.forEach((o, k) => result[o.name] = outs[k].slice());
  return result;
}
