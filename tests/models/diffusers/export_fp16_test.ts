// deno task diffusers export --fp16 lays a pipeline out as diffusers' own `save_pretrained(variant="fp16")` does
// (diffusers v0.31 and its transformers, run on the fixture's export: the same names, dtypes and values): every
// model's weights in its fp16 variant's file only — unet/ and vae/ diffusion_pytorch_model.fp16.safetensors,
// text_encoder/model.fp16.safetensors with config.json's torch_dtype "float16" — each tensor F16 and the fp32 export's
// rounded to float16, every other file as the fp32 export has it. The text encoder matters most: diffusers passes
// `variant="fp16"` on only to the parts whose folder holds a file of that variant, so an fp32 text encoder left beside
// the fp16 UNet used to load silently in fp32.
import assert from "node:assert/strict";
import { encodeSafetensors, readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { openClipTextFolder } from "../../../models/diffusers/clip_text_folder.ts";
import { exportDiffusers } from "../../../models/diffusers/export.ts";
import { tmp } from "../../helpers/cli_run.ts";
import { FIXTURES } from "./diffusers_reference.ts";
import { handCheckpoint } from "./tiny_run.ts";

/** The fp32 weight files of a pipeline export and what `save_pretrained(variant="fp16")` names them. */
const WEIGHTS = /^(unet|vae|text_encoder)\/(diffusion_pytorch_model|model)\.safetensors$/;
const FP16_NAME = "$1/$2.fp16.safetensors";

async function filesOf(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = `${prefix}${e.name}`;
    out.push(...(e.isDirectory ? await filesOf(dir, `${rel}/`) : [rel]));
  }
  return out.sort();
}

/** A hand-made checkpoint of an SD-style run (the SD 1.x fixture UNet, the fixture VAE) whose captions `text` encoded. */
async function sdCheckpoint(dir: string, text: string): Promise<string> {
  const config = `models:
  unet: { kind: diffusers_unet, params: { path: ${FIXTURES}unet_sd1, variant: bf16 } }
  vae: { kind: diffusers_vae, params: { path: ${FIXTURES}vae } }
stages:
  text: { kind: text_encode, params: { dataset: d, model: ${text} } }
  noise: { kind: diffusion_noise, params: { schedule: { kind: linear, T: 1000 }, prediction: eps } }
`;
  await handCheckpoint(dir, config, `${FIXTURES}unet_sd1`, "bf16");
  return dir;
}

/** Every tensor of `half`'s file is F16 and equal to `full`'s rounded to float16 (its own key order aside). */
async function assertRounded(half: string, full: string) {
  const h = await readSafetensors(half), f = (await readSafetensors(full)).tensors;
  assert.deepEqual(Object.keys(h.tensors).sort(), Object.keys(f).sort(), half);
  // transformers refuses safetensors without it.
  assert.equal(h.metadata.format, "pt", half);
  for (const [k, t] of Object.entries(h.tensors)) {
    assert.equal(t.dtype, "F16", `${half}: ${k}`);
    assert.deepEqual(t.shape, f[k].shape, `${half}: ${k}`);
    const got = toFloat32(t), want = toFloat32(f[k]).map(Math.f16round);
    const at = got.findIndex((v, i) => v !== want[i]);
    assert.equal(at, -1, `${half}: ${k}[${at}] = ${got[at]}, the fp32 export's rounded: ${want[at]}`);
  }
}

/** `half` is the fp16 export of what `full` (an fp32 export) holds, file for file. */
async function assertFp16Layout(half: string, full: string) {
  const fullFiles = await filesOf(full), halfFiles = await filesOf(half);
  assert.deepEqual(halfFiles, fullFiles.map((f) => f.replace(WEIGHTS, FP16_NAME)).sort());
  for (const f of fullFiles) {
    if (WEIGHTS.test(f)) await assertRounded(`${half}/${f.replace(WEIGHTS, FP16_NAME)}`, `${full}/${f}`);
    else if (f === "text_encoder/config.json") {
      const read = async (d: string) => JSON.parse(await Deno.readTextFile(`${d}/${f}`));
      assert.deepEqual(await read(half), { ...await read(full), torch_dtype: "float16" });
    } else if (f !== "README.md") {
      assert.deepEqual(await Deno.readFile(`${half}/${f}`), await Deno.readFile(`${full}/${f}`), f);
    }
  }
}

Deno.test("diffusers export --fp16: every model's weights F16 in its fp16 variant's file, the fp32 export's rounded", async () => {
  const root = await tmp("diffusers_export_fp16"),
    ckpt = await sdCheckpoint(`${root}/sd`, `${FIXTURES}clip/text_encoder`);
  const full = await exportDiffusers(ckpt, `${root}/fp32`),
    half = await exportDiffusers(ckpt, `${root}/fp16`, {
      fp16: true,
    });
  assert.deepEqual(half.files.filter((f) => f.includes(".safetensors")), [
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
  ]);
  await assertFp16Layout(half.out, full.out);

  const card = await Deno.readTextFile(`${half.out}/README.md`);
  assert.match(
    card,
    /DiffusionPipeline\.from_pretrained\("<this folder>", variant="fp16", torch_dtype=torch\.float16\)/,
  );
  assert.match(card, /^import torch$/m);
  assert.match(card, /Text encoder: .*clip\/text_encoder \(copied, its weights as float16\)/);
  assert.match(card, /only when given `variant="fp16"`/);
  assert.doesNotMatch(await Deno.readTextFile(`${full.out}/README.md`), /variant=|torch_dtype|float16/);
  // The project reads the fp16 text encoder back without being told the variant, as it read the fixture's.
  assert.match(openClipTextFolder(half.out).weights.source, /text_encoder\/model\.fp16\.safetensors$/);
});

