/**
 * The MobileNetV2 feature network shipped inside npm `nsfwjs@4.3.0` (ImageNet backbone fine-tuned by nsfwjs, MIT),
 * read from the package's files and rebuilt as a traced engine function. It is the fixed network of the FID proxy
 * (`fid.ts`) and the feature network of the ADD discriminator.
 *
 * The package ships a Keras 2.2.4 model in tfjs layers format: `dist/models/mobilenet_v2/model.min.js` (topology and
 * weight manifest) and `group1-shard1of1.min.js` (the weights as one base64 string), both wrapped in browserify UMD
 * bundles. Every weight is uint8-quantized (`value = q·scale + min`, as tfjs decodes it). BatchNormalization is folded
 * into the preceding convolution in float64, so the traced graph is conv + bias (+ ReLU6) only.
 *
 * Preprocessing, as nsfwjs's `infer` does it: pixels / 255 (so inputs in [0, 1], not Keras' usual [-1, 1]), then
 * `tf.image.resizeBilinear(…, alignCorners = true)` to the model's size. `features` takes the project's [-1, 1] NCHW
 * images and reproduces both steps inside the graph.
 *
 * @module
 */
import { add, maximum, mean, minimum, mul } from "../engine/math.ts";
import { conv } from "../engine/nn.ts";
import { matmul, transpose } from "../engine/ops.ts";
import { fail, type Tensor, type Trace } from "../engine/tensor.ts";

/** One weight of a tfjs weights manifest. */
export interface WeightSpec {
  name: string;
  shape: number[];
  dtype: string;
  quantization?: { dtype: string; min?: number; scale?: number };
}

/** A Keras layer as tfjs layers format stores it. */
export interface KerasLayer {
  name: string;
  class_name: string;
  config: Record<string, unknown>;
  inbound_nodes: [string, number, number, unknown][][];
}

/** The files of the model as the package ships them, decoded from their UMD wrappers but otherwise untouched. */
export interface NsfwjsArtifacts {
  /** The Keras topology (`modelTopology` of model.json). */
  modelTopology: { model_config: { config: { layers: KerasLayer[] } } } & Record<string, unknown>;
  /** The weight manifest's entries, in the order of `weightData`. */
  weightSpecs: WeightSpec[];
  /** The raw (quantized) weight bytes. */
  weightData: Uint8Array;
}

/** The model folder inside the installed nsfwjs package, found the way nsfwjs's own loader finds it. */
export function nsfwjsModelDir(): URL {
  return new URL("../../models/mobilenet_v2/", import.meta.resolve("nsfwjs/models/mobilenet_v2"));
}

// The bundles are browserify UMD wrappers around one CommonJS module (an object literal, or a base64 string); run
// the wrapper with a private `module` so nothing lands on the global object.
function readUmd(url: URL): unknown {
  let src: string;
  try {
    src = Deno.readTextFileSync(url);
  } catch (e) {
    throw new Error(`nsfwjs model: cannot read ${url.pathname}: ${(e as Error).message}`);
  }
  const module = { exports: undefined as unknown };
  new Function("module", "exports", "define", "require", src)(module, {}, undefined, undefined);
  if (module.exports === undefined) throw new Error(`nsfwjs model: ${url.pathname} did not export anything`);
  return module.exports;
}

/** Reads the topology, manifest and weight bytes of nsfwjs's MobileNetV2 from the package on disk (no network). */
export function readNsfwjsArtifacts(dir: URL = nsfwjsModelDir()): NsfwjsArtifacts {
  const json = readUmd(new URL("model.min.js", dir)) as {
    modelTopology?: NsfwjsArtifacts["modelTopology"];
    weightsManifest?: { paths: string[]; weights: WeightSpec[] }[];
  };
  if (!json.modelTopology?.model_config || !json.weightsManifest) {
    throw new Error(`nsfwjs model: ${dir.pathname}model.min.js has no modelTopology/weightsManifest`);
  }
  const specs: WeightSpec[] = [], chunks: Uint8Array[] = [];
  for (const group of json.weightsManifest) {
    for (const p of group.paths) {
      const b64 = readUmd(new URL(`${p}.min.js`, dir));
      if (typeof b64 !== "string") throw new Error(`nsfwjs model: ${p}.min.js should export a base64 string`);
      chunks.push(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    }
    specs.push(...group.weights);
  }
  const weightData = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) weightData.set(c, off), off += c.length;
  return { modelTopology: json.modelTopology, weightSpecs: specs, weightData };
}

