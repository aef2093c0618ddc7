// The text encoder: the engine's CLIP text model against plain float64 loops and finite differences; the committed
// models/text_encoder against a fresh build; transformers.js (offline, on the committed folder) against the engine's
// forward pass and against the host tokenizer on every caption; the int64 lowering option; the text_encode stage.
import assert from "node:assert/strict";
import { AutoTokenizer, CLIPTextModelWithProjection, env } from "@huggingface/transformers";
import { OrtNodeExecutor } from "../../engine/executors/ort_node.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { add, mul } from "../../engine/math.ts";
import { lowerToOnnx } from "../../engine/onnx/lower.ts";
import { cast, concat, reshape } from "../../engine/ops.ts";
import { Rng } from "../../engine/rng.ts";
import { readSafetensors, toFloat32 } from "../../engine/safetensors.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";
import { BpeTokenizer, learnBpe } from "../../models/bpe_tokenizer.ts";
import {
  type ClipTextConfig,
  clipTextForward,
  clipTextShapes,
  initClipText,
  traceClipText,
} from "../../models/clip_text.ts";
import { buildTextEncoderFiles, textEncoderCaptions } from "../../models/text_encoder_build.ts";
import type { Dataset } from "../../pipeline/stage.ts";
import { hostContext } from "../helpers/host_context.ts";
import { loadCaptionEncoder } from "../../models/caption_encoder.ts";
import { textEncode } from "../../stages/text_encode.ts";
import { checkGrad, type InputSpec } from "../helpers/grad_check.ts";

const DIR = new URL("../../models/text_encoder", import.meta.url).pathname;
env.allowRemoteModels = false;
// onnxruntime sessions live as long as the loaded model, across tests.
const opts = { sanitizeResources: false, sanitizeOps: false };

// ---------------------------------------------------------------- a plain float64 CLIP text model

type W = Record<string, Float32Array>;

function layerNorm(x: Float64Array, g: Float32Array, b: Float32Array, eps: number): Float64Array {
  const n = x.length;
  let mu = 0, v = 0;
  for (const a of x) mu += a / n;
  for (const a of x) v += (a - mu) ** 2 / n;
  return x.map((a, i) => ((a - mu) / Math.sqrt(v + eps)) * g[i] + b[i]);
}

/** y = W x + b, W [out, in] row-major. */
function lin(x: Float64Array, w: Float32Array, b: Float32Array | null, out: number): Float64Array {
  const y = new Float64Array(out), n = x.length;
  for (let o = 0; o < out; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < n; i++) s += w[o * n + i] * x[i];
    y[o] = s;
  }
  return y;
}

/** CLIP's text forward for one id sequence, written from the paper's description with loops. */
function plainClip(cfg: ClipTextConfig, w: W, ids: number[]): { hidden: Float64Array[]; embeds: Float64Array } {
  const { width: d, heads, intermediate: f, layerNormEps: eps } = cfg;
  const dh = d / heads, l = ids.length;
  const tm = "text_model", row = (m: Float32Array, r: number) => Float64Array.from(m.subarray(r * d, (r + 1) * d));
  let h: Float64Array[] = ids.map((id, t) =>
    row(w[`${tm}.embeddings.token_embedding.weight`], id)
      .map((v, c) => v + w[`${tm}.embeddings.position_embedding.weight`][t * d + c])
  );
  for (let i = 0; i < cfg.layers; i++) {
    const k = (s: string) => w[`${tm}.encoder.layers.${i}.${s}`];
    const x = h.map((r) => layerNorm(r, k("layer_norm1.weight"), k("layer_norm1.bias"), eps));
    const q = x.map((r) => lin(r, k("self_attn.q_proj.weight"), k("self_attn.q_proj.bias"), d));
    const kk = x.map((r) => lin(r, k("self_attn.k_proj.weight"), k("self_attn.k_proj.bias"), d));
    const v = x.map((r) => lin(r, k("self_attn.v_proj.weight"), k("self_attn.v_proj.bias"), d));
    const att = h.map(() => new Float64Array(d));
    for (let hd = 0; hd < heads; hd++) {
      for (let t = 0; t < l; t++) {
        const s: number[] = [];
        for (let u = 0; u <= t; u++) {
          let dot = 0;
          for (let c = hd * dh; c < (hd + 1) * dh; c++) dot += q[t][c] * kk[u][c];
          s.push(dot / Math.sqrt(dh));
        }
        const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), z = e.reduce((a, b) => a + b, 0);
        for (let u = 0; u <= t; u++) for (let c = hd * dh; c < (hd + 1) * dh; c++) att[t][c] += (e[u] / z) * v[u][c];
      }
    }
    h = h.map((r, t) => {
      const r2 = r.map((a, c) => a + lin(att[t], k("self_attn.out_proj.weight"), k("self_attn.out_proj.bias"), d)[c]);
      const y = layerNorm(r2, k("layer_norm2.weight"), k("layer_norm2.bias"), eps);
      const m = lin(y, k("mlp.fc1.weight"), k("mlp.fc1.bias"), f).map((a) => a / (1 + Math.exp(-1.702 * a)));
      const o = lin(m, k("mlp.fc2.weight"), k("mlp.fc2.bias"), d);
      return r2.map((a, c) => a + o[c]);
    });
  }
  h = h.map((r) => layerNorm(r, w[`${tm}.final_layer_norm.weight`], w[`${tm}.final_layer_norm.bias`], eps));
  const eos = ids.indexOf(Math.max(...ids)); // torch.argmax: the first maximum
  return { hidden: h, embeds: lin(h[eos], w["text_projection.weight"], null, cfg.projectionDim) };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "lengths differ");
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// ---------------------------------------------------------------- tests

