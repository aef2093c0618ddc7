/**
 * What every lowering shares: the `Builder` that accumulates ONNX nodes and initializers under fresh names, and the
 * signature of one primitive's lowering (`Lowering`). A module of its own so that the conv lowerings (`conv.ts`) need
 * not import the table that lists them (`lower.ts`), which would be a cycle.
 *
 * @module
 */
import type { DType, Graph, NodeOf, Op } from "../ir.ts";
import {
  type AttrDef,
  DataType,
  type DataTypeCode,
  int64Raw,
  type NodeDef,
  type TensorDef,
  typedRaw,
} from "./proto.ts";

/** Which onnxruntime executor the model is for; picks between lowerings that are fastest on each. */
export type OnnxTarget = "cpu" | "wasm" | "webgpu";

/** Lowerings of the conv weight gradient (groups 1; grouped ones always use `conv`). */
export type GradWeightLowering = "gemm" | "matmul" | "conv";

/** The ONNX element type of an IR dtype. */
export function onnxType(d: DType): DataTypeCode {
  return d === "f32" ? DataType.FLOAT : d === "i32" ? DataType.INT32 : DataType.BOOL;
}

/** Accumulates ONNX nodes and initializers, handing out fresh names. */
export class Builder {
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

  /** A 1-D float32 initializer (Resize scales), shared between every node that needs the same values. */
  f32(values: readonly number[]): string {
    const key = `f32:${values.join(",")}`;
    let name = this.shared.get(key);
    if (name === undefined) {
      name = this.init(DataType.FLOAT, [values.length], typedRaw(new Float32Array(values)));
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

/** What a primitive's lowering sees: the builder, its node (attrs narrowed to the primitive's), and its operands. */
export interface LowerArgs<O extends Op> {
  b: Builder;
  g: Graph;
  n: NodeOf<O>;
  /** ONNX value names of the node's operands, in order. */
  ins: string[];
  /** The ONNX value name the lowering must write the node's result to. */
  out: string;
  target: OnnxTarget;
  gradWeight: GradWeightLowering;
}

/** Lowers one node of primitive `O` to ONNX nodes ending in `out`; returns `out`. */
export type Lowering<O extends Op> = (a: LowerArgs<O>) => string;

/** The traced shape of operand `k` of `a`'s node. */
export function inShape<O extends Op>(a: LowerArgs<O>, k: number): number[] {
  return a.g.nodes[a.n.inputs[k]].shape;
}