/**
 * Decodes a tfjs weight blob: float32 as is, uint8/uint16-quantized weights as `q·scale + min` rounded to float32
 * (the formula and rounding of tfjs's `decodeWeights`). Throws on other encodings and on a size mismatch.
 */
export function decodeWeights(specs: readonly WeightSpec[], data: Uint8Array): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let off = 0;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const q = s.quantization;
    const vals = new Float32Array(n);
    if (s.dtype !== "float32") throw new Error(`nsfwjs model: weight ${s.name} has dtype ${s.dtype}, expected float32`);
    const width = q === undefined ? 4 : q.dtype === "uint8" ? 1 : q.dtype === "uint16" ? 2 : 0;
    if (width === 0) throw new Error(`nsfwjs model: weight ${s.name} quantized as ${q!.dtype}; expected uint8/uint16`);
    if (off + n * width > data.length) throw new Error(`nsfwjs model: weight data ends inside ${s.name}`);
    if (q === undefined) {
      for (let i = 0; i < n; i++) vals[i] = view.getFloat32(off + 4 * i, true);
    } else {
      if (typeof q.min !== "number" || typeof q.scale !== "number") {
        throw new Error(`nsfwjs model: weight ${s.name} quantization lacks min/scale`);
      }
      for (let i = 0; i < n; i++) {
        const v = width === 1 ? data[off + i] : view.getUint16(off + 2 * i, true);
        vals[i] = v * q.scale + q.min;
      }
    }
    off += n * width;
    out.set(s.name, vals);
  }
  if (off !== data.length) throw new Error(`nsfwjs model: ${data.length - off} bytes of weight data left over`);
  return out;
}

type Pad4 = [number, number, number, number];

/** A convolution (BatchNorm folded in) or a residual add, in execution order. */
type Step =
  | {
    kind: "conv";
    /** Keras name of the conv layer: its weights are `${param}.w` [O, I/g, kh, kw] and `${param}.b` [O]. */
    param: string;
    /** Name its output is known by: the BatchNormalization layer folded into it, else the conv itself. */
    out: string;
    input: string;
    /** Zero padding from a preceding ZeroPadding2D, [top, left, bottom, right]. */
    prePad: Pad4;
    same: boolean;
    stride: number;
    kernel: number;
    groups: number;
  }
  | { kind: "relu6"; out: string; input: string }
  | { kind: "add"; out: string; inputs: [string, string] };
type ConvStep = Extract<Step, { kind: "conv" }>;

/** The layer whose output is the feature map of the FID proxy; the classifier head after it is not built. */
export const FEATURE_LAYER = "out_relu";

/**
 * Default feature levels for discriminator heads: the last block output at each stride. At input size S they are
 * [B, 24, S/4, S/4], [B, 32, S/8, S/8], [B, 96, S/16, S/16] and [B, 320, S/32, S/32].
 */
export const DEFAULT_LEVELS: readonly string[] = ["block_2_add", "block_5_add", "block_12_add", "block_16_project_BN"];

/** Options of `MobileNet.features`. */
export interface FeatureOptions {
  /** Layer outputs to return (Keras layer names; see `MobileNet.layerNames`). Default `DEFAULT_LEVELS`. */
  levels?: readonly string[];
  /**
   * Square size the images are resized to before the network. Default 96 (fast; 224 is nsfwjs's own size). Use a
   * multiple of 32 so every stride-2 stage sees an even size, as the fixed ZeroPadding of the Keras model assumes.
   */
  size?: number;
  /** `bilinear` (default): align-corners bilinear, as nsfwjs's `infer`. `nearest`: source pixel ⌊i·in/size⌋. */
  resize?: "bilinear" | "nearest";
}

/** The network, its folded weights, and its traced forward pass. */
export interface MobileNet {
  /** Folded weights: `${layer}.w` (OIHW) and `${layer}.b`, float32. */
  params: Record<string, Float32Array>;
  /** Shapes of `params`. */
  shapes: Record<string, number[]>;
  /** Names `features` can return as levels, in execution order (a folded conv goes by its BatchNorm layer's name). */
  layerNames: readonly string[];
  /**
   * Traces the network on `x` [B, 3, H, W] in [-1, 1] (the project's image convention). `pooled` is the global
   * average of `out_relu` [B, 1280]; `levels` are the requested intermediate maps (NCHW).
   */
  features(
    p: Record<string, Tensor>,
    x: Tensor,
    opts?: FeatureOptions,
  ): { pooled: Tensor; levels: Record<string, Tensor> };
}

