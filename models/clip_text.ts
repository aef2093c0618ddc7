/**
 * CLIP's text transformer (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
 * Supervision"), written with engine ops so it traces, lowers to ONNX and differentiates like any other model.
 *
 * Token and position embeddings, pre-LN transformer layers (causal self-attention, a quick-GELU or GELU MLP), a final
 * layer norm, the hidden state at the first position of the highest id (CLIP's `argmax(ids)`: with our tokenizer that
 * is the first `<|endoftext|>`, whose id is the highest) or of a given end-of-text id, and a bias-free projection of it
 * when the model has one. Parameter names are those of Hugging Face's `CLIPTextModelWithProjection` (and
 * `CLIPTextModel` without the projection), so their safetensors load both ways.
 *
 * @module
 */
import { add, equal, mul, toFloat } from "../engine/math.ts";
import { gelu, layerNorm, linear, quickGelu, softmax } from "../engine/nn.ts";
import { cast, gather, matmul, max, reshape, sliceAxis, sum, swapAxes, transpose, where } from "../engine/ops.ts";
import type { Graph } from "../engine/ir.ts";
import type { Rng } from "../engine/rng.ts";
import { fail, type Tensor, Trace } from "../engine/tensor.ts";

/** Sizes of a CLIP text model (Hugging Face `CLIPTextConfig` names in the comments). */
export interface ClipTextConfig {
  /** vocab_size */
  vocabSize: number;
  /** hidden_size */
  width: number;
  /** num_hidden_layers */
  layers: number;
  /** num_attention_heads */
  heads: number;
  /** intermediate_size (the MLP's hidden width) */
  intermediate: number;
  /** max_position_embeddings: the longest id sequence */
  maxLength: number;
  /** projection_dim: the width of `text_embeds` */
  projectionDim: number;
  /** layer_norm_eps */
  layerNormEps: number;
  /** hidden_act: the MLP's activation; CLIP's own is quick_gelu (the default), some later encoders use exact gelu. */
  hiddenAct?: "quick_gelu" | "gelu";
  /**
   * eos_token_id: pool at the first position holding this id. Unset, the pool is at the first position of the highest
   * id, as CLIP's `argmax(ids)` (and transformers for the legacy eos_token_id 2 of early configs) does.
   */
  eosTokenId?: number;
  /** Whether there is a `text_projection` (CLIPTextModelWithProjection; the default) or not (CLIPTextModel). */
  projection?: boolean;
}

/** The committed default: small enough that its fp32 weights, twice over (ONNX and safetensors), stay under 2 MB. */
export const DEFAULT_CLIP_TEXT: Omit<ClipTextConfig, "vocabSize"> = {
  width: 64,
  layers: 2,
  heads: 4,
  intermediate: 256,
  maxLength: 32,
  projectionDim: 64,
  layerNormEps: 1e-5,
};

const TM = "text_model";
const layerKey = (i: number) => `${TM}.encoder.layers.${i}`;

function checkConfig(cfg: ClipTextConfig): void {
  const ints = Object.entries(cfg).filter(([k]) =>
    !["layerNormEps", "hiddenAct", "eosTokenId", "projection"].includes(k)
  );
  for (const [k, v] of ints) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`clip_text: ${k} must be a positive integer, got ${v}`);
  }
  if (cfg.width % cfg.heads) {
    throw new RangeError(`clip_text: width ${cfg.width} does not split into ${cfg.heads} heads`);
  }
  if (!(cfg.layerNormEps > 0)) throw new RangeError(`clip_text: layerNormEps must be > 0, got ${cfg.layerNormEps}`);
  if (cfg.hiddenAct !== undefined && cfg.hiddenAct !== "quick_gelu" && cfg.hiddenAct !== "gelu") {
    throw new RangeError(`clip_text: hiddenAct must be "quick_gelu" or "gelu", got ${JSON.stringify(cfg.hiddenAct)}`);
  }
  const eos = cfg.eosTokenId;
  if (eos !== undefined && !(Number.isInteger(eos) && eos >= 0 && eos < cfg.vocabSize)) {
    throw new RangeError(`clip_text: eosTokenId ${eos} is not an id below vocabSize ${cfg.vocabSize}`);
  }
}

/** Parameter name → shape, in Hugging Face's names and PyTorch's [out, in] layout. */
export function clipTextShapes(cfg: ClipTextConfig): Record<string, number[]> {
  checkConfig(cfg);
  const { vocabSize: v, width: d, intermediate: f, maxLength: l, projectionDim: p } = cfg;
  const s: Record<string, number[]> = {
    [`${TM}.embeddings.token_embedding.weight`]: [v, d],
    [`${TM}.embeddings.position_embedding.weight`]: [l, d],
  };
  for (let i = 0; i < cfg.layers; i++) {
    const k = layerKey(i);
    for (const proj of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
      s[`${k}.self_attn.${proj}.weight`] = [d, d];
      s[`${k}.self_attn.${proj}.bias`] = [d];
    }
    s[`${k}.layer_norm1.weight`] = [d];
    s[`${k}.layer_norm1.bias`] = [d];
    s[`${k}.mlp.fc1.weight`] = [f, d];
    s[`${k}.mlp.fc1.bias`] = [f];
    s[`${k}.mlp.fc2.weight`] = [d, f];
    s[`${k}.mlp.fc2.bias`] = [d];
    s[`${k}.layer_norm2.weight`] = [d];
    s[`${k}.layer_norm2.bias`] = [d];
  }
  s[`${TM}.final_layer_norm.weight`] = [d];
  s[`${TM}.final_layer_norm.bias`] = [d];
  if (cfg.projection ?? true) s["text_projection.weight"] = [p, d];
  return s;
}

