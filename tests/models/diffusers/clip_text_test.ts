// The CLIP text encoder of a diffusers folder against the real transformers (tests/fixtures/diffusers/clip*, made by
// make_clip_fixtures.py): an SD 1.x-style CLIPTextModel (quick_gelu, legacy eos_token_id 2, F32) and an SD 2.x /
// SDXL-style CLIPTextModelWithProjection (gelu, pooling at eos_token_id, F16 weights). The engine's forward pass and
// the converted folder through transformers.js both give transformers' last_hidden_state, penultimate states (raw
// and through the final layer norm), pooler_output and text_embeds; the text_encode stage gives [B, 77, width] rows
// padded as SD pads; a bad folder is one line.
import { CLIPTextModelWithProjection, env, Tensor } from "@huggingface/transformers";
import { OrtNodeExecutor } from "../../../engine/executors/ort_node.ts";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { Rng } from "../../../engine/rng.ts";
import { traceClipText } from "../../../models/clip_text.ts";
import {
  type ClipTextFolder,
  convertedOutputs,
  ensureClipTextFolder,
  loadClipTextWeights,
  openClipTextFolder,
} from "../../../models/diffusers/clip_text_folder.ts";
import type { Dataset } from "../../../pipeline/stage.ts";
import { textEncode } from "../../../stages/text_encode.ts";
import { hostContext } from "../../helpers/host_context.ts";
import { expectOneLine, FIXTURES, maxRel } from "./diffusers_reference.ts";

env.allowRemoteModels = false;
const opts = { sanitizeResources: false, sanitizeOps: false };
const IO = (await readSafetensors(`${FIXTURES}clip_io.safetensors`)).tensors;
const TOKENS = JSON.parse(await Deno.readTextFile(`${FIXTURES}clip_tokens.json`));
const TOL = 1e-5;
/** The fixture's names for the converted ONNX's outputs. */
const REF: Record<string, string> = {
  last_hidden_state: "last_hidden_state",
  pooler_output: "pooler_output",
  penultimate_hidden_state: "penultimate",
  penultimate_hidden_state_normed: "penultimate_normed",
  text_embeds: "text_embeds",
};

function ioIds(name: string): { rows: number; ids: number[] } {
  const t = IO[`${name}.input_ids`];
  return { rows: t.shape[0], ids: Array.from(t.data as BigInt64Array, Number) };
}

/** Each output's max relative error, by ONNX output name, for rows computed one id row at a time by `run`. */
async function compare(f: ClipTextFolder, name: string, run: (ids: number[]) => Promise<Record<string, Float32Array>>) {
  const { rows, ids } = ioIds(name);
  const errs: Record<string, number> = {};
  for (const out of convertedOutputs(f)) {
    const ref = toFloat32(IO[`${name}.${REF[out]}`]);
    const per = ref.length / rows;
    const got = new Float32Array(ref.length);
    for (let r = 0; r < rows; r++) got.set((await run(ids.slice(r * 77, (r + 1) * 77)))[out], r * per);
    errs[out] = maxRel(got, ref);
  }
  return errs;
}

function assertBelow(errs: Record<string, number>, what: string) {
  const bad = Object.entries(errs).filter(([, e]) => !(e < TOL)).map(([k, e]) => `${k} ${e.toExponential(2)}`);
  if (bad.length) throw new Error(`${what} differs from transformers (max |Δ| / max |ref|): ${bad.join("; ")}`);
}