Deno.test("clipTextForward matches plain float64 loops (random biases and gains, EOS anywhere or cut off)", () => {
  const cfg: ClipTextConfig = {
    vocabSize: 23,
    width: 8,
    layers: 2,
    heads: 2,
    intermediate: 12,
    maxLength: 6,
    projectionDim: 5,
    layerNormEps: 1e-5,
  };
  const rng = new Rng(7);
  // CLIP's init leaves biases at 0 and gains at 1, which would hide a bias or gain applied wrongly: perturb all.
  const w = initClipText(cfg, rng.fold("init"));
  for (const [k, v] of Object.entries(w)) {
    const n = rng.fold(k).normal(v.length);
    w[k] = v.map((x, i) => x + 0.3 * n[i]);
  }
  // 22 is the highest id (EOS); row 2 has it twice, row 3 not at all (truncated text: argmax is another id).
  const ids = [[21, 3, 22, 22, 22, 22], [21, 5, 9, 1, 4, 22], [21, 22, 7, 22, 0, 0], [21, 8, 2, 19, 2, 3]];
  const g = traceClipText(cfg, w, ids.length);
  const out = evaluate(g, { input_ids: { data: ids.flat(), shape: [ids.length, cfg.maxLength] } });
  const l = cfg.maxLength, d = cfg.width, p = cfg.projectionDim;
  // Not 1e-12: the engine's scalar constants (1.702, eps) are float32 even on the float64 reference.
  ids.forEach((row, b) => {
    const ref = plainClip(cfg, w, row);
    const hid = out.last_hidden_state.subarray(b * l * d, (b + 1) * l * d);
    assert.ok(maxDiff(hid, ref.hidden.flatMap((r) => [...r])) < 1e-6, `row ${b}: last_hidden_state`);
    assert.ok(maxDiff(out.text_embeds.subarray(b * p, (b + 1) * p), ref.embeds) < 1e-6, `row ${b}: text_embeds`);
  });
  // Causality: changing a later id leaves earlier positions' states unchanged.
  const changed = [[21, 5, 9, 1, 4, 22], [21, 5, 9, 2, 4, 22], [21, 5, 9, 1, 4, 22], [21, 5, 9, 1, 4, 22]];
  const out2 = evaluate(g, { input_ids: { data: changed.flat(), shape: [4, l] } });
  const a = out2.last_hidden_state.subarray(0, l * d), b = out2.last_hidden_state.subarray(l * d, 2 * l * d);
  assert.ok(maxDiff(a.subarray(0, 3 * d), b.subarray(0, 3 * d)) === 0, "positions before the change moved");
  assert.ok(maxDiff(a.subarray(3 * d), b.subarray(3 * d)) > 1e-3, "positions after the change did not move");
});