/**
 * CLIP's initialisation (`initialize_parameters` in openai/CLIP): token embeddings N(0, 0.02²), positions N(0, 0.01²),
 * attention inputs std width^-½, MLP input (2·width)^-½, both residual outputs width^-½·(2·layers)^-½, the projection
 * width^-½; biases 0 and layer-norm gains 1. Each tensor draws from its own stream `rng.fold(name)`.
 */
export function initClipText(cfg: ClipTextConfig, rng: Rng): Record<string, Float32Array> {
  const shapes = clipTextShapes(cfg);
  const d = cfg.width;
  const attnStd = d ** -0.5, projStd = d ** -0.5 * (2 * cfg.layers) ** -0.5, fcStd = (2 * d) ** -0.5;
  const std = (name: string): number => {
    if (name.endsWith("token_embedding.weight")) return 0.02;
    if (name.endsWith("position_embedding.weight")) return 0.01;
    if (/(q|k|v)_proj\.weight$/.test(name)) return attnStd;
    if (/(out_proj|fc2)\.weight$/.test(name)) return projStd;
    if (name.endsWith("fc1.weight")) return fcStd;
    if (name === "text_projection.weight") return d ** -0.5;
    return 0;
  };
  const out: Record<string, Float32Array> = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const s = std(name);
    if (s > 0) out[name] = rng.fold(name).normal(n).map((x) => x * s);
    else out[name] = new Float32Array(n).fill(/layer_norm\d?\.weight$/.test(name) ? 1 : 0);
  }
  return out;
}

/** Causal multi-head attention over [B, T, D]: position i attends to positions ≤ i only (`allowed` [T, T] bool). */
function causalAttention(q: Tensor, k: Tensor, v: Tensor, heads: number, allowed: Tensor): Tensor {
  const [b, t, d] = q.shape;
  const dh = d / heads;
  const split = (x: Tensor) => transpose(reshape(x, [b, t, heads, dh]), [0, 2, 1, 3]);
  const s = mul(matmul(split(q), swapAxes(split(k), -1, -2)), 1 / Math.sqrt(dh));
  // A large finite negative rather than −∞: every row keeps its diagonal, so exp underflows to exactly 0 anyway.
  const masked = where(allowed, s, -1e9);
  const o = matmul(softmax(masked, -1), split(v));
  return reshape(transpose(o, [0, 2, 1, 3]), [b, t, d]);
}

/** Outputs of `clipTextForward`. */
export interface ClipTextOutputs {
  /** [B, L, width]: the final layer norm's output at every position. */
  lastHiddenState: Tensor;
  /** [B, width]: `lastHiddenState` at the pooling position (see `ClipTextConfig.eosTokenId`). */
  pooled: Tensor;
  /** [B, projectionDim]: `pooled` through the text projection; `pooled` itself for a model without one. */
  textEmbeds: Tensor;
  /**
   * [B, L, width] each: the embeddings, then every layer's output, before the final layer norm (transformers'
   * `hidden_states`: `hiddenStates[layers - 1]` is its `hidden_states[-2]`, the penultimate layer).
   */
  hiddenStates: Tensor[];
}

/**
 * The forward pass for token ids `ids` (i32 [B, L], L ≤ maxLength). `p` maps the names of `clipTextShapes` to
 * tensors (graph inputs to train them, constants to export them).
 */
