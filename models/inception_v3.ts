/**
 * The InceptionV3 shipped inside npm `nsfwjs@4.3.0` (MIT), read from the package's files and rebuilt as a traced engine
 * function: the report's judge (`fid.ts`, `evaluate.ts`). FID is defined on InceptionV3's 2048-d pool3 features
 * (Heusel et al. 2017); this one is nsfwjs's fine-tune of the Keras ImageNet InceptionV3 for its 5 classes (Drawing,
 * Hentai, Neutral, Porn, Sexy), so its numbers are a proxy, not published FIDs. It is not the discriminator's network
 * (that is MobileNetV2, `mobilenet_v2.ts`), so a student tuned against the discriminator is judged by another network.
 *
 * Files: `dist/models/inception_v3/model.min.js` (Keras 2.2.4 topology and weight manifest) and six
 * `group1-shard*of6.min.js` weight bundles, read by `readNsfwjsArtifacts`; every weight is uint8-quantized and
 * decoded by `decodeWeights` as tfjs does. BatchNormalization (`scale: false`, so γ = 1) is folded into the preceding
 * bias-free convolution in float64.
 *
 * Preprocessing, as nsfwjs's `infer` does it for every model: pixels / 255 (inputs in [0, 1]), then
 * `tf.image.resizeBilinear(…, alignCorners = true)` to the model's size (299 for this one). `features` takes the
 * project's [-1, 1] NCHW images and does both inside the graph.
 *
 * Pooling has no primitive of its own: 3×3/stride-2 'valid' max pooling is composed from slice, maximum, reshape and
 * a max reduction, and 3×3/stride-1 'same' average pooling (TF semantics: padded cells are not counted) from a
 * depthwise convolution with a constant kernel of ones and a constant 1/count map, so every executor that runs the
 * MobileNet runs this too (and every piece has a derivative rule, though the judge needs none). `pooled` is the global mean of `mixed10`, FID's
 * pool3; at 299 that is exactly Keras's `average_pooling2d_10` (8×8, 'valid'), and the Dense head on it gives nsfwjs's
 * class probabilities. At other sizes the global mean stands in for the 8×8 pool (pytorch-fid's adaptive pooling).
 *
 * @module
 */
import { add, maximum, mean, mul } from "../engine/math.ts";
import { conv, softmax } from "../engine/nn.ts";
import { concat, conv2d, matmul, max, reshape, slice } from "../engine/ops.ts";
import { fail, type Tensor, type Trace } from "../engine/tensor.ts";
import {
  type KerasLayer,
  type NsfwjsArtifacts,
  readNsfwjsArtifacts,
  resize,
  samePad,
  weightGetter,
} from "./mobilenet_v2.ts";

/** The model folder inside the installed nsfwjs package, found the way nsfwjs's own loader finds it. */
export function inceptionModelDir(): URL {
  return new URL("../../models/inception_v3/", import.meta.resolve("nsfwjs/models/inception_v3"));
}

/** The layer whose global mean is the FID feature (pool3). */
export const INCEPTION_FEATURE_LAYER = "mixed10";
/** nsfwjs's input size for this model. */
export const INCEPTION_NATIVE_SIZE = 299;
/** The smallest input every 'valid' convolution and pooling of InceptionV3 still fits (mixed10 is then 1×1). */
export const INCEPTION_MIN_SIZE = 75;
/** nsfwjs's class names, in the order of the head's outputs (its `NSFW_CLASSES`). */
export const NSFW_CLASSES = ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"] as const;

type Step =
  | {
    kind: "conv";
    /** Keras conv name: weights `${param}.w` [O, I, kh, kw] and `${param}.b` [O] (the folded BatchNorm). */
    param: string;
    out: string;
    input: string;
    kernel: [number, number];
    stride: number;
    same: boolean;
  }
  | { kind: "relu" | "maxpool" | "avgpool"; out: string; input: string }
  | { kind: "concat"; out: string; inputs: string[] };

/** Options of `InceptionV3.features`. */
export interface InceptionOptions {
  /** Square size the images are resized to first (≥ 75). Default 299, nsfwjs's own. */
  size?: number;
  /** `bilinear` (default): align-corners bilinear, as nsfwjs's `infer`. `nearest`: source pixel ⌊i·in/size⌋. */
  resize?: "bilinear" | "nearest";
  /** Also trace the Dense head: `probs` [B, 5], nsfwjs's class probabilities (exact at 299). */
  head?: boolean;
  /** Layer outputs to return as NCHW maps (see `layerNames`). Default none. */
  levels?: readonly string[];
}

