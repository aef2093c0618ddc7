// models/diffusers/folder.ts on copies of the tiny SD 1.x fixture folder (tests/fixtures/diffusers/unet_sd1) made in
// a temporary folder: fp32, fp16 and bf16 files and a sharded index load to the same float32 values (bf16 values are
// exact in all three), key and shape problems are one line naming the file, and a hub id resolves to its URL and
// cache folder, downloads through an injected fetcher (the network is never used) and fails offline in one line.
import assert from "node:assert/strict";
import { encodeSafetensors, readSafetensors, type SafetensorsDType } from "../../../engine/safetensors.ts";
import {
  downloadHubFolder,
  type Fetcher,
  hubCacheDir,
  hubUrl,
  isHubId,
  loadWeights,
  locateFolder,
  openFolder,
  weightMap,
  weightNames,
} from "../../../models/diffusers/folder.ts";
import { unetShapes } from "../../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../../models/diffusers/unet2d_condition_config.ts";

const FIXTURE = new URL("../../fixtures/diffusers/unet_sd1/", import.meta.url).pathname;
const CONFIG = Deno.readTextFileSync(`${FIXTURE}config.json`);
const SHAPES = unetShapes(unetConfig(JSON.parse(CONFIG)));
const BF16 = (await readSafetensors(`${FIXTURE}diffusion_pytorch_model.bf16.safetensors`)).tensors;

/** A fresh folder with the fixture's config.json and the given weight files. */
async function folder(files: Record<string, Uint8Array | string> = {}): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "diffusers_folder_test_" });
  await Deno.writeTextFile(`${dir}/config.json`, CONFIG);
  for (const [name, data] of Object.entries(files)) {
    if (typeof data === "string") await Deno.writeTextFile(`${dir}/${name}`, data);
    else await Deno.writeFile(`${dir}/${name}`, data);
  }
  return dir;
}

/** The fixture's weights (or those of `keys`) stored as `dtype`. */
function weightsAs(dtype: SafetensorsDType, keys = Object.keys(BF16)): Uint8Array {
  return encodeSafetensors(Object.fromEntries(keys.map((k) => [k, { ...BF16[k], dtype }])));
}

function assertSameAsBf16(got: Record<string, Float32Array>) {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(SHAPES).sort());
  for (const [k, v] of Object.entries(got)) assert.deepEqual(v, BF16[k].data, k);
}

/** The one-line message `f` throws. */
function thrown(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    const msg = (e as Error).message;
    assert.ok(!msg.includes("\n"), `one line, got: ${msg}`);
    return msg;
  }
  throw new Error("expected an error");
}