const num = (layer: KerasLayer, key: string): number => {
  const v = layer.config[key];
  const n = Array.isArray(v) ? v[0] : v;
  if (typeof n !== "number") throw new Error(`mobilenet_v2: layer ${layer.name} has no numeric config.${key}`);
  if (Array.isArray(v) && v.some((d) => d !== n)) {
    throw new Error(`mobilenet_v2: layer ${layer.name} config.${key} ${JSON.stringify(v)} is not square`);
  }
  return n;
};

/** The decoded weights of `art` by name; a name the manifest lacks fails naming `net` and the weight. */
export function weightGetter(art: NsfwjsArtifacts, net: string): (name: string) => Float32Array {
  const w = decodeWeights(art.weightSpecs, art.weightData);
  return (name) => {
    const v = w.get(name);
    if (!v) throw new Error(`${net}: weight ${name} missing from the manifest`);
    return v;
  };
}

/** The topology as read so far, layer by layer. */
interface Reading {
  readonly layers: KerasLayer[];
  readonly specs: readonly WeightSpec[];
  readonly get: (name: string) => Float32Array;
  readonly steps: Step[];
  readonly params: Record<string, Float32Array>;
  readonly shapes: Record<string, number[]>;
  /** ZeroPadding2D outputs: a padding is merged into the convolution it feeds, not traced on its own. */
  readonly pads: Map<string, { src: string; pad: Pad4 }>;
  /** Conv outputs that BN has not yet been folded into. */
  readonly raw: Map<string, ConvStep>;
  /** Conv weights stay float64 until every BatchNorm is folded, so that folding rounds once. */
  readonly convW: Map<string, Float64Array>;
  readonly known: Set<string>;
}

const inputsOf = (l: KerasLayer): string[] => (l.inbound_nodes[0] ?? []).map((n) => n[0]);

function oneInput(r: Reading, l: KerasLayer): string {
  const s = inputsOf(l);
  if (s.length !== 1 || !(r.known.has(s[0]) || r.pads.has(s[0]) || r.raw.has(s[0]))) {
    throw new Error(`mobilenet_v2: layer ${l.name} should have one known input, has ${JSON.stringify(s)}`);
  }
  return s[0];
}

/**
 * A Keras kernel [kh, kw, in, out] (or depthwise [kh, kw, in, multiplier 1]) as OIHW [out, in, kh, kw] (depthwise:
 * [in, 1, kh, kw]), in float64.
 */
function kernelToOihw(k: Float32Array, kernel: number, cin: number, cm: number, dw: boolean): Float64Array {
  const cout = dw ? cin : cm;
  const oihw = new Float64Array(cout * (dw ? 1 : cin) * kernel * kernel);
  for (let y = 0; y < kernel; y++) {
    for (let x = 0; x < kernel; x++) {
      for (let i = 0; i < cin; i++) {
        for (let o = 0; o < cm; o++) {
          const v = k[((y * kernel + x) * cin + i) * cm + o];
          const dst = dw ? ((i * kernel + y) * kernel + x) : (((o * cin + i) * kernel + y) * kernel + x);
          oihw[dst] = v;
        }
      }
    }
  }
  return oihw;
}

// A Conv2D or DepthwiseConv2D layer: its step (absorbing a ZeroPadding2D before it), OIHW weights and bias.
function readConv(r: Reading, l: KerasLayer): void {
  const c = l.config, dw = l.class_name === "DepthwiseConv2D";
  if (c.activation !== "linear") throw new Error(`mobilenet_v2: ${l.name} activation ${c.activation}`);
  if (num(l, "dilation_rate") !== 1) throw new Error(`mobilenet_v2: ${l.name} is dilated`);
  if (dw && num(l, "depth_multiplier") !== 1) throw new Error(`mobilenet_v2: ${l.name} depth_multiplier ≠ 1`);
  if (c.padding !== "same" && c.padding !== "valid") {
    throw new Error(`mobilenet_v2: ${l.name} padding ${JSON.stringify(c.padding)}, expected "same" or "valid"`);
  }
  let from = oneInput(r, l), prePad: Pad4 = [0, 0, 0, 0];
  const padded = r.pads.get(from);
  if (padded) ({ src: from, pad: prePad } = padded);
  const kernel = num(l, "kernel_size");
  const k = r.get(`${l.name}/${dw ? "depthwise_kernel" : "kernel"}`);
  const spec = r.specs.find((s) => s.name === `${l.name}/${dw ? "depthwise_kernel" : "kernel"}`)!;
  const [, , cin, cm] = spec.shape;
  const cout = dw ? cin : cm;
  r.convW.set(l.name, kernelToOihw(k, kernel, cin, cm, dw));
  r.shapes[`${l.name}.w`] = [cout, dw ? 1 : cin, kernel, kernel];
  r.shapes[`${l.name}.b`] = [cout];
  r.params[`${l.name}.b`] = c.use_bias ? r.get(`${l.name}/bias`).slice() : new Float32Array(cout);
  const step: Step = {
    kind: "conv",
    param: l.name,
    out: l.name,
    input: from,
    prePad,
    same: c.padding === "same",
    stride: num(l, "strides"),
    kernel,
    groups: dw ? cin : 1,
  };
  r.steps.push(step);
  r.raw.set(l.name, step);
}

