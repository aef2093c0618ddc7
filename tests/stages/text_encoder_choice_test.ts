// A stage's `text_encoder` (models/text_encoder_spec.ts) takes what text_encode takes: the model alone, as before (its
// cache keys unchanged), or { model, subfolder, variant, layer }. teacher_pairs given the diffusers CLIP fixture's
// penultimate layer conditions its teacher on exactly the states text_encode gives for that layer (not the last
// layer's); planning tells a layer without a diffusers folder, and widths that do not fit, at the key at fault.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { createExecutor } from "../../engine/executors/auto.ts";
import { Rng } from "../../engine/rng.ts";
import { UNetRunner } from "../../models/diffusion/generate.ts";
import { sampleDdim } from "../../models/diffusion/samplers.ts";
import { makeSchedule } from "../../models/diffusion/schedules.ts";
import { textEncoderKey, TextEncoderSpec } from "../../models/text_encoder_spec.ts";
import { unet } from "../../models/unet.ts";
import type { Dataset, ModelInfo } from "../../pipeline/stage.ts";
import { sample } from "../../stages/sample.ts";
import { teacherPairs } from "../../stages/teacher_pairs.ts";
import { textEncode } from "../../stages/text_encode.ts";
import { hostContext } from "../helpers/host_context.ts";
import { TINY_UNET } from "../helpers/tiny_unet.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };
const CLIP = new URL("../fixtures/diffusers/clip", import.meta.url).pathname;
// The fixture's CLIPTextModel is 32 wide (tokens and pooler_output).
const U = unet.params.parse({ ...TINY_UNET, context_dim: 32, pooled_dim: 32 });
const PER = 3 * 32 * 32;
const captions = ["a photo of a cat", "red apple", "sun"];
const dataset: Dataset = {
  size: 3,
  captions,
  captionOf: (i) => captions[i],
  batch: (idx) => ({ image: new Float32Array(idx.length * PER), caption_id: Int32Array.from(idx) }),
};
const info: ModelInfo = { name: "teacher", kind: "unet", params: U, shapes: unet.shapes(U) };

/** Random weights for U (the initialiser zeroes the output layers, which would make the text irrelevant). */
function weights(): Record<string, Float32Array> {
  const rng = new Rng(5), w = unet.init(U, rng.fold("init"));
  for (const [k, v] of Object.entries(w)) {
    const z = rng.fold(k).normal(v.length);
    for (let i = 0; i < v.length; i++) v[i] += 0.1 * z[i];
  }
  return w;
}

Deno.test("text_encoder: a model alone or a mapping; a model alone keys caches as before", () => {
  const plain = TextEncoderSpec.parse("models/text_encoder");
  assert.deepEqual(plain, { model: "models/text_encoder", layer: "last" });
  assert.equal(textEncoderKey(plain), "models/text_encoder");
  assert.deepEqual(TextEncoderSpec.parse(undefined), plain);
  const pen = TextEncoderSpec.parse({ model: CLIP, layer: "penultimate" });
  assert.deepEqual(textEncoderKey(pen), { model: CLIP, layer: "penultimate" });
  assert.equal(TextEncoderSpec.safeParse({ model: CLIP, layr: "last" }).success, false);
});

Deno.test("sample: text_encoder's layer and widths are checked at planning, at the key at fault", () => {
  const types = (text_encoder: unknown) =>
    sample.types({
      params: sample.params.parse({ model: "teacher", text_encoder }),
      inputs: {},
      models: { teacher: info },
      datasets: {},
    });
  assert.deepEqual(types({ model: CLIP, layer: "penultimate" }), {});
  const at = (text_encoder: unknown) => {
    try {
      types(text_encoder);
    } catch (e) {
      return [(e as Error).message, (e as { at: string[] }).at.join(".")];
    }
    return ["", ""];
  };
  const [layer, layerAt] = at({ model: "models/text_encoder", layer: "penultimate" });
  assert.equal(layerAt, "params.text_encoder.layer");
  assert.match(layer, /^layer "penultimate" is only for a diffusers folder's text encoder; "models\/text_encoder"/);
  const [width, widthAt] = at("models/text_encoder");
  assert.equal(widthAt, "params.text_encoder");
  assert.match(width, /takes text of width 32\/32; the text encoder "models\/text_encoder" gives 64\/64$/);
  const [sub, subAt] = at({ model: CLIP, subfolder: "text_encoder_9" });
  assert.equal(subAt, "params.text_encoder");
  assert.match(sub, /text_encoder_9\/config\.json: cannot read/);
});

Deno.test(
  "teacher_pairs with a diffusers encoder's penultimate layer: the teacher reads text_encode's states",
  opts,
  async () => {
    const cache = await Deno.makeTempDir({ prefix: "text_encoder_choice_" });
    const ex = await createExecutor("cpu"), w = weights();
    const runner = await UNetRunner.create(ex, U, w, 1, 77);
    try {
      const base = { model: "teacher", dataset: "d", pairs: 3, batch: 3, steps: 1, gen_batch: 3, cache: false };
      const p = teacherPairs.params.parse({ ...base, text_encoder: { model: CLIP, layer: "penultimate" } });
      const ctx = hostContext("pairs", {
        seed: 3,
        rng: new Rng(3),
        cache,
        dataset: () => Promise.resolve(dataset),
        executor: ex,
        models: { teacher: info },
        readModel: () => Promise.resolve(w),
      });
      const out = await teacherPairs.host!(ctx, p, {});
      const xs = out.x_s as Float32Array, target = out.target as Float32Array, cid = out.caption_id as Int32Array;
      const rows = async (layer: string, id: number) => {
        const tp = textEncode.params.parse({ dataset: "d", model: CLIP, layer });
        const t = await textEncode.host!(ctx, tp, { caption_id: Int32Array.of(id) });
        return { tokens: t.tokens as Float32Array, pooled: t.pooled as Float32Array, length: 77 };
      };
      const schedule = makeSchedule(p.schedule);
      const worst = async (layer: string, i: number) => {
        const x = Float32Array.from(xs.subarray(i * PER, (i + 1) * PER));
        const want = await sampleDdim(runner.denoiser("v", await rows(layer, cid[i])), x, schedule, { steps: 1 });
        let m = 0;
        for (let n = 0; n < PER; n++) {
          m = Math.max(
            m,
            Math.abs(target[i * PER + n] - Math.max(-1, Math.min(1, want[n]))),
          );
        }
        return m;
      };
      for (let i = 0; i < 3; i++) {
        const pen = await worst("penultimate", i), last = await worst("last", i);
        assert.ok(pen < 1e-4, `pair ${i}: the target differs from the penultimate-conditioned sample by ${pen}`);
        assert.ok(last > 100 * Math.max(pen, 1e-6), `pair ${i}: the last layer's states give the same (${last})`);
      }
    } finally {
      await runner.dispose();
      await ex.close();
      await Deno.remove(cache, { recursive: true });
    }
  },
);