Deno.test("diffusers folder: fp32, fp16 and bf16 weights load to the same float32 values", async () => {
  const dir = await folder({
    [weightNames().single]: weightsAs("F32"),
    [weightNames("fp16").single]: weightsAs("F16"),
    [weightNames("bf16").single]: weightsAs("BF16"),
  });
  try {
    for (const variant of [undefined, "fp16", "bf16"]) {
      const f = openFolder(dir), w = weightMap(f.dir, variant);
      assert.equal(f.className, "UNet2DConditionModel");
      assert.equal(w.source, `${dir}/${weightNames(variant).single}`);
      assertSameAsBf16(loadWeights(w, SHAPES));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("diffusers folder: sharded weights (index.json, and a variant's index) load to the same values", async () => {
  const keys = Object.keys(BF16), half = keys.slice(0, keys.length / 2), rest = keys.slice(keys.length / 2);
  const map = (prefix: string) =>
    JSON.stringify({
      metadata: { total_size: 0 },
      weight_map: Object.fromEntries([
        ...half.map((k) => [k, `${prefix}-00001-of-00002.safetensors`]),
        ...rest.map((k) => [k, `${prefix}-00002-of-00002.safetensors`]),
      ]),
    });
  const dir = await folder({
    "diffusion_pytorch_model-00001-of-00002.safetensors": weightsAs("F32", half),
    "diffusion_pytorch_model-00002-of-00002.safetensors": weightsAs("F32", rest),
    [weightNames().index]: map("diffusion_pytorch_model"),
    "diffusion_pytorch_model.fp16-00001-of-00002.safetensors": weightsAs("F16", half),
    "diffusion_pytorch_model.fp16-00002-of-00002.safetensors": weightsAs("F16", rest),
    [weightNames("fp16").index]: map("diffusion_pytorch_model.fp16"),
  });
  try {
    assert.equal(weightNames("fp16").index, "diffusion_pytorch_model.safetensors.index.fp16.json");
    for (const variant of [undefined, "fp16"]) {
      const w = weightMap(dir, variant);
      assert.equal(w.source, `${dir}/${weightNames(variant).index}`);
      assert.equal(new Set(Object.values(w.files)).size, 2);
      assertSameAsBf16(loadWeights(w, SHAPES));
    }
    await Deno.remove(`${dir}/diffusion_pytorch_model-00002-of-00002.safetensors`);
    assert.match(
      thrown(() => weightMap(dir)),
      /index\.json: names the shard .*-00002-of-00002\.safetensors, which is not there$/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("diffusers folder: missing, unexpected and mis-shaped keys are one line naming the file", async () => {
  const keys = Object.keys(BF16).filter((k) => k !== "conv_in.bias" && k !== "conv_out.bias");
  const tensors = Object.fromEntries(keys.map((k) => [k, { ...BF16[k], dtype: "F32" as const }]));
  const w = BF16["mid_block.resnets.0.norm1.weight"];
  tensors["mid_block.resnets.0.norm1.weight"] = { data: w.data, shape: [1, ...w.shape], dtype: "F32" };
  tensors["extra.weight"] = { data: new Float32Array(2), shape: [2], dtype: "F32" };
  const dir = await folder({ [weightNames().single]: encodeSafetensors(tensors) });
  try {
    const msg = thrown(() => loadWeights(weightMap(dir), SHAPES));
    assert.equal(
      msg,
      `${dir}/diffusion_pytorch_model.safetensors: keys do not fit the model: 2 missing (conv_in.bias, ` +
        `conv_out.bias); 1 unexpected (extra.weight); 1 mis-shaped (mid_block.resnets.0.norm1.weight is [1,32], ` +
        `expected [32])`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("diffusers folder: a missing folder, config or weight file is one line", async () => {
  const dir = await folder();
  try {
    assert.equal(thrown(() => locateFolder(`${dir}/nope`)), `${dir}/nope: no such folder`);
    assert.equal(thrown(() => locateFolder(dir, { subfolder: "unet" })), `${dir}: no subfolder "unet"`);
    await Deno.writeFile(`${dir}/${weightNames("bf16").single}`, weightsAs("BF16"));
    await Deno.writeFile(`${dir}/diffusion_pytorch_model.fp16-00001-of-00002.safetensors`, weightsAs("F16", []));
    assert.equal(
      thrown(() => weightMap(dir)),
      `${dir}: no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.safetensors.index.json; the folder ` +
        `has the variants bf16, fp16`,
    );
    await Deno.remove(`${dir}/config.json`);
    assert.match(thrown(() => locateFolder(dir)), /: no config\.json: not a diffusers model folder$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A fake hub serving `files` (name → bytes) of one id; records what was asked for. */
function fakeHub(id: string, sub: string, files: Record<string, Uint8Array | string>) {
  const asked: string[] = [];
  const fetcher: Fetcher = (url) => {
    asked.push(url);
    const prefix = `https://huggingface.co/${id}/resolve/main/${sub}/`;
    const name = url.startsWith(prefix) ? url.slice(prefix.length) : "";
    const body = files[name];
    return Promise.resolve(body === undefined ? new Response("no", { status: 404 }) : new Response(body as BodyInit));
  };
  return { asked, fetcher };
}

Deno.test("diffusers hub ids: URL and cache folder, download through a fetcher, cached afterwards", async () => {
  assert.equal(isHubId("stable-diffusion-v1-5/stable-diffusion-v1-5"), true);
  assert.equal(isHubId("models/../x"), false);
  assert.equal(isHubId("a/b/c"), false);
  assert.equal(
    hubUrl("org/name", "unet", "config.json"),
    "https://huggingface.co/org/name/resolve/main/unet/config.json",
  );
  assert.equal(
    hubUrl("org/name", undefined, "config.json"),
    "https://huggingface.co/org/name/resolve/main/config.json",
  );
  assert.equal(hubCacheDir("org/name", "unet"), ".cache/hub/org/name/unet");
  const cache = await Deno.makeTempDir({ prefix: "diffusers_hub_test_" });
  try {
    // Sharded and fp16: the single file is asked for first and is not there.
    const idx = JSON.stringify({
      weight_map: Object.fromEntries(Object.keys(BF16).map((k) => [k, "s-1.safetensors"])),
    });
    const hub = fakeHub("org/name", "unet", {
      "config.json": CONFIG,
      [weightNames("fp16").index]: idx,
      "s-1.safetensors": weightsAs("F16"),
    });
    const opts = { subfolder: "unet", variant: "fp16", cacheRoot: cache, fetch: hub.fetcher, token: "" };
    const dir = await downloadHubFolder("org/name", opts);
    assert.equal(dir, `${cache}/org/name/unet`);
    const base = "https://huggingface.co/org/name/resolve/main/unet/";
    assert.deepEqual(hub.asked, [
      `${base}config.json`,
      `${base}diffusion_pytorch_model.fp16.safetensors`,
      `${base}diffusion_pytorch_model.safetensors.index.fp16.json`,
      `${base}s-1.safetensors`,
    ]);
    const f = openFolder("org/name", opts);
    assert.equal(f.hubId, "org/name");
    assertSameAsBf16(loadWeights(weightMap(f.dir, opts.variant), SHAPES));
    for await (const e of Deno.readDir(dir)) assert.ok(!e.name.includes(".tmp-"), e.name);
    hub.asked.length = 0;
    await downloadHubFolder("org/name", opts);
    assert.deepEqual(hub.asked.filter((u) => !u.endsWith("fp16.safetensors")), [], "cached files are not fetched");
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("diffusers hub ids: offline, not downloaded, or not on the hub is one line naming the id", async () => {
  const cache = await Deno.makeTempDir({ prefix: "diffusers_hub_test_" });
  try {
    const offline: Fetcher = () => Promise.reject(new TypeError("error sending request: dns error"));
    const err = await downloadHubFolder("org/name", { cacheRoot: cache, fetch: offline, token: "" })
      .then(() => "", (e) => (e as Error).message);
    assert.equal(
      err,
      `hub id "org/name": cannot download https://huggingface.co/org/name/resolve/main/config.json (offline? ` +
        `error sending request: dns error)`,
    );
    const empty = fakeHub("org/name", "unet", { "config.json": CONFIG });
    const none = await downloadHubFolder("org/name", { subfolder: "unet", cacheRoot: cache, fetch: empty.fetcher })
      .then(() => "", (e) => (e as Error).message);
    assert.match(none, /^hub id "org\/name": org\/name \(subfolder unet\) has neither diffusion_pytorch_model\./);
    assert.equal(
      thrown(() => locateFolder("org/other", { subfolder: "unet", cacheRoot: cache })),
      `hub id "org/other": not downloaded (no ${cache}/org/other/unet/config.json, and no such local folder); while ` +
        `online run: deno task diffusers fetch org/other --subfolder unet`,
    );
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