export function clipTextForward(cfg: ClipTextConfig, p: Record<string, Tensor>, ids: Tensor): ClipTextOutputs {
  checkConfig(cfg);
  if (ids.dtype !== "i32" || ids.ndim !== 2) fail("clipTextForward", `ids must be i32 [batch, length], got ${ids}`);
  const [b, l] = ids.shape;
  if (l > cfg.maxLength) fail("clipTextForward", `${l} ids exceed maxLength ${cfg.maxLength}`);
  const shapes = clipTextShapes(cfg);
  for (const [name, shape] of Object.entries(shapes)) {
    const t = p[name];
    if (!t) fail("clipTextForward", `missing parameter "${name}"`);
    if (t.shape.join(",") !== shape.join(",")) {
      fail("clipTextForward", `parameter "${name}" is ${t}, expected [${shape}]`);
    }
  }
  const tr = ids.trace;
  const eps = cfg.layerNormEps;
  const pos = sliceAxis(p[`${TM}.embeddings.position_embedding.weight`], 0, 0, l);
  let h = add(gather(p[`${TM}.embeddings.token_embedding.weight`], ids, 0), pos);
  const allowed = new Uint8Array(l * l);
  for (let i = 0; i < l; i++) for (let j = 0; j <= i; j++) allowed[i * l + j] = 1;
  const mask = tr.constant(allowed, [l, l], "bool");
  const act = cfg.hiddenAct === "gelu" ? gelu : quickGelu;
  const hiddenStates = [h];
  for (let i = 0; i < cfg.layers; i++) {
    const k = layerKey(i);
    const lin = (x: Tensor, name: string) => linear(x, p[`${k}.${name}.weight`], p[`${k}.${name}.bias`]);
    const x = layerNorm(h, p[`${k}.layer_norm1.weight`], p[`${k}.layer_norm1.bias`], eps);
    const a = causalAttention(
      lin(x, "self_attn.q_proj"),
      lin(x, "self_attn.k_proj"),
      lin(x, "self_attn.v_proj"),
      cfg.heads,
      mask,
    );
    h = add(h, lin(a, "self_attn.out_proj"));
    const y = layerNorm(h, p[`${k}.layer_norm2.weight`], p[`${k}.layer_norm2.bias`], eps);
    h = add(h, lin(act(lin(y, "mlp.fc1")), "mlp.fc2"));
    hiddenStates.push(h);
  }
  h = layerNorm(h, p[`${TM}.final_layer_norm.weight`], p[`${TM}.final_layer_norm.bias`], eps);
  const pooled = sum(mul(h, reshape(poolingMask(ids, cfg.eosTokenId), [b, l, 1])), 1);
  const textEmbeds = cfg.projection ?? true ? linear(pooled, p["text_projection.weight"]) : pooled;
  return { lastHiddenState: h, pooled, textEmbeds, hiddenStates };
}

/**
 * [B, L] f32, 1 at the pooling position of each row, else 0. An argmax over positions without an argmax primitive:
 * mark the candidate positions, weight earlier ones higher (L − position), keep the one with the largest weight. Ids
 * are below 2^24, so f32 holds them exactly.
 */
function poolingMask(ids: Tensor, eosTokenId: number | undefined): Tensor {
  const l = ids.shape[1];
  const idsF = cast(ids, "f32");
  // Built in this order (the committed default encoder's ONNX is byte-for-byte what this traces).
  const earlier = () => ids.trace.constant(Array.from({ length: l }, (_, i) => l - i), [l]);
  if (eosTokenId === undefined) {
    const isMax = toFloat(equal(idsF, max(idsF, 1, true)));
    const score = mul(isMax, earlier());
    return toFloat(equal(score, max(score, 1, true)));
  }
  // A row without the id pools at position 0, as transformers' argmax over an all-false row does: marks weigh 2L, more
  // than any position's own weight.
  const isEos = toFloat(equal(idsF, eosTokenId));
  const score = add(mul(isEos, 2 * l), earlier());
  return toFloat(equal(score, max(score, 1, true)));
}

/**
 * What `traceClipText` can output: `last_hidden_state`, `pooler_output` and `text_embeds` (transformers' names), the
 * penultimate layer's output as is (`penultimate_hidden_state`, SDXL's choice) and through the final layer norm
 * (`penultimate_hidden_state_normed`, diffusers' `clip_skip=1`).
 */
export type ClipTextOutput =
  | "last_hidden_state"
  | "pooler_output"
  | "text_embeds"
  | "penultimate_hidden_state"
  | "penultimate_hidden_state_normed";

/**
 * Traces the model with its weights as constants, for export: input `input_ids` i32 [batch, maxLength], and
 * `outputs` (by default `last_hidden_state` and `text_embeds`, the names transformers.js's
 * `CLIPTextModelWithProjection` returns).
 */
export function traceClipText(
  cfg: ClipTextConfig,
  weights: Record<string, Float32Array>,
  batch: number,
  outputs: ClipTextOutput[] = ["last_hidden_state", "text_embeds"],
): Graph {
  const tr = new Trace();
  const ids = tr.input("input_ids", [batch, cfg.maxLength], "i32");
  const p: Record<string, Tensor> = {};
  for (const [name, shape] of Object.entries(clipTextShapes(cfg))) {
    if (!weights[name]) throw new Error(`traceClipText: missing weight "${name}"`);
    p[name] = tr.constant(weights[name], shape);
  }
  const o = clipTextForward(cfg, p, ids);
  const penultimate = o.hiddenStates[cfg.layers - 1];
  const all: Record<ClipTextOutput, () => Tensor> = {
    last_hidden_state: () => o.lastHiddenState,
    pooler_output: () => o.pooled,
    text_embeds: () => {
      if (!(cfg.projection ?? true)) throw new Error("traceClipText: text_embeds needs a model with a projection");
      return o.textEmbeds;
    },
    penultimate_hidden_state: () => penultimate,
    penultimate_hidden_state_normed: () =>
      layerNorm(penultimate, p[`${TM}.final_layer_norm.weight`], p[`${TM}.final_layer_norm.bias`], cfg.layerNormEps),
  };
  return tr.build(Object.fromEntries(outputs.map((k) => [k, all[k]()])));
}