Deno.test("clipTextForward's gradients in every parameter match finite differences", () => {
  const cfg: ClipTextConfig = {
    vocabSize: 9,
    width: 4,
    layers: 1,
    heads: 2,
    intermediate: 6,
    maxLength: 4,
    projectionDim: 3,
    layerNormEps: 1e-5,
  };
  const init = initClipText(cfg, new Rng(3));
  const names = Object.keys(clipTextShapes(cfg));
  const noise = new Rng(4);
  const specs: InputSpec[] = names.map((k) => {
    const n = noise.fold(k).normal(init[k].length);
    return { shape: clipTextShapes(cfg)[k], data: [...init[k]].map((v, i) => v + 0.5 * n[i]) };
  });
  specs.push({ shape: [2, 4], data: [7, 2, 8, 8, 7, 5, 1, 8], dtype: "i32", fixed: true });
  checkGrad("clip_text", specs, (xs) => {
    const p = Object.fromEntries(names.map((k, i) => [k, xs[i]]));
    const o = clipTextForward(cfg, p, xs[names.length]);
    return concat([reshape(o.lastHiddenState, [-1]), reshape(o.textEmbeds, [-1])], 0);
  }, { samples: 3, tol: 1e-4 });
});

Deno.test("clipTextForward rejects bad ids and parameters with one clear line", () => {
  const cfg: ClipTextConfig = {
    vocabSize: 10,
    width: 4,
    layers: 1,
    heads: 2,
    intermediate: 4,
    maxLength: 3,
    projectionDim: 2,
    layerNormEps: 1e-5,
  };
  const tr = new Trace();
  const p: Record<string, Tensor> = {};
  for (const [k, s] of Object.entries(clipTextShapes(cfg))) p[k] = tr.input(k, s);
  assert.throws(() => clipTextForward(cfg, p, tr.input("x", [1, 4], "i32")), /4 ids exceed maxLength 3/);
  assert.throws(() => clipTextForward(cfg, p, tr.input("y", [1, 3])), /ids must be i32/);
  const { ["text_projection.weight"]: _, ...rest } = p;
  assert.throws(() => clipTextForward(cfg, rest, tr.input("z", [1, 3], "i32")), /missing parameter "text_projection/);
  assert.throws(() => clipTextShapes({ ...cfg, heads: 3 }), /does not split into 3 heads/);
});

Deno.test("learnBpe: merges the most frequent pair first, and encoding reproduces the learned words", () => {
  const m = learnBpe(["low lower lowest", "low low", "newer wider"], 512 + 2 + 10);
  // "l o" occurs 5 times (low ×3, lower, lowest); then "e r</w>" (lower, newer, wider) and "lo w</w>" (low ×3) tie
  // and the smaller pair wins. Learning stops when no pair occurs twice, before the asked-for size.
  assert.deepEqual(m.merges, [["l", "o"], ["e", "r</w>"], ["lo", "w</w>"], ["lo", "w"]]);
  assert.equal(m.vocab.length, 512 + 2 + 4);
  assert.equal(m.vocab.at(-1), "<|endoftext|>");
  const tok = new BpeTokenizer(m, 8);
  const ids = tok.tokenize("LOW");
  assert.deepEqual(ids.map((i) => m.vocab[i]), ["<|startoftext|>", "low</w>", "<|endoftext|>"]);
  // Truncation keeps the first ids, so text too long for maxLength loses its EOS, as in transformers.js.
  const long = tok.encode("low low low low low low low low low");
  assert.equal(long.length, 8);
  assert.ok(!long.includes(tok.eosId));
  assert.deepEqual([...tok.encode("")], [tok.bosId, ...new Array(7).fill(tok.eosId)]);
  assert.throws(() => learnBpe([], 100), /vocabSize must be an integer ≥ 514/);
});

Deno.test("models/text_encoder is exactly what the build task makes, and stays under 2 MB", async () => {
  const files = buildTextEncoderFiles();
  let total = 0;
  for (const [rel, bytes] of Object.entries(files)) {
    const disk = await Deno.readFile(`${DIR}/${rel}`);
    total += disk.length;
    assert.ok(
      disk.length === bytes.length && disk.every((v, i) => v === bytes[i]),
      `${rel} differs from a fresh build: run \`deno task build:text-encoder\``,
    );
  }
  assert.ok(total < 2 * 1024 * 1024, `models/text_encoder is ${total} bytes`);
  // The safetensors hold the same weights as the seeded init, under the shapes of config.json's sizes.
  const cfg = JSON.parse(new TextDecoder().decode(files["config.json"]));
  const st = await readSafetensors(`${DIR}/model.safetensors`);
  assert.equal(st.tensors["text_model.embeddings.token_embedding.weight"].shape.join(), `${cfg.vocab_size},64`);
});

Deno.test(
  "transformers.js's CLIPTokenizer and the host tokenizer give the same ids for every caption",
  opts,
  async () => {
    const tok = await AutoTokenizer.from_pretrained(DIR, { local_files_only: true });
    const host = BpeTokenizer.fromFiles(
      await Deno.readTextFile(`${DIR}/tokenizer.json`),
      await Deno.readTextFile(`${DIR}/tokenizer_config.json`),
    );
    const extra = [
      "  Red   APPLE\t", // whitespace runs, case
      "it's a café, naïve & co. 1234",
      "e\u0301", // NFC composes to é
      "🍎 apple emoji ✨",
      "a very long caption that certainly takes more than thirty two tokens once it is split into words and digits 12345",
    ];
    const captions = [...textEncoderCaptions(), ...extra];
    const got = tok(captions, { padding: "max_length", truncation: true, max_length: host.maxLength });
    const all = got.input_ids.data as BigInt64Array;
    assert.equal(all.length, captions.length * host.maxLength);
    let bad = 0;
    captions.forEach((c, i) => {
      const want = host.encode(c);
      const row = all.subarray(i * host.maxLength, (i + 1) * host.maxLength);
      if (want.some((v, j) => BigInt(v) !== row[j]) && bad++ < 3) {
        console.error(`caption ${JSON.stringify(c)}: transformers.js ${row}, host ${want}`);
      }
    });
    assert.equal(bad, 0, `${bad} of ${captions.length} captions tokenize differently`);
    // No caption is cut: every one keeps its EOS.
    for (const c of textEncoderCaptions()) assert.ok(host.tokenize(c).length <= host.maxLength, c);
  },
);

Deno.test("transformers.js runs models/text_encoder offline and equals the engine's forward pass", opts, async () => {
  const model = await CLIPTextModelWithProjection.from_pretrained(DIR, {
    local_files_only: true,
    device: "cpu",
    dtype: "fp32",
  });
  const tok = await AutoTokenizer.from_pretrained(DIR, { local_files_only: true });
  const hf = JSON.parse(await Deno.readTextFile(`${DIR}/config.json`));
  const cfg: ClipTextConfig = {
    vocabSize: hf.vocab_size,
    width: hf.hidden_size,
    layers: hf.num_hidden_layers,
    heads: hf.num_attention_heads,
    intermediate: hf.intermediate_size,
    maxLength: hf.max_position_embeddings,
    projectionDim: hf.projection_dim,
    layerNormEps: hf.layer_norm_eps,
  };
  const st = await readSafetensors(`${DIR}/model.safetensors`);
  const w = Object.fromEntries(Object.entries(st.tensors).map(([k, t]) => [k, toFloat32(t)]));
  const captions = ["red apple", "", "ankle boot", "waving hand: medium-dark skin tone", "t-shirt/top", "flag: japan"];
  const host = BpeTokenizer.fromFiles(
    await Deno.readTextFile(`${DIR}/tokenizer.json`),
    await Deno.readTextFile(`${DIR}/tokenizer_config.json`),
  );
  const ids = captions.map((c) => [...host.encode(c)]);
  const ref = evaluate(traceClipText(cfg, w, captions.length), {
    input_ids: { data: ids.flat(), shape: [captions.length, cfg.maxLength] },
  });
  const l = cfg.maxLength, d = cfg.width, p = cfg.projectionDim;
  const embeds: Float32Array[] = [];
  for (const [b, c] of captions.entries()) {
    // The exported ONNX has a fixed batch of 1.
    const out = await model(tok([c], { padding: "max_length", truncation: true }));
    assert.deepEqual(out.last_hidden_state.dims, [1, l, d]);
    assert.deepEqual(out.text_embeds.dims, [1, p]);
    const dh = maxDiff(out.last_hidden_state.data, ref.last_hidden_state.subarray(b * l * d, (b + 1) * l * d));
    const de = maxDiff(out.text_embeds.data, ref.text_embeds.subarray(b * p, (b + 1) * p));
    assert.ok(dh < 1e-4 && de < 1e-4, `"${c}": last_hidden_state off by ${dh}, text_embeds by ${de}`);
    embeds.push(out.text_embeds.data);
  }
  // Distinct captions get clearly distinct embeddings.
  for (let i = 0; i < embeds.length; i++) {
    for (let j = i + 1; j < embeds.length; j++) assert.ok(maxDiff(embeds[i], embeds[j]) > 1e-2, `${i} vs ${j}`);
  }
});

Deno.test("lowerToOnnx int64Inputs: declares the input int64 and casts it for the graph", opts, async () => {
  const tr = new Trace();
  const ids = tr.input("ids", [2, 3], "i32");
  const x = tr.input("x", [2, 3]);
  const g = tr.build({ y: add(mul(cast(ids, "f32"), 2), x), ids_out: ids });
  assert.throws(() => lowerToOnnx(g, "cpu", { int64Inputs: ["x"] }), /"x", which is no i32 input/);
  const ort = await import("onnxruntime-node");
  const session = await ort.InferenceSession.create(lowerToOnnx(g, "cpu", { int64Inputs: ["ids"] }));
  const out = await session.run({
    ids: new ort.Tensor("int64", BigInt64Array.from([1n, -2n, 3n, 40n, 5n, 6n]), [2, 3]),
    x: new ort.Tensor("float32", Float32Array.from([0.5, 0, 0, 0, 0, -1]), [2, 3]),
  });
  assert.deepEqual([...(out.y.data as Float32Array)], [2.5, -4, 6, 80, 10, 11]);
  assert.equal(out.ids_out.type, "int32");
  await session.release();
  // Without the option the input stays int32 and the engine's own executor still runs it.
  const exec = new OrtNodeExecutor();
  const prep = await exec.prepare(g);
  const res = await prep.run({
    ids: exec.upload(Int32Array.from([1, 1, 1, 1, 1, 1]), [2, 3], "i32"),
    x: exec.upload(new Float32Array(6), [2, 3], "f32"),
  });
  assert.deepEqual([...(await exec.read(res.y))], [2, 2, 2, 2, 2, 2]);
  await exec.close();
});

Deno.test("text_encode stage: types, one encoder call per distinct caption, cached rows", opts, async () => {
  const captions = ["red apple", "", "ankle boot", "grinning face"];
  const ds: Dataset = { size: 4, batch: () => ({}), captions };
  const ctx = hostContext("te", {
    step: 1,
    rng: new Rng(0),
    dataset: (name) => name === "d" ? Promise.resolve(ds) : Promise.reject(new Error(`no dataset ${name}`)),
  });
  const params = textEncode.params.parse({ dataset: "d" });
  const datasets = { d: { name: "d", kind: "x", params: {} } };
  const types = textEncode.types({
    params,
    inputs: { caption_id: { dtype: "i32", shape: [5] } },
    models: {},
    datasets,
  });
  assert.deepEqual(types, { tokens: { dtype: "f32", shape: [5, 32, 64] }, pooled: { dtype: "f32", shape: [5, 64] } });
  assert.throws(
    () =>
      textEncode.types({
        params: { ...params, model: "nobody/none" },
        inputs: { caption_id: { dtype: "i32", shape: [5] } },
        models: {},
        datasets,
      }),
    /is read as a hub id, which needs params.dims/,
  );

  const enc = await loadCaptionEncoder(params.model);
  assert.equal(enc.batch, 1);
  const before = enc.calls, seen = enc.cached;
  const a = await textEncode.host!(ctx, params, { caption_id: Int32Array.from([0, 2, 0, 1, 2]) });
  assert.equal(enc.calls - before, 3, "three distinct captions, three calls");
  const b = await textEncode.host!(ctx, params, { caption_id: Int32Array.from([1, 3, 0]) });
  assert.equal(enc.calls - before, 4, "only the new caption is encoded");
  assert.equal(enc.cached - seen, 4);

  const L = 32 * 64, P = 64;
  const tokens = a.tokens as Float32Array, pooled = a.pooled as Float32Array;
  assert.equal(tokens.length, 5 * L);
  assert.deepEqual(tokens.subarray(0, L), tokens.subarray(2 * L, 3 * L), "the same caption gives the same rows");
  assert.deepEqual((b.pooled as Float32Array).subarray(2 * P, 3 * P), pooled.subarray(0, P));
  assert.ok(maxDiff(pooled.subarray(0, P), pooled.subarray(P, 2 * P)) > 1e-2, "different captions, same embedding");
  // The rows are the encoder's own outputs.
  const model = await CLIPTextModelWithProjection.from_pretrained(DIR, { local_files_only: true, dtype: "fp32" });
  const tok = await AutoTokenizer.from_pretrained(DIR, { local_files_only: true });
  const direct = await model(tok(["ankle boot"], { padding: "max_length", truncation: true }));
  assert.ok(maxDiff(direct.text_embeds.data, pooled.subarray(P, 2 * P)) === 0);

  await assert.rejects(
    () => textEncode.host!(ctx, params, { caption_id: Int32Array.from([4]) }),
    /caption_id 4 is outside dataset "d"'s 4 captions/,
  );
});