for (const name of ["clip", "clip_proj"]) {
  Deno.test(`diffusers CLIP text (${name}): the engine's forward equals transformers' outputs`, opts, async () => {
    const f = openClipTextFolder(`${FIXTURES}${name}`);
    const { rows, ids } = ioIds(name);
    const graph = traceClipText(f.config, loadClipTextWeights(f), rows, convertedOutputs(f));
    const ex = new OrtNodeExecutor();
    try {
      const prepared = await ex.prepare(graph);
      const res = await prepared.run({ input_ids: ex.upload(Int32Array.from(ids), [rows, 77], "i32") });
      const errs: Record<string, number> = {};
      for (const [out, buf] of Object.entries(res)) {
        errs[out] = maxRel(await ex.read(buf) as Float32Array, toFloat32(IO[`${name}.${REF[out]}`]));
      }
      if (Object.keys(errs).length !== convertedOutputs(f).length) throw new Error(`outputs ${Object.keys(errs)}`);
      assertBelow(errs, "the engine's forward");
    } finally {
      await ex.close();
    }
  });

  Deno.test(
    `diffusers CLIP text (${name}): the converted folder through transformers.js equals transformers`,
    opts,
    async () => {
      const cache = await Deno.makeTempDir();
      try {
        const f = openClipTextFolder(`${FIXTURES}${name}`);
        const dir = ensureClipTextFolder(f, cache);
        if (ensureClipTextFolder(f, cache) !== dir) throw new Error("a second conversion went elsewhere");
        const m = await CLIPTextModelWithProjection.from_pretrained(dir, { local_files_only: true, dtype: "fp32" });
        const run = async (ids: number[]) => {
          const out = await m({ input_ids: new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, 77]) });
          return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, (t as Tensor).data as Float32Array]));
        };
        assertBelow(await compare(f, name, run), "transformers.js on the converted folder");
      } finally {
        await Deno.remove(cache, { recursive: true });
      }
    },
  );
}

Deno.test("diffusers CLIP text: pooling at eos_token_id differs from argmax(ids) where an id is above it", () => {
  // The fixture's last clip_proj row has an id above <|endoftext|> at position 2: argmax would pool there.
  const pooled = toFloat32(IO["clip_proj.pooler_output"]), h = toFloat32(IO["clip_proj.last_hidden_state"]);
  const row = 4, d = 32, at = (p: number) => h.subarray((row * 77 + p) * d, (row * 77 + p + 1) * d);
  const eosAt = ioIds("clip_proj").ids.slice(row * 77, (row + 1) * 77).indexOf(TOKENS.tokenizers.clip_proj.eos_id);
  const mine = pooled.subarray(row * d, (row + 1) * d);
  if (!(maxRel(at(eosAt), mine) < TOL) || maxRel(at(2), mine) < 1e-2) throw new Error("the fixture pools elsewhere");
});

