/**
 * The student UNet as an inference-only ONNX model written by the project's engine: `unetForward` traced for one
 * image with every weight a constant (so an initializer of the model), lowered by `lowerToOnnx`. Inputs: `x`
 * [1, C, S, S], `t` [1] (the timestep as a float), `tokens` [1, L, D] and `pooled` [1, P] when the UNet takes them;
 * output `out` [1, C, S, S] in the model's parameterisation.
 *
 * With `fp16`, weights are stored as float16 initializers, each followed by a Cast to float32: the file is half the
 * size and the network still computes in float32 (onnxruntime folds the casts when it loads the model).
 *
 * @module
 */
import type { Graph } from "../engine/ir.ts";
import { size } from "../engine/ir.ts";
import { Builder } from "../engine/onnx/builder.ts";
import { LOWERINGS, lowerToOnnx, onnxType, OPSET } from "../engine/onnx/lower.ts";
import { DataType, type DataTypeCode, encodeModel, typedRaw, type ValueInfoDef } from "../engine/onnx/proto.ts";
import { Trace } from "../engine/tensor.ts";
import { unet, unetForward, type UNetParams } from "../models/unet.ts";

/** The UNet's input shapes for one image and text of `textLength` tokens (absent: the UNet does not take it). */
export function unetInputShapes(u: UNetParams, textLength: number): Record<string, number[]> {
  const s: Record<string, number[]> = { x: [1, u.in_channels, u.size, u.size], t: [1] };
  if (u.context_dim) s.tokens = [1, textLength, u.context_dim];
  if (u.pooled_dim) s.pooled = [1, u.pooled_dim];
  return s;
}

/** Graph inputs standing for a weight are named with this prefix when the weights are traced as inputs. */
const WEIGHT = "weight:";

/**
 * The traced inference graph: weights as constants (`"const"`), or as inputs named `weight:<path>` (`"input"`, for
 * a lowering that writes them itself: the other constants, such as the timestep embedding's frequencies, stay).
 */
export function traceUnetInference(
  u: UNetParams,
  weights: Record<string, Float32Array>,
  textLength: number,
  weightsAs: "const" | "input" = "const",
): Graph {
  const tr = new Trace(), shapes = unetInputShapes(u, textLength);
  const ins = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const p = Object.fromEntries(
    Object.entries(unet.shapes(u)).map(([path, shape]) => {
      const w = weights[path];
      if (!w || w.length !== size(shape)) throw new Error(`unet weights: "${path}" missing or not [${shape}]`);
      return [path, weightsAs === "const" ? tr.constant(w, shape) : tr.input(WEIGHT + path, shape)];
    }),
  );
  return tr.build({ out: unetForward(u, p, ins.x, ins.t, ins.tokens, ins.pooled) });
}

/** Float32 values as IEEE float16 bits, rounded to nearest even (overflow to ±∞, underflow through subnormals). */
export function toFloat16Bits(a: Float32Array): Uint16Array {
  const bits = new Uint32Array(a.buffer, a.byteOffset, a.length), out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const x = bits[i], sign = (x >>> 16) & 0x8000, e = ((x >>> 23) & 0xff) - 127 + 15, m = x & 0x7fffff;
    if (e === 0xff - 127 + 15) {
      out[i] = sign | 0x7c00 | (m ? 0x200 : 0); // ∞ stays ∞, NaN stays NaN
    } else if (e <= 0) {
      // Subnormal in float16: a multiple of 2^-24, found exactly in float64 and rounded half to even.
      const q = Math.abs(a[i]) / 2 ** -24, r = Math.round(q);
      out[i] = sign | (r - q === 0.5 && r % 2 === 1 ? r - 1 : r);
    } else {
      // Drop 13 mantissa bits, rounding half to even; a carry moves into the exponent, as it should.
      let q = (e << 10) | (m >>> 13);
      const rest = m & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (q & 1))) q++;
      out[i] = sign | Math.min(q, 0x7c00);
    }
  }
  return out;
}

/** ONNX's FLOAT16 element type, which the engine's own lowering never needs. */
const FLOAT16 = 10 as DataTypeCode;

/**
 * The inference graph as ONNX. fp32 is `lowerToOnnx` itself; fp16 differs only in the weights' initializers (float16
 * plus a Cast), so it walks the nodes with the same per-primitive `LOWERINGS`, turning the weight inputs into them.
 */
export function unetOnnx(
  u: UNetParams,
  weights: Record<string, Float32Array>,
  textLength: number,
  opts: { fp16?: boolean } = {},
): Uint8Array {
  // One model for every executor: an inference UNet has none of the ops whose lowering differs by target.
  if (!opts.fp16) return lowerToOnnx(traceUnetInference(u, weights, textLength), "wasm");
  const graph = traceUnetInference(u, weights, textLength, "input");
  const b = new Builder("_"), names: string[] = [], inputs: ValueInfoDef[] = [];
  const out = graph.outputs[0];
  graph.nodes.forEach((n, i) => {
    if (n.op === "input" && n.attrs.name.startsWith(WEIGHT)) {
      const bits = toFloat16Bits(weights[n.attrs.name.slice(WEIGHT.length)]);
      const half = b.init(FLOAT16, n.shape, new Uint8Array(bits.buffer));
      names[i] = b.op("Cast", [half], [{ name: "to", i: DataType.FLOAT }]);
    } else if (n.op === "input") {
      names[i] = n.attrs.name;
      inputs.push({ name: n.attrs.name, elemType: onnxType(n.dtype), dims: n.shape });
    } else if (n.op === "const") {
      const d = n.attrs.data;
      const raw = n.dtype === "bool" ? Uint8Array.from(d, (v) => (v ? 1 : 0)) : typedRaw(d);
      names[i] = b.init(onnxType(n.dtype), n.shape, raw);
    } else {
      const lower = (LOWERINGS as unknown as Record<string, (a: unknown) => string>)[n.op];
      const ins = n.inputs.map((j) => names[j]);
      const name = i === out.node ? out.name : b.fresh();
      names[i] = lower({ b, g: graph, n, ins, out: name, target: "wasm", gradWeight: "gemm" });
    }
  });
  return encodeModel({
    opset: OPSET,
    producer: "engine",
    graphName: "g",
    nodes: b.nodes,
    initializers: b.inits,
    inputs,
    outputs: [{ name: out.name, elemType: DataType.FLOAT, dims: graph.nodes[out.node].shape }],
  });
}