/** The network, its folded weights, and its traced forward pass. */
export interface InceptionV3 {
  readonly kind: "inception_v3";
  /** Folded conv weights `${conv}.w` (OIHW) and `.b`, and the head's `${dense}.w` [in, out] and `.b`, float32. */
  params: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  /** Names `features` can return as levels, in execution order (a conv goes by its Activation layer's name). */
  layerNames: readonly string[];
  /** Traces the network on `x` [B, 3, H, W] in [-1, 1]: `pooled` [B, 2048], and `probs` when `head`. */
  features(
    p: Record<string, Tensor>,
    x: Tensor,
    opts?: InceptionOptions,
  ): { pooled: Tensor; probs?: Tensor; levels: Record<string, Tensor> };
}

const pair = (l: KerasLayer, key: string): [number, number] => {
  const v = l.config[key];
  if (!Array.isArray(v) || v.length !== 2 || !v.every((n) => typeof n === "number")) {
    throw new Error(`inception_v3: layer ${l.name} config.${key} should be two numbers, is ${JSON.stringify(v)}`);
  }
  return [v[0], v[1]];
};

// Checks a pooling layer against the two kinds InceptionV3 uses before mixed10.
function poolKind(l: KerasLayer): "maxpool" | "avgpool" {
  const [p, s] = [pair(l, "pool_size"), pair(l, "strides")], pad = l.config.padding;
  const max = l.class_name === "MaxPooling2D";
  const ok = p[0] === 3 && p[1] === 3 &&
    (max ? s[0] === 2 && s[1] === 2 && pad === "valid" : s[0] === 1 && s[1] === 1 && pad === "same");
  if (!ok) {
    throw new Error(
      `inception_v3: ${l.name} is ${l.class_name} ${p}/${s} ${pad}; expected ${max ? "3×3/2 valid" : "3×3/1 same"}`,
    );
  }
  return max ? "maxpool" : "avgpool";
}

/** A Keras conv kernel [kh, kw, in, out] as OIHW, in float64 (BatchNorm is folded into it next). */
function kerasToOihw(name: string, k: Float32Array, kh: number, kw: number, cout: number) {
  const cin = k.length / (kh * kw * cout);
  if (!Number.isInteger(cin)) throw new Error(`inception_v3: ${name} kernel has ${k.length} values`);
  const oihw = new Float64Array(k.length);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      for (let i = 0; i < cin; i++) {
        for (let o = 0; o < cout; o++) oihw[((o * cin + i) * kh + y) * kw + x] = k[((y * kw + x) * cin + i) * cout + o];
      }
    }
  }
  return { oihw, cin };
}

/**
 * Folds y = γ(conv(x) − μ)/√(σ² + ε) + β into a bias-free convolution's OIHW weights `w` (scaled in place, float64);
 * returns the bias.
 */
function foldBatchNorm(
  w: Float64Array,
  g: Float32Array,
  beta: Float32Array,
  mu: Float32Array,
  va: Float32Array,
  eps: number,
): Float32Array {
  const cout = beta.length, per = w.length / cout, bias = new Float32Array(cout);
  for (let o = 0; o < cout; o++) {
    const s = g[o] / Math.sqrt(va[o] + eps);
    for (let j = 0; j < per; j++) w[o * per + j] *= s;
    bias[o] = -mu[o] * s + beta[o];
  }
  return bias;
}

type ConvStep = Extract<Step, { kind: "conv" }>;

/** The topology as read so far, layer by layer. */
interface Reading {
  readonly layers: KerasLayer[];
  readonly get: (name: string) => Float32Array;
  readonly steps: Step[];
  readonly head: Dense[];
  readonly params: Record<string, Float32Array>;
  readonly shapes: Record<string, number[]>;
  /** Convs awaiting BN, their weights float64 so that folding rounds once. */
  readonly pending: Map<string, { step: ConvStep; w: Float64Array }>;
  readonly known: Set<string>;
}

const inputsOf = (l: KerasLayer): string[] => (l.inbound_nodes[0] ?? []).map((n) => n[0]);

