/**
 * Traced tensors: every op on a `Tensor` appends a node to its `Trace` and infers the result's shape and dtype at
 * once, so a mismatch is reported where the user wrote it, not when an executor runs the graph.
 *
 * @module
 */
import { type DType, type Graph, type Node, simplify } from "./ir.ts";

/** A shape mismatch or other misuse found while tracing; the message names the op, the shapes and the caller. */
export class TraceError extends Error {
  /** Set so printed errors and stack traces say TraceError rather than Error. */
  override name = "TraceError";
}

/** Where in the user's code the current op was called: the first stack frame outside the engine's own files. */
export function callerSite(): string {
  const stack = new Error().stack?.split("\n").slice(1) ?? [];
  for (const line of stack) {
    if (/\/engine\/[a-z_]+\.ts:/.test(line)) continue;
    const m = line.match(/\(?((?:file|https?|ext):\/\/[^\s)]+|\/[^\s)]+):(\d+):(\d+)\)?\s*$/);
    if (m) return `${m[1].replace(/^file:\/\//, "")}:${m[2]}:${m[3]}`;
  }
  return "<unknown>";
}

/** Throws a TraceError naming the op, what was wrong and the caller's line. */
export function fail(op: string, what: string): never {
  throw new TraceError(`${op}: ${what} (at ${callerSite()})`);
}

/** A growing graph. Tensors refer to it; `build` turns it into an immutable `Graph`. */
export class Trace {
  /** The nodes so far, in the order pushed; a tensor's `id` indexes this. */
  readonly nodes: Node[] = [];
  private readonly inputNames = new Set<string>();
  private readonly scalarCache = new Map<string, Tensor>();

  /** Appends a node and returns its tensor. */
  push(node: Node): Tensor {
    this.nodes.push(node);
    return new Tensor(this, this.nodes.length - 1);
  }

  /** Declares a named graph input. */
  input(name: string, shape: readonly number[], dtype: DType = "f32"): Tensor {
    if (this.inputNames.has(name)) fail("input", `duplicate input name "${name}"`);
    for (const d of shape) if (!Number.isInteger(d) || d < 0) fail("input", `bad shape [${shape}] for "${name}"`);
    this.inputNames.add(name);
    return this.push({ op: "input", inputs: [], attrs: { name }, shape: [...shape], dtype });
  }

  /** A constant tensor holding `data` (copied). */
  constant(data: ArrayLike<number>, shape: readonly number[], dtype: DType = "f32"): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) fail("constant", `${data.length} values for shape [${shape}]`);
    const arr = dtype === "f32"
      ? Float32Array.from(data)
      : dtype === "i32"
      ? Int32Array.from(data)
      : Uint8Array.from(data);
    return this.push({ op: "const", inputs: [], attrs: { data: arr }, shape: [...shape], dtype });
  }

  /** A 0-d constant, shared between uses so graphs do not fill up with copies of 1 and 0.5. */
  scalar(value: number, dtype: DType = "f32"): Tensor {
    const key = `${dtype}:${Object.is(value, -0) ? "-0" : value}`;
    let t = this.scalarCache.get(key);
    if (!t) {
      t = this.constant([value], [], dtype);
      this.scalarCache.set(key, t);
    }
    return t;
  }

  /** Freezes the trace into a graph with the given named outputs, dropping dead nodes and merging duplicates. */
  build(outputs: Record<string, Tensor>): Graph {
    const outs = Object.entries(outputs).map(([name, t]) => {
      if (t.trace !== this) fail("build", `output "${name}" belongs to another trace`);
      return { name, node: t.id };
    });
    return simplify({ nodes: this.nodes.slice(), outputs: outs });
  }
}

/** A value in a trace. Immutable; ops return new tensors. Methods are the common ops, see `ops.ts` for all. */
export class Tensor {
  /** The tensor of node `id` of `trace`; ops and `Trace` make these, user code rarely does. */
  constructor(readonly trace: Trace, readonly id: number) {}

  /** The node that computes this tensor. */
  get node(): Node {
    return this.trace.nodes[this.id];
  }
  /** Static shape. */
  get shape(): readonly number[] {
    return this.node.shape;
  }
  /** Element type. */
  get dtype(): DType {
    return this.node.dtype;
  }
  /** Rank. */
  get ndim(): number {
    return this.node.shape.length;
  }
  /** Number of elements. */
  get size(): number {
    return this.node.shape.reduce((a, b) => a * b, 1);
  }
  /** For messages: `f32[2,3]`. */
  toString(): string {
    return `${this.dtype}[${this.shape.join(",")}]`;
  }
}

/** Anything an op accepts where a tensor is expected: numbers become constants of the other operand's dtype. */
export type TensorLike = Tensor | number;

/** A nested object or array of tensors (parameters, gradients, optimizer state). */
export type Tree<T = Tensor> = T | Tree<T>[] | { [key: string]: Tree<T> };

/** Flattens a tree into `[path, leaf]` pairs in a fixed order (object keys in insertion order). */
export function flattenTree<T>(tree: Tree<T>, isLeaf: (x: unknown) => x is T, prefix = ""): [string, T][] {
  if (isLeaf(tree)) return [[prefix, tree]];
  const out: [string, T][] = [];
  const entries = Array.isArray(tree) ? tree.map((v, i) => [String(i), v] as const) : Object.entries(tree);
  for (const [k, v] of entries) out.push(...flattenTree(v as Tree<T>, isLeaf, prefix ? `${prefix}.${k}` : k));
  return out;
}

/** Rebuilds a tree of the same structure as `like` from leaves in `flattenTree` order. */
export function unflattenTree<T, U>(like: Tree<T>, isLeaf: (x: unknown) => x is T, leaves: U[]): Tree<U> {
  let i = 0;
  const go = (t: Tree<T>): Tree<U> => {
    if (isLeaf(t)) return leaves[i++];
    if (Array.isArray(t)) return t.map(go);
    const o: { [k: string]: Tree<U> } = {};
    for (const [k, v] of Object.entries(t)) o[k] = go(v as Tree<T>);
    return o;
  };
  return go(like);
}

/** Type guard for tensors, for the tree helpers. */
export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}
