// A diffusers pipeline's text encoder beyond one local file (models/diffusers/clip_text_hub.ts, clip_text_folder.ts):
// sharded weights (model.safetensors.index.json and its shards) load and encode as the single file does, and a hub
// id's text encoder and tokenizer download through a fake hub (the fixture folder tests/fixtures/diffusers/clip
// served by an injected fetcher: the network is never used) once into the hub cache and encode as the local folder
// does; text_encode plans a downloaded id from the cache and tells how to download one that is not.
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { env } from "@huggingface/transformers";
import { decodeSafetensors, encodeSafetensors } from "../../../engine/safetensors.ts";
import { Rng } from "../../../engine/rng.ts";
import { type CaptionEncoder, loadCaptionEncoder } from "../../../models/caption_encoder.ts";
import { loadClipTextWeights, openClipTextFolder } from "../../../models/diffusers/clip_text_folder.ts";
import { downloadHubTextEncoder, isHubPipeline } from "../../../models/diffusers/clip_text_hub.ts";
import { type Fetcher, HUB_CACHE } from "../../../models/diffusers/folder.ts";
import { plannedEncoderDims, TextEncoderSpec } from "../../../models/text_encoder_spec.ts";
import type { Dataset } from "../../../pipeline/stage.ts";
import { textEncode } from "../../../stages/text_encode.ts";
import { hostContext } from "../../helpers/host_context.ts";
import { FIXTURES } from "./diffusers_reference.ts";

env.allowRemoteModels = false;
const opts = { sanitizeResources: false, sanitizeOps: false };
const CLIP = `${FIXTURES}clip`;
const PROMPTS: string[] = JSON.parse(await Deno.readTextFile(`${FIXTURES}clip_tokens.json`)).prompts;
const DIMS = { length: 77, width: 32, projection: 32 };

/** Every file under `root`, by path relative to it. */
async function filesOf(root: string, sub = ""): Promise<Record<string, Uint8Array>> {
  const out: Record<string, Uint8Array> = {};
  for await (const e of Deno.readDir(`${root}/${sub}`)) {
    const rel = sub ? `${sub}/${e.name}` : e.name;
    if (e.isDirectory) Object.assign(out, await filesOf(root, rel));
    else out[rel] = await Deno.readFile(`${root}/${rel}`);
  }
  return out;
}

/** A copy of the fixture pipeline whose text encoder weights are two shards and their index. */
async function shardedCopy(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "clip_sharded_" });
  const files = await filesOf(CLIP);
  const { tensors } = decodeSafetensors(files["text_encoder/model.safetensors"]);
  delete files["text_encoder/model.safetensors"];
  const keys = Object.keys(tensors).sort(), half = Math.ceil(keys.length / 2);
  const shards = [keys.slice(0, half), keys.slice(half)];
  const name = (i: number) => `model-0000${i + 1}-of-00002.safetensors`;
  shards.forEach((ks, i) => {
    files[`text_encoder/${name(i)}`] = encodeSafetensors(Object.fromEntries(ks.map((k) => [k, tensors[k]])));
  });
  const weightMap = Object.fromEntries(shards.flatMap((ks, i) => ks.map((k) => [k, name(i)])));
  files["text_encoder/model.safetensors.index.json"] = new TextEncoder().encode(
    JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
  );
  for (const [rel, bytes] of Object.entries(files)) {
    await Deno.mkdir(dirname(`${root}/${rel}`), { recursive: true });
    await Deno.writeFile(`${root}/${rel}`, bytes);
  }
  return root;
}

/** A fake hub serving `files` (path in the repo → bytes) as hub id `id`; records the URLs asked for. */
function fakeHub(id: string, files: Record<string, Uint8Array>) {
  const asked: string[] = [];
  const prefix = `https://huggingface.co/${id}/resolve/main/`;
  const fetcher: Fetcher = (url) => {
    asked.push(url.startsWith(prefix) ? url.slice(prefix.length) : url);
    const body = url.startsWith(prefix) ? files[url.slice(prefix.length)] : undefined;
    return Promise.resolve(body ? new Response(body as BodyInit) : new Response("no", { status: 404 }));
  };
  return { asked, fetcher };
}

const pipelineFiles = async (root: string) => ({
  ...await filesOf(root),
  "model_index.json": new TextEncoder().encode('{"_class_name": "StableDiffusionPipeline"}'),
});

async function encodeAll(enc: CaptionEncoder) {
  return await enc.encode(PROMPTS);
}

