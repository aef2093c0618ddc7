// ship/manifest.ts: a manifest the exporter builds passes the reader's checks and survives its JSON writer; each
// malformed key is refused by name.
import assert from "node:assert/strict";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { checkManifest, type Manifest, MANIFEST_FORMAT, NOISE_DOC } from "../../ship/manifest.ts";
import { manifestJson } from "../../ship/export.ts";

function sample(): Manifest {
  return {
    format: MANIFEST_FORMAT,
    name: "x",
    image: { channels: 3, size: 32 },
    unet: { file: "unet.onnx", weights: "fp32", parameters: 10, inputs: { x: [1, 3, 32, 32], t: [1] } },
    text_encoder: {
      folder: "text_encoder",
      onnx: "onnx/text_model.onnx",
      class: "clip",
      length: 32,
      width: 64,
      projection: 64,
      batch: 1,
    },
    sampler: {
      kind: "add",
      prediction: "v",
      guidance: "none",
      default_steps: 1,
      timesteps: { 1: [999], 2: [999, 499] },
    },
    schedule: {
      kind: "cosine",
      T: 1000,
      zero_terminal_snr: true,
      alphas_cumprod: Array.from(makeSchedule({ kind: "cosine", zeroTerminalSnr: true }).alphasCumprod),
    },
    noise: NOISE_DOC,
    source: { step: 2, run: null },
  };
}

Deno.test("manifestJson round-trips every value exactly (the ᾱ table included) and keeps number lists on one line", () => {
  const m = sample(), text = manifestJson(m);
  assert.deepEqual(JSON.parse(text), m);
  assert.deepEqual(checkManifest(JSON.parse(text)), m);
  assert.match(text, /"x": \[1, 3, 32, 32\]/);
  assert.ok(text.split("\n").length < 120, `${text.split("\n").length} lines`);
});

// A manifest as untyped JSON, as a reader gets it, so that the cases below can spoil it freely.
// deno-lint-ignore no-explicit-any
type Json = Record<string, any>;

Deno.test("checkManifest names the key that is wrong", () => {
  const cases: [(m: Json) => void, RegExp][] = [
    [(m) => (m.format = "add-student/0"), /"format" must be "add-student\/1"/],
    [(m) => delete m.image, /"image" must be an object/],
    [(m) => (m.unet.inputs = { x: [1, 3] }), /"unet\.inputs" must give x and t shapes/],
    [(m) => (m.text_encoder.class = "bert"), /"text_encoder" must give a folder, its onnx file and a class/],
    [(m) => (m.text_encoder.batch = 0), /"text_encoder\.batch" must be a positive integer or null/],
    [(m) => (m.sampler.prediction = "score"), /"sampler\.prediction" must be eps, v or x0/],
    [(m) => (m.sampler.timesteps["2"] = [998, 499]), /"sampler\.timesteps\.2" must be 2 strictly decreasing .* at 999/],
    [(m) => (m.sampler.default_steps = 4), /"sampler\.default_steps" must be one of/],
    [(m) => m.schedule.alphas_cumprod.pop(), /"schedule\.alphas_cumprod" must hold schedule\.T values/],
    [(m) => (m.schedule.alphas_cumprod[5] = 0.5), /"schedule\.alphas_cumprod" must decrease strictly/],
  ];
  for (const [spoil, re] of cases) {
    const m = structuredClone(sample()) as unknown as Json;
    spoil(m);
    assert.throws(() => checkManifest(m, "dist/x/manifest.json"), (e: Error) => {
      assert.match(e.message, /^dist\/x\/manifest\.json: /);
      assert.match(e.message, re);
      return true;
    });
  }
});
