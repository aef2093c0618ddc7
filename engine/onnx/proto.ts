/**
 * A minimal protobuf writer for ONNX `ModelProto`, enough to serialize the graphs `lower.ts` builds.
 *
 * Only the fields the lowering uses are written. Field numbers follow `onnx.proto` (proto2). Repeated scalars are
 * written unpacked, the proto2 default, which every protobuf parser accepts.
 *
 * @module
 */

/** ONNX `TensorProto.DataType` codes used here. */
export const DataType = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, BOOL: 9 } as const;
/** One of the `DataType` codes. */
export type DataTypeCode = typeof DataType[keyof typeof DataType];

/** A tensor: an initializer, or the value of a tensor attribute. `raw` is little-endian element data. */
export interface TensorDef {
  name: string;
  dataType: DataTypeCode;
  dims: readonly number[];
  raw: Uint8Array;
}

/** A node attribute. `ints`/`floats` are lists even of length 1, so type is never ambiguous. */
export type AttrDef =
  | { name: string; i: number }
  | { name: string; f: number }
  | { name: string; ints: readonly number[] }
  | { name: string; floats: readonly number[] }
  | { name: string; s: string }
  | { name: string; t: TensorDef };

/** A node. */
export interface NodeDef {
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  name: string;
  attrs?: readonly AttrDef[];
}

/** A graph input or output: a tensor with a static shape. */
export interface ValueInfoDef {
  name: string;
  elemType: DataTypeCode;
  dims: readonly number[];
}

/** Everything `encodeModel` needs. */
export interface ModelDef {
  opset: number;
  producer: string;
  graphName: string;
  nodes: readonly NodeDef[];
  initializers: readonly TensorDef[];
  inputs: readonly ValueInfoDef[];
  outputs: readonly ValueInfoDef[];
}

const enc = new TextEncoder();

/** A growable byte buffer with protobuf field writers. */
class Writer {
  buf = new Uint8Array(256);
  len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }

  /** Varint of a non-negative or negative integer (negative as 64-bit two's complement, as int64 requires). */
  varint(v: number): void {
    this.reserve(10);
    if (v >= 0 && v < 0x80000000) {
      while (v >= 0x80) {
        this.buf[this.len++] = (v & 0x7f) | 0x80;
        v >>>= 7;
      }
      this.buf[this.len++] = v;
      return;
    }
    let b = BigInt.asUintN(64, BigInt(v));
    while (b >= 0x80n) {
      this.buf[this.len++] = Number(b & 0x7fn) | 0x80;
      b >>= 7n;
    }
    this.buf[this.len++] = Number(b);
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  int(field: number, v: number): void {
    this.tag(field, 0);
    this.varint(v);
  }

  float(field: number, v: number): void {
    this.tag(field, 5);
    this.reserve(4);
    new DataView(this.buf.buffer).setFloat32(this.len, v, true);
    this.len += 4;
  }

  bytes(field: number, b: Uint8Array): void {
    this.tag(field, 2);
    this.varint(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  string(field: number, s: string): void {
    this.bytes(field, enc.encode(s));
  }

  /** Writes a nested message, encoded by `fill` into a scratch writer. */
  message(field: number, fill: (w: Writer) => void): void {
    const w = new Writer();
    fill(w);
    this.bytes(field, w.buf.subarray(0, w.len));
  }

  done(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function writeTensor(w: Writer, t: TensorDef): void {
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.dataType);
  w.string(8, t.name);
  w.bytes(9, t.raw);
}

function writeAttr(w: Writer, a: AttrDef): void {
  w.string(1, a.name);
  if ("i" in a) {
    w.int(3, a.i);
    w.int(20, 2);
  } else if ("f" in a) {
    w.float(2, a.f);
    w.int(20, 1);
  } else if ("ints" in a) {
    for (const v of a.ints) w.int(8, v);
    w.int(20, 7);
  } else if ("floats" in a) {
    for (const v of a.floats) w.float(7, v);
    w.int(20, 6);
  } else if ("s" in a) {
    w.string(4, a.s);
    w.int(20, 3);
  } else {
    w.message(5, (m) => writeTensor(m, a.t));
    w.int(20, 4);
  }
}

function writeNode(w: Writer, n: NodeDef): void {
  for (const s of n.inputs) w.string(1, s);
  for (const s of n.outputs) w.string(2, s);
  w.string(3, n.name);
  w.string(4, n.opType);
  for (const a of n.attrs ?? []) w.message(5, (m) => writeAttr(m, a));
}

function writeValueInfo(w: Writer, v: ValueInfoDef): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, v.elemType);
      tensor.message(2, (shape) => {
        for (const d of v.dims) shape.message(1, (dim) => dim.int(1, d));
      });
    }));
}

/** Serializes a model (ir_version 8, default domain at `opset`) to ONNX protobuf bytes. */
export function encodeModel(m: ModelDef): Uint8Array {
  const w = new Writer();
  w.int(1, 8);
  w.string(2, m.producer);
  w.message(7, (g) => {
    for (const n of m.nodes) g.message(1, (x) => writeNode(x, n));
    g.string(2, m.graphName);
    for (const t of m.initializers) g.message(5, (x) => writeTensor(x, t));
    for (const v of m.inputs) g.message(11, (x) => writeValueInfo(x, v));
    for (const v of m.outputs) g.message(12, (x) => writeValueInfo(x, v));
  });
  w.message(8, (o) => {
    o.string(1, "");
    o.int(2, m.opset);
  });
  return w.done();
}

/** Little-endian raw bytes of int64 values (for shape/axes initializers). */
export function int64Raw(values: readonly number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) dv.setBigInt64(i * 8, BigInt(values[i]), true);
  return out;
}

/** Little-endian raw bytes of a typed array (copied, so later edits of the source do not leak in). */
export function typedRaw(a: Float32Array | Int32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}