Deno.test(
  "diffusers CLIP text: sharded weights (an index and its shards) load and encode as the single file",
  opts,
  async () => {
    const root = await shardedCopy(), cache = await Deno.makeTempDir();
    try {
      const f = openClipTextFolder(root);
      assert.equal(f.weights.source, `${root}/text_encoder/model.safetensors.index.json`);
      assert.equal(new Set(Object.values(f.weights.files)).size, 2);
      assert.deepEqual(loadClipTextWeights(f), loadClipTextWeights(openClipTextFolder(CLIP)));
      for (const layer of ["last", "penultimate"] as const) {
        const sharded = await loadCaptionEncoder(root, undefined, cache, { layer });
        const single = await loadCaptionEncoder(CLIP, undefined, cache, { layer });
        assert.deepEqual(await encodeAll(sharded), await encodeAll(single), layer);
      }
      await Deno.remove(`${root}/text_encoder/model-00002-of-00002.safetensors`);
      assert.throws(
        () => openClipTextFolder(root),
        (e: Error) =>
          /index\.json: names the shard .*model-00002-of-00002\.safetensors, which is not there$/.test(e.message),
      );
      await Deno.remove(`${root}/text_encoder/model.safetensors.index.json`);
      assert.throws(
        () => openClipTextFolder(root),
        /text_encoder: has no model\.safetensors or model\.fp16\.safetensors/,
      );
    } finally {
      await Deno.remove(root, { recursive: true });
      await Deno.remove(cache, { recursive: true });
    }
  },
);

Deno.test(
  "diffusers hub id: the text encoder and tokenizer download once and encode as the local folder",
  opts,
  async () => {
    const hubRoot = await Deno.makeTempDir(), cache = await Deno.makeTempDir();
    try {
      const hub = fakeHub("org/sd", await pipelineFiles(CLIP));
      const o = { hub: { fetch: hub.fetcher, cacheRoot: hubRoot, token: "" } };
      // No subfolder: the hub's model_index.json marks a pipeline.
      const enc = await loadCaptionEncoder("org/sd", undefined, cache, o);
      assert.deepEqual(hub.asked, [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
      ]);
      const cached = await filesOf(`${hubRoot}/org/sd`);
      for (const [rel, bytes] of Object.entries(await filesOf(CLIP))) assert.deepEqual(cached[rel], bytes, rel);
      assert.deepEqual(enc.dims, DIMS);
      assert.deepEqual(await encodeAll(enc), await encodeAll(await loadCaptionEncoder(CLIP, undefined, cache)));
      // Downloaded: another layer (or a later run) reads the cache and asks the hub nothing.
      hub.asked.length = 0;
      const pen = await loadCaptionEncoder("org/sd", undefined, cache, {
        ...o,
        subfolder: "text_encoder",
        layer: "penultimate",
      });
      const local = await loadCaptionEncoder(CLIP, undefined, cache, { layer: "penultimate" });
      assert.deepEqual(await encodeAll(pen), await encodeAll(local));
      assert.deepEqual(hub.asked, []);
      const at = (k: string) => ["params", k];
      assert.deepEqual(plannedEncoderDims(TextEncoderSpec.parse("org/sd"), at, hubRoot), DIMS);
    } finally {
      await Deno.remove(hubRoot, { recursive: true });
      await Deno.remove(cache, { recursive: true });
    }
  },
);

Deno.test(
  "diffusers hub id: a sharded text encoder downloads its index and shards; a repo that is none",
  opts,
  async () => {
    const root = await shardedCopy(), hubRoot = await Deno.makeTempDir(), cache = await Deno.makeTempDir();
    try {
      const hub = fakeHub("org/big", await pipelineFiles(root));
      const o = { fetch: hub.fetcher, cacheRoot: hubRoot, token: "" };
      assert.equal(await downloadHubTextEncoder("org/big", { ...o, subfolder: "text_encoder" }), `${hubRoot}/org/big`);
      assert.deepEqual(hub.asked.filter((u) => u.startsWith("text_encoder/")), [
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
      ]);
      const enc = await loadCaptionEncoder("org/big", undefined, cache, { subfolder: "text_encoder", hub: o });
      assert.deepEqual(await encodeAll(enc), await encodeAll(await loadCaptionEncoder(CLIP, undefined, cache)));
      // No model_index.json: not a pipeline (a transformers.js model id); unreachable: not known to be one.
      const none = fakeHub("org/plain", {});
      assert.equal(await isHubPipeline("org/plain", { fetch: none.fetcher, cacheRoot: hubRoot }), false);
      const offline: Fetcher = () => Promise.reject(new TypeError("dns error"));
      assert.equal(await isHubPipeline("org/plain", { fetch: offline, cacheRoot: hubRoot }), false);
      // The hub's refusal is its answer, told as it is (a gated pipeline), not taken for "no pipeline".
      const gated: Fetcher = () => Promise.resolve(new Response("no", { status: 401 }));
      await assert.rejects(
        isHubPipeline("org/gated", { fetch: gated, cacheRoot: hubRoot, token: "" }),
        /^DiffusersFolderError: hub id "org\/gated": HTTP 401 .*needs HF_TOKEN$/,
      );
      const noTok = fakeHub("org/notok", {
        "text_encoder/config.json": (await filesOf(CLIP))["text_encoder/config.json"],
      });
      const err = await downloadHubTextEncoder("org/notok", { ...o, fetch: noTok.fetcher }).then(
        () => "",
        (e) => e.message,
      );
      assert.match(
        err,
        /^hub id "org\/notok": org\/notok \(subfolder text_encoder\) has neither model\.safetensors nor/,
      );
    } finally {
      for (const d of [root, hubRoot, cache]) await Deno.remove(d, { recursive: true });
    }
  },
);