// A BatchNormalization layer, folded into the convolution it follows; the conv's output then goes by its name.
function readBatchNorm(r: Reading, l: KerasLayer): void {
  const from = oneInput(r, l);
  const step = r.raw.get(from);
  if (!step) throw new Error(`mobilenet_v2: ${l.name} does not follow a convolution, cannot fold it`);
  const users = r.layers.filter((u) => inputsOf(u).includes(from)).length;
  if (users !== 1) throw new Error(`mobilenet_v2: ${from} feeds ${users} layers, cannot fold ${l.name} into it`);
  const eps = l.config.epsilon as number;
  const g = r.get(`${l.name}/gamma`), be = r.get(`${l.name}/beta`);
  const mu = r.get(`${l.name}/moving_mean`), va = r.get(`${l.name}/moving_variance`);
  const wt = r.convW.get(step.param)!, bias = r.params[`${step.param}.b`];
  const per = wt.length / bias.length;
  for (let o = 0; o < bias.length; o++) {
    const s = g[o] / Math.sqrt(va[o] + eps);
    for (let j = 0; j < per; j++) wt[o * per + j] *= s;
    bias[o] = (bias[o] - mu[o]) * s + be[o];
  }
  r.raw.delete(from);
  step.out = l.name;
  r.known.add(l.name);
}

/**
 * Turns the Keras topology into conv/relu6/add steps with BatchNorm folded (float64) into the convs, up to and
 * including `FEATURE_LAYER`.
 */
export function buildMobileNet(art: NsfwjsArtifacts): MobileNet {
  const r: Reading = {
    layers: art.modelTopology.model_config.config.layers,
    specs: art.weightSpecs,
    get: weightGetter(art, "mobilenet_v2"),
    steps: [],
    params: {},
    shapes: {},
    pads: new Map(),
    raw: new Map(),
    convW: new Map(),
    known: new Set(),
  };
  let input: string | undefined, done = false;
  for (const l of r.layers) {
    if (done) break;
    const c = l.config;
    switch (l.class_name) {
      case "InputLayer":
        input = l.name;
        r.known.add(l.name);
        break;
      case "ZeroPadding2D": {
        const [[t, b], [le, ri]] = c.padding as number[][];
        r.pads.set(l.name, { src: oneInput(r, l), pad: [t, le, b, ri] });
        break;
      }
      case "Conv2D":
      case "DepthwiseConv2D":
        readConv(r, l);
        break;
      case "BatchNormalization":
        readBatchNorm(r, l);
        break;
      case "ReLU": {
        if (c.max_value !== 6 || (c.negative_slope ?? 0) !== 0 || (c.threshold ?? 0) !== 0) {
          throw new Error(`mobilenet_v2: ${l.name} is not ReLU6 (config ${JSON.stringify(c)})`);
        }
        r.steps.push({ kind: "relu6", out: l.name, input: oneInput(r, l) });
        r.known.add(l.name);
        done = l.name === FEATURE_LAYER;
        break;
      }
      case "Add": {
        const s = inputsOf(l);
        if (s.length !== 2 || !s.every((n) => r.known.has(n))) throw new Error(`mobilenet_v2: ${l.name} inputs ${s}`);
        r.steps.push({ kind: "add", out: l.name, inputs: [s[0], s[1]] });
        r.known.add(l.name);
        break;
      }
      default:
        throw new Error(`mobilenet_v2: layer ${l.name} of class ${l.class_name} before ${FEATURE_LAYER}`);
    }
  }
  if (!done || input === undefined) throw new Error(`mobilenet_v2: topology has no input or no ${FEATURE_LAYER}`);
  if (r.raw.size) throw new Error(`mobilenet_v2: convolutions without BatchNorm: ${[...r.raw.keys()]}`);
  for (const [name, wt] of r.convW) r.params[`${name}.w`] = Float32Array.from(wt);
  const layerNames = r.steps.map((s) => s.out);
  return { params: r.params, shapes: r.shapes, layerNames, features: tracer(r.steps, r.shapes, layerNames, input) };
}