Deno.test("diffusers export: a text encoder with a variant's weights only is exported too, in the export's dtype", async () => {
  // clip_proj holds model.fp16.safetensors and no model.safetensors, as a hub pipeline fetched as fp16 does.
  const root = await tmp("diffusers_export_text_variant"), src = `${FIXTURES}clip_proj/text_encoder`;
  const ckpt = await sdCheckpoint(`${root}/sd`, src);
  const full = await exportDiffusers(ckpt, `${root}/fp32`),
    half = await exportDiffusers(ckpt, `${root}/fp16`, {
      fp16: true,
    });
  assert.ok(full.files.includes("text_encoder/model.safetensors"), full.files.join());
  assert.ok(!full.files.includes("text_encoder/model.fp16.safetensors"), full.files.join());
  const f32 = await readSafetensors(`${full.out}/text_encoder/model.safetensors`);
  const source = (await readSafetensors(`${src}/model.fp16.safetensors`)).tensors;
  for (const [k, t] of Object.entries(f32.tensors)) {
    assert.equal(t.dtype, "F32", k);
    assert.deepEqual(toFloat32(t), toFloat32(source[k]), k);
  }
  const config = JSON.parse(await Deno.readTextFile(`${full.out}/text_encoder/config.json`));
  assert.equal(config.torch_dtype, "float32");
  assert.deepEqual(JSON.parse(await Deno.readTextFile(`${full.out}/model_index.json`)).text_encoder, [
    "transformers",
    "CLIPTextModelWithProjection",
  ]);
  await assertFp16Layout(half.out, full.out);
});

/** A text encoder folder like the fixture's with `weights` as its weight files, and the fixture's tokenizer. */
async function textFolder(root: string, weights: Record<string, Uint8Array>): Promise<string> {
  await Deno.mkdir(`${root}/text_encoder`, { recursive: true });
  await Deno.mkdir(`${root}/tokenizer`, { recursive: true });
  await Deno.copyFile(`${FIXTURES}clip/text_encoder/config.json`, `${root}/text_encoder/config.json`);
  for (const [name, bytes] of Object.entries(weights)) await Deno.writeFile(`${root}/text_encoder/${name}`, bytes);
  for await (const e of Deno.readDir(`${FIXTURES}clip/tokenizer`)) {
    await Deno.copyFile(`${FIXTURES}clip/tokenizer/${e.name}`, `${root}/tokenizer/${e.name}`);
  }
  return `${root}/text_encoder`;
}

Deno.test("diffusers export --fp16: a text encoder weight past float16 or pickled weights: one line, nothing written", async () => {
  const root = await tmp("diffusers_export_fp16_refusals");
  const t = (await readSafetensors(`${FIXTURES}clip/text_encoder/model.safetensors`)).tensors;
  const key = "text_model.final_layer_norm.weight", big = toFloat32(t[key]).map((v, i) => i === 3 ? 1e5 : v);
  const tensors = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, { ...v, data: k === key ? big : v.data }]));
  const cases: { name: string; weights: Record<string, Uint8Array>; error: RegExp }[] = [
    {
      name: "big",
      weights: { "model.safetensors": encodeSafetensors(tensors, { format: "pt" }) },
      error: new RegExp(`model\\.safetensors: ${key.replaceAll(".", "\\.")}\\[3\\] = 100000 does not fit float16`),
    },
    {
      name: "pickle",
      weights: { "pytorch_model.bin": new Uint8Array(8) },
      error: /are not safetensors \(pytorch_model/,
    },
  ];
  for (const c of cases) {
    const ckpt = await sdCheckpoint(`${root}/${c.name}`, await textFolder(`${root}/${c.name}_text`, c.weights));
    const out = `${root}/${c.name}_fp16`;
    await assert.rejects(exportDiffusers(ckpt, out, { fp16: true }), (e: Error) => {
      assert.match(e.message, c.error);
      assert.match(e.message, /export without --fp16$/);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
    assert.equal(await Deno.stat(out).then(() => true, () => false), false, `${c.name}: nothing written`);
    // Without --fp16 the files are copied as they are.
    const full = await exportDiffusers(ckpt, `${root}/${c.name}_fp32`);
    assert.ok(full.files.includes(`text_encoder/${Object.keys(c.weights)[0]}`), full.files.join());
  }
});

Deno.test("diffusers export --fp16: the committed exported_pipeline_fp16/ is exported_pipeline/ in fp16, file for file", async () => {
  // make_exported_pipeline.ts writes both from one checkpoint; check_pipeline.py --fp16 loaded this one.
  await assertFp16Layout(`${FIXTURES}exported_pipeline_fp16`, `${FIXTURES}exported_pipeline`);
  const card = await Deno.readTextFile(`${FIXTURES}exported_pipeline_fp16/README.md`);
  assert.match(card, /from_pretrained\("<this folder>", variant="fp16", torch_dtype=torch\.float16\)/);
});