function oneInput(r: Reading, l: KerasLayer): string {
  const s = inputsOf(l);
  if (s.length !== 1 || !(r.known.has(s[0]) || r.pending.has(s[0]))) {
    throw new Error(`inception_v3: layer ${l.name} should have one known input, has ${JSON.stringify(s)}`);
  }
  return s[0];
}

// A bias-free Conv2D: its step and OIHW weights, pending the BatchNorm after it.
function readConv(r: Reading, l: KerasLayer): void {
  const c = l.config;
  if (c.activation !== "linear" || c.use_bias) throw new Error(`inception_v3: ${l.name} has a bias/activation`);
  if (pair(l, "dilation_rate").some((d) => d !== 1)) throw new Error(`inception_v3: ${l.name} is dilated`);
  if (c.padding !== "same" && c.padding !== "valid") throw new Error(`inception_v3: ${l.name} padding`);
  const [s0, s1] = pair(l, "strides");
  if (s0 !== s1) throw new Error(`inception_v3: ${l.name} strides ${s0},${s1} differ`);
  const [kh, kw] = pair(l, "kernel_size"), cout = c.filters as number;
  const { oihw, cin } = kerasToOihw(l.name, r.get(`${l.name}/kernel`), kh, kw, cout);
  r.shapes[`${l.name}.w`] = [cout, cin, kh, kw];
  r.shapes[`${l.name}.b`] = [cout];
  const step: Step = {
    kind: "conv",
    param: l.name,
    out: l.name,
    input: oneInput(r, l),
    kernel: [kh, kw],
    stride: s0,
    same: c.padding === "same",
  };
  r.steps.push(step);
  r.pending.set(l.name, { step, w: oihw });
}

// A BatchNormalization layer, folded into the convolution it follows; the conv's output then goes by its name.
function readBatchNorm(r: Reading, l: KerasLayer): void {
  const c = l.config, from = oneInput(r, l), conv = r.pending.get(from);
  if (!conv) throw new Error(`inception_v3: ${l.name} does not follow a convolution, cannot fold it`);
  const users = r.layers.filter((u) => inputsOf(u).includes(from)).length;
  if (users !== 1) throw new Error(`inception_v3: ${from} feeds ${users} layers, cannot fold ${l.name} into it`);
  if (c.center !== true) throw new Error(`inception_v3: ${l.name} has no beta (center false)`);
  const cout = r.shapes[`${from}.b`][0];
  const g = c.scale === false ? new Float32Array(cout).fill(1) : r.get(`${l.name}/gamma`);
  const stats = [r.get(`${l.name}/beta`), r.get(`${l.name}/moving_mean`), r.get(`${l.name}/moving_variance`)] as const;
  const bias = foldBatchNorm(conv.w, g, ...stats, c.epsilon as number);
  r.params[`${from}.w`] = Float32Array.from(conv.w);
  r.params[`${from}.b`] = bias;
  r.pending.delete(from);
  conv.step.out = l.name;
  r.known.add(l.name);
}