/** TF 'same' padding of one axis of length n: total max((⌈n/s⌉ − 1)·s + k − n, 0), the extra cell at the end. */
export function samePad(n: number, k: number, s: number): [number, number] {
  const total = Math.max((Math.ceil(n / s) - 1) * s + k - n, 0);
  return [Math.floor(total / 2), total - Math.floor(total / 2)];
}

function tracer(
  steps: readonly Step[],
  shapes: Record<string, number[]>,
  layerNames: readonly string[],
  inputName: string,
): MobileNet["features"] {
  return (p, x, opts = {}) => {
    const size = opts.size ?? 96;
    const want = opts.levels ?? DEFAULT_LEVELS;
    for (const n of want) if (!layerNames.includes(n)) fail("mobilenet_v2.features", `unknown level "${n}"`);
    if (x.ndim !== 4 || x.shape[1] !== 3) fail("mobilenet_v2.features", `expects x [B,3,H,W], got ${x}`);
    if (!Number.isInteger(size) || size < 32) fail("mobilenet_v2.features", `size must be an integer ≥ 32`);
    for (const k of Object.keys(shapes)) {
      const t = p[k];
      if (!t || t.shape.join(",") !== shapes[k].join(",")) {
        fail("mobilenet_v2.features", `param "${k}" should be [${shapes[k]}], got ${t ?? "nothing"}`);
      }
    }
    const vals = new Map<string, Tensor>([[inputName, resize(mul(add(x, 1), 0.5), size, opts.resize ?? "bilinear")]]);
    for (const s of steps) {
      if (s.kind === "add") vals.set(s.out, add(vals.get(s.inputs[0])!, vals.get(s.inputs[1])!));
      else if (s.kind === "relu6") vals.set(s.out, minimum(maximum(vals.get(s.input)!, 0), 6));
      else {
        const h = vals.get(s.input)!;
        const pad = [...s.prePad] as Pad4;
        if (s.same) {
          for (const ax of [0, 1]) {
            const [lo, hi] = samePad(h.shape[2 + ax] + s.prePad[ax] + s.prePad[ax + 2], s.kernel, s.stride);
            pad[ax] += lo;
            pad[ax + 2] += hi;
          }
        }
        vals.set(s.out, conv(h, p[`${s.param}.w`], p[`${s.param}.b`], { stride: s.stride, pad, groups: s.groups }));
      }
    }
    const levels: Record<string, Tensor> = {};
    for (const n of want) levels[n] = vals.get(n)!;
    return { pooled: mean(vals.get(FEATURE_LAYER)!, [2, 3]), levels };
  };
}

/** Reads nsfwjs's MobileNetV2 from the installed package and builds it (about 0.1 s). */
export function loadMobileNetV2(): Promise<MobileNet> {
  return Promise.resolve(buildMobileNet(readNsfwjsArtifacts()));
}

/** Declares every parameter of `net` as a graph input named `${prefix}${key}`. */
export function paramInputs(tr: Trace, net: MobileNet, prefix = "mobilenet."): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, s] of Object.entries(net.shapes)) out[k] = tr.input(`${prefix}${k}`, s);
  return out;
}

/**
 * The [out, in] interpolation matrix of a 1-D resize. Bilinear uses align-corners source positions i·(in−1)/(out−1),
 * as `tf.image.resizeBilinear(…, true)`; nearest takes pixel ⌊i·in/out⌋.
 */
export function resizeMatrix(inSize: number, outSize: number, mode: "bilinear" | "nearest"): Float32Array {
  const m = new Float32Array(outSize * inSize);
  for (let i = 0; i < outSize; i++) {
    if (mode === "nearest") {
      m[i * inSize + Math.min(inSize - 1, Math.floor((i * inSize) / outSize))] = 1;
      continue;
    }
    // tfjs computes the position as ratio·i; the same order of operations gives the same rounding.
    const pos = outSize > 1 ? ((inSize - 1) / (outSize - 1)) * i : 0;
    const lo = Math.floor(pos), hi = Math.min(lo + 1, inSize - 1), f = pos - lo;
    m[i * inSize + lo] += 1 - f;
    m[i * inSize + hi] += f;
  }
  return m;
}

/** Resizes NCHW images to size×size: separable, two matmuls with constant matrices; exact and differentiable. */
export function resize(x: Tensor, size: number, mode: "bilinear" | "nearest"): Tensor {
  const [, , h, w] = x.shape;
  if (h === size && w === size) return x;
  const tr = x.trace;
  const ah = tr.constant(resizeMatrix(h, size, mode), [size, h]);
  const awT = tr.constant(resizeMatrix(w, size, mode), [size, w]);
  return matmul(matmul(ah, x), transpose(awT));
}