/** text_encode's types for `params` on a batch of `n` caption ids. */
function plan(params: Record<string, unknown>, n = 2) {
  return textEncode.types({
    params: textEncode.params.parse({ dataset: "d", ...params }),
    inputs: { caption_id: { dtype: "i32", shape: [n] } },
    models: {},
    datasets: { d: { name: "d", kind: "x", params: {} } },
  });
}

function planError(params: Record<string, unknown>): { message: string; at: string } {
  try {
    plan(params);
  } catch (e) {
    const err = e as Error & { at?: string[] };
    assert.ok(!err.message.includes("\n"), err.message);
    return { message: err.message, at: (err.at ?? []).join(".") };
  }
  throw new Error(`planned ${JSON.stringify(params)}`);
}

async function stageRows(model: string, layer: string, ids: number[]) {
  const ds: Dataset = { size: PROMPTS.length, batch: () => ({}), captions: PROMPTS };
  const cache = await Deno.makeTempDir();
  const ctx = hostContext("te", { rng: new Rng(0), cache, dataset: () => Promise.resolve(ds) });
  try {
    return await textEncode.host!(ctx, textEncode.params.parse({ dataset: "d", model, layer }), {
      caption_id: Int32Array.from(ids),
    });
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
}

Deno.test("text_encode with a diffusers hub id: planned from the download, or needs dims before it", opts, async () => {
  // The stage reads the default hub cache (relative to the working directory): a unique id there, removed after.
  const org = `add-test-${crypto.randomUUID().slice(0, 8)}`, id = `${org}/sd`;
  try {
    const before = planError({ model: id, subfolder: "text_encoder" });
    assert.equal(before.at, "params.model");
    assert.match(before.message, new RegExp(`^hub id "${id}": its text_encoder is not downloaded .*params\\.dims`));
    assert.match(before.message, new RegExp(`deno task diffusers fetch ${id} --subfolder text_encoder$`));
    assert.match(
      planError({ model: id }).message,
      /read as a hub id, which needs params\.dims .*subfolder: text_encoder/,
    );
    assert.deepEqual(plan({ model: id, layer: "penultimate", dims: DIMS }, 3).tokens.shape, [3, 77, 32]);

    const hub = fakeHub(id, await pipelineFiles(CLIP));
    await downloadHubTextEncoder(id, { fetch: hub.fetcher, token: "" });
    // Downloaded: no subfolder and no dims needed, sizes from the cache; dims that say otherwise are wrong.
    assert.deepEqual(plan({ model: id }), {
      tokens: { dtype: "f32", shape: [2, 77, 32] },
      pooled: { dtype: "f32", shape: [2, 32] },
    });
    // A variant the download does not hold is planned from dims (the run fetches it), not refused.
    assert.deepEqual(plan({ model: id, variant: "fp16", dims: DIMS }).tokens.shape, [2, 77, 32]);
    const wrong = planError({ model: id, dims: { ...DIMS, width: 768 } });
    assert.equal(wrong.at, "params.dims");
    assert.match(wrong.message, /differ from the downloaded/);
    const [hubRows, localRows] = [
      await stageRows(id, "penultimate", [0, 4]),
      await stageRows(CLIP, "penultimate", [0, 4]),
    ];
    assert.deepEqual(hubRows, localRows);
  } finally {
    await Deno.remove(`${HUB_CACHE}/${org}`, { recursive: true }).catch(() => {});
  }
});