/** Turns the Keras topology into traced steps, BatchNorm folded in float64, and reads the Dense head after mixed10. */
export function buildInceptionV3(art: NsfwjsArtifacts): InceptionV3 {
  const r: Reading = {
    layers: art.modelTopology.model_config.config.layers,
    get: weightGetter(art, "inception_v3"),
    steps: [],
    head: [],
    params: {},
    shapes: {},
    pending: new Map(),
    known: new Set(),
  };
  let input: string | undefined, phase: "body" | "head" = "body";
  for (const l of r.layers) {
    const c = l.config;
    if (phase === "head") {
      readHeadLayer(l, r.get, r.head, r.params, r.shapes);
      continue;
    }
    switch (l.class_name) {
      case "InputLayer":
        input = l.name;
        r.known.add(l.name);
        break;
      case "Conv2D":
        readConv(r, l);
        break;
      case "BatchNormalization":
        readBatchNorm(r, l);
        break;
      case "Activation":
        if (c.activation !== "relu") throw new Error(`inception_v3: ${l.name} activation ${c.activation}`);
        r.steps.push({ kind: "relu", out: l.name, input: oneInput(r, l) });
        r.known.add(l.name);
        break;
      case "MaxPooling2D":
      case "AveragePooling2D":
        r.steps.push({ kind: poolKind(l), out: l.name, input: oneInput(r, l) });
        r.known.add(l.name);
        break;
      case "Concatenate": {
        const s = inputsOf(l);
        if (c.axis !== 3 && c.axis !== -1) throw new Error(`inception_v3: ${l.name} concatenates on axis ${c.axis}`);
        if (!s.every((n) => r.known.has(n))) throw new Error(`inception_v3: ${l.name} inputs ${s}`);
        r.steps.push({ kind: "concat", out: l.name, inputs: s });
        r.known.add(l.name);
        if (l.name === INCEPTION_FEATURE_LAYER) phase = "head";
        break;
      }
      default:
        throw new Error(`inception_v3: layer ${l.name} of class ${l.class_name} before ${INCEPTION_FEATURE_LAYER}`);
    }
  }
  if (phase !== "head" || input === undefined) {
    throw new Error(`inception_v3: no input or no ${INCEPTION_FEATURE_LAYER}`);
  }
  if (r.pending.size) throw new Error(`inception_v3: convolutions without BatchNorm: ${[...r.pending.keys()]}`);
  if (r.head.length === 0) throw new Error(`inception_v3: no Dense head after ${INCEPTION_FEATURE_LAYER}`);
  const layerNames = r.steps.map((s) => s.out);
  return {
    kind: "inception_v3",
    params: r.params,
    shapes: r.shapes,
    layerNames,
    features: tracer(r.steps, r.head, r.shapes, input),
  };
}

type Dense = { name: string; act: "relu" | "softmax" };

// The layers after mixed10: the 8×8 average pool (global at 299), Flatten, Dense (relu…, softmax last), Dropout
// (identity at inference). Appends each Dense layer to `head`.
function readHeadLayer(
  l: KerasLayer,
  get: (name: string) => Float32Array,
  head: Dense[],
  params: Record<string, Float32Array>,
  shapes: Record<string, number[]>,
): void {
  switch (l.class_name) {
    case "AveragePooling2D":
    case "GlobalAveragePooling2D":
    case "Flatten":
    case "Dropout":
      return;
    case "Dense": {
      const act = l.config.activation, last = head.at(-1), prev = last ? shapes[`${last.name}.b`][0] : 2048;
      if (last?.act === "softmax") throw new Error(`inception_v3: ${l.name} follows the softmax of ${last.name}`);
      if (act !== "relu" && act !== "softmax") throw new Error(`inception_v3: ${l.name} activation ${act}`);
      const k = get(`${l.name}/kernel`), units = l.config.units as number;
      if (k.length !== prev * units) throw new Error(`inception_v3: ${l.name} kernel is not [${prev}, ${units}]`);
      params[`${l.name}.w`] = k;
      params[`${l.name}.b`] = l.config.use_bias ? get(`${l.name}/bias`) : new Float32Array(units);
      shapes[`${l.name}.w`] = [prev, units];
      shapes[`${l.name}.b`] = [units];
      head.push({ name: l.name, act });
      return;
    }
    default:
      throw new Error(`inception_v3: layer ${l.name} of class ${l.class_name} in the head`);
  }
}

/**
 * 3×3/stride-2 'valid' max pooling of NCHW, separably along H then W. Along one axis of length L with n outputs,
 * out[o] = max(x[2o], x[2o+1], x[2o+2]) = max(y[2o], y[2o+1]) for y[j] = max(x[j], x[j+1]): y is the maximum of two
 * shifted slices of length 2n (2n + 1 ≤ L), and its non-overlapping pairs reduce with a reshape and a max.
 */
export function maxPool3s2(x: Tensor): Tensor {
  if (x.ndim !== 4 || x.shape[2] < 3 || x.shape[3] < 3) fail("maxPool3s2", `expects NCHW of at least 3×3, got ${x}`);
  const along = (t: Tensor, axis: 2 | 3) => {
    const n = Math.floor((t.shape[axis] - 3) / 2) + 1;
    const at = (k: number) =>
      slice(t, t.shape.map((_, i) => (i === axis ? k : 0)), t.shape.map((d, i) => (i === axis ? k + 2 * n : d)));
    const y = maximum(at(0), at(1));
    return max(reshape(y, [...t.shape.slice(0, axis), n, 2, ...t.shape.slice(axis + 1)]), axis + 1);
  };
  return along(along(x, 2), 3);
}