async function stageRows(name: string, layer: string, captionIds: number[]) {
  const ds: Dataset = { size: TOKENS.prompts.length, batch: () => ({}), captions: TOKENS.prompts };
  const cache = await Deno.makeTempDir();
  const ctx = hostContext("te", {
    rng: new Rng(0),
    cache,
    dataset: (n) => n === "d" ? Promise.resolve(ds) : Promise.reject(new Error(`no dataset ${n}`)),
  });
  const params = textEncode.params.parse({ dataset: "d", model: `${FIXTURES}${name}`, layer });
  const types = textEncode.types({
    params,
    inputs: { caption_id: { dtype: "i32", shape: [captionIds.length] } },
    models: {},
    datasets: { d: { name: "d", kind: "x", params: {} } },
  });
  try {
    return { types, out: await textEncode.host!(ctx, params, { caption_id: Int32Array.from(captionIds) }) };
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
}

Deno.test(
  "text_encode on a diffusers folder: [B, 77, width] last-layer rows as SD pads them, and pooler_output",
  opts,
  async () => {
    const { types, out } = await stageRows("clip", "last", [6, 0, 4]);
    const want = { tokens: { dtype: "f32", shape: [3, 77, 32] }, pooled: { dtype: "f32", shape: [3, 32] } };
    if (JSON.stringify(types) !== JSON.stringify(want)) throw new Error(`types ${JSON.stringify(types)}`);
    const tokens = out.tokens as Float32Array, pooled = out.pooled as Float32Array;
    const ref = toFloat32(IO["clip.last_hidden_state"]), refPooled = toFloat32(IO["clip.pooler_output"]);
    const L = 77 * 32;
    // The io file holds prompts 0, 1, 4, 6 (make_clip_fixtures.py's IO_ROWS): prompts 6 (truncated), 0 and 4 (empty)
    // are its rows 3, 0 and 2. Equal rows mean equal ids and padding.
    [3, 0, 2].forEach((r, i) => {
      const e = maxRel(tokens.subarray(i * L, (i + 1) * L), ref.subarray(r * L, (r + 1) * L));
      const p = maxRel(pooled.subarray(i * 32, (i + 1) * 32), refPooled.subarray(r * 32, (r + 1) * 32));
      if (!(e < TOL && p < TOL)) throw new Error(`caption ${i}: tokens ${e}, pooled ${p}`);
    });
  },
);

Deno.test(
  "text_encode on a diffusers folder: penultimate_normed rows and text_embeds of a WithProjection model",
  opts,
  async () => {
    const { types, out } = await stageRows("clip_proj", "penultimate_normed", [1]);
    if (JSON.stringify(types.pooled.shape) !== "[1,24]") throw new Error(`types ${JSON.stringify(types)}`);
    const e = maxRel(
      out.tokens as Float32Array,
      toFloat32(IO["clip_proj.penultimate_normed"]).subarray(77 * 32, 2 * 77 * 32),
    );
    const p = maxRel(out.pooled as Float32Array, toFloat32(IO["clip_proj.text_embeds"]).subarray(24, 48));
    if (!(e < TOL && p < TOL)) throw new Error(`tokens ${e}, pooled ${p}`);
  },
);

async function withBrokenCopy(edit: (dir: string) => Promise<void>, source: string, want: string) {
  const root = await Deno.makeTempDir();
  try {
    for (const sub of ["text_encoder", "tokenizer"]) {
      await Deno.mkdir(`${root}/${sub}`);
      for await (const e of Deno.readDir(`${FIXTURES}clip/${sub}`)) {
        await Deno.copyFile(`${FIXTURES}clip/${sub}/${e.name}`, `${root}/${sub}/${e.name}`);
      }
    }
    await edit(root);
    expectOneLine(() => loadClipTextWeights(openClipTextFolder(root)), source.replace("ROOT", root), want);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("diffusers CLIP text: a bad folder is one line naming the file", async () => {
  const config = async (root: string, over: Record<string, unknown>) => {
    const file = `${root}/text_encoder/config.json`;
    await Deno.writeTextFile(file, JSON.stringify({ ...JSON.parse(await Deno.readTextFile(file)), ...over }));
  };
  await withBrokenCopy((r) => config(r, { hidden_act: "relu" }), "ROOT/text_encoder/config.json", `hidden_act "relu"`);
  await withBrokenCopy(
    (r) => config(r, { architectures: ["CLIPModel"] }),
    "ROOT/text_encoder/config.json",
    "CLIPModel",
  );
  await withBrokenCopy((r) => config(r, { num_hidden_layers: 4 }), "ROOT/text_encoder/model.safetensors", "missing");
  await withBrokenCopy((r) => config(r, { hidden_size: 30 }), "ROOT/text_encoder/config.json", "split into 4 heads");
  await withBrokenCopy((r) => Deno.remove(`${r}/text_encoder/model.safetensors`), "ROOT/text_encoder", "has no model");
  await withBrokenCopy((r) => Deno.remove(`${r}/tokenizer/merges.txt`), "ROOT/tokenizer/merges.txt", "not found");
  await withBrokenCopy(
    (r) => Deno.remove(`${r}/text_encoder/config.json`),
    "ROOT/text_encoder/config.json",
    "cannot read",
  );
});

Deno.test("text_encode: a bad diffusers folder or a layer without one is one config error at its key", () => {
  const base = { dataset: "d", model: "tests/fixtures/diffusers/clip", subfolder: "text_encoder_9" };
  const check = (p: Record<string, unknown>, key: string, want: string) => {
    let err: Error & { at?: (string | number)[] } = new Error("none");
    try {
      textEncode.types({
        params: textEncode.params.parse(p),
        inputs: { caption_id: { dtype: "i32", shape: [2] } },
        models: {},
        datasets: { d: { name: "d", kind: "x", params: {} } },
      });
    } catch (e) {
      err = e as Error;
    }
    if (!err.message.includes(want) || err.message.includes("\n") || err.at?.join(".") !== key) {
      throw new Error(`expected "${want}" at ${key}, got "${err.message}" at ${err.at}`);
    }
  };
  check(base, "params.model", "text_encoder_9/config.json: cannot read");
  check({ dataset: "d", layer: "penultimate" }, "params.layer", "only for a diffusers folder");
  // A hub id with a subfolder is a diffusers pipeline's: its sizes are known once downloaded, or from dims.
  check({ dataset: "d", model: "nobody/none", subfolder: "text_encoder" }, "params.model", "not downloaded");
});