/** 3×3/stride-1 'same' average pooling of NCHW as TF computes it: the mean over the window's cells inside the image. */
export function avgPool3Same(x: Tensor): Tensor {
  const [, c, h, w] = x.shape;
  // The window sums: a depthwise convolution with a constant all-ones kernel, zero-padded by 1.
  const ones = x.trace.constant(new Float32Array(c * 9).fill(1), [c, 1, 3, 3]);
  const box = conv2d(x, ones, { pad: 1, groups: c });
  // Cells per window: 3 inside, 2 at an edge (or 1 along an axis of length 1), per axis.
  const cnt = (n: number, i: number) => Math.min(i + 1, n - 1) - Math.max(i - 1, 0) + 1;
  const inv = new Float32Array(h * w);
  for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) inv[i * w + j] = 1 / (cnt(h, i) * cnt(w, j));
  return mul(box, x.trace.constant(inv, [1, 1, h, w]));
}

function tracer(steps: Step[], head: Dense[], shapes: Record<string, number[]>, inputName: string) {
  const names = steps.map((s) => s.out);
  const features: InceptionV3["features"] = (p, x, opts = {}) => {
    const size = opts.size ?? INCEPTION_NATIVE_SIZE;
    const want = opts.levels ?? [];
    for (const n of want) if (!names.includes(n)) fail("inception_v3.features", `unknown level "${n}"`);
    if (x.ndim !== 4 || x.shape[1] !== 3) fail("inception_v3.features", `expects x [B,3,H,W], got ${x}`);
    if (!Number.isInteger(size) || size < INCEPTION_MIN_SIZE) {
      fail("inception_v3.features", `size must be an integer ≥ ${INCEPTION_MIN_SIZE}, got ${size}`);
    }
    for (const k of Object.keys(shapes)) {
      const t = p[k];
      if (!t || t.shape.join(",") !== shapes[k].join(",")) {
        fail("inception_v3.features", `param "${k}" should be [${shapes[k]}], got ${t ?? "nothing"}`);
      }
    }
    const vals = new Map<string, Tensor>([[inputName, resize(mul(add(x, 1), 0.5), size, opts.resize ?? "bilinear")]]);
    const v = (n: string) => vals.get(n)!;
    for (const s of steps) {
      if (s.kind === "conv") {
        const h = v(s.input);
        const [t, b] = s.same ? samePad(h.shape[2], s.kernel[0], s.stride) : [0, 0];
        const [l, r] = s.same ? samePad(h.shape[3], s.kernel[1], s.stride) : [0, 0];
        vals.set(s.out, conv(h, p[`${s.param}.w`], p[`${s.param}.b`], { stride: s.stride, pad: [t, l, b, r] }));
      } else if (s.kind === "concat") vals.set(s.out, concat(s.inputs.map(v), 1));
      else if (s.kind === "relu") vals.set(s.out, maximum(v(s.input), 0));
      else if (s.kind === "maxpool") vals.set(s.out, maxPool3s2(v(s.input)));
      else vals.set(s.out, avgPool3Same(v(s.input)));
    }
    const pooled = mean(v(INCEPTION_FEATURE_LAYER), [2, 3]);
    let probs: Tensor | undefined;
    if (opts.head) {
      let y = pooled;
      for (const d of head) {
        y = add(matmul(y, p[`${d.name}.w`]), p[`${d.name}.b`]); // Keras kernels are [in, out]
        y = d.act === "relu" ? maximum(y, 0) : softmax(y, -1);
      }
      probs = y;
    }
    const levels: Record<string, Tensor> = {};
    for (const n of want) levels[n] = v(n);
    return { pooled, probs, levels };
  };
  return features;
}

let cached: Promise<InceptionV3> | undefined;
/** Reads nsfwjs's InceptionV3 from the installed package and builds it, once per process (a few seconds). */
export function loadInceptionV3(): Promise<InceptionV3> {
  return cached ??= Promise.resolve().then(() => buildInceptionV3(readNsfwjsArtifacts(inceptionModelDir())));
}

/** Declares every parameter of `net` as a graph input named `${prefix}${key}`. */
export function inceptionInputs(tr: Trace, net: InceptionV3, prefix = "inception."): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, s] of Object.entries(net.shapes)) out[k] = tr.input(`${prefix}${k}`, s);
  return out;
}
