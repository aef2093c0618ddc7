// The diffusers_vae model kind and the latent_data stage on the tiny VAE fixture (tests/fixtures/diffusers/vae, made
// by make_vae_fixtures.py with the real diffusers): decode(encode(x)) through the kind equals diffusers'
// reconstruction and the latent its posterior mean times scaling_factor; the gradient of a pixel loss through the
// decoder into the latent matches central finite differences (float64 reference executor); latent_data encodes a
// dataset once, reads it back from the cache in a second run, and encodes again when the VAE's weights change.
import assert from "node:assert/strict";
import "../../../stages/mod.ts";
import { createExecutor } from "../../../engine/executors/auto.ts";
import { grad } from "../../../engine/grad.ts";
import { mul } from "../../../engine/math.ts";
import { sum } from "../../../engine/ops.ts";
import { Rng } from "../../../engine/rng.ts";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { Trace } from "../../../engine/tensor.ts";
import { diffusersVae } from "../../../models/diffusers/vae_kind.ts";
import type { Dataset, ModelInfo } from "../../../pipeline/stage.ts";
import { RunMemory } from "../../../pipeline/stage_state.ts";
import { latentData } from "../../../stages/latent_data.ts";
import { hostContext } from "../../helpers/host_context.ts";
import { tmp } from "../../helpers/cli_run.ts";

const DIR = new URL("../../fixtures/diffusers/", import.meta.url).pathname;
const P = diffusersVae.params.parse({ path: `${DIR}vae` });
const opts = { sanitizeResources: false, sanitizeOps: false };

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num = Math.max(num, Math.abs(a[i] - b[i])), den = Math.max(den, Math.abs(b[i]));
  return num / den;
}

Deno.test({
  name: "diffusers_vae: decode(encode(x)) is diffusers' reconstruction; latent = posterior mean × scaling_factor",
  ...opts,
  fn: async () => {
    const io = (await readSafetensors(`${DIR}vae_io.safetensors`)).tensors;
    const shapes = diffusersVae.shapes(P), weights = diffusersVae.init(P, new Rng(0)), tr = new Trace();
    const x = io.sample.shape;
    assert.deepEqual(diffusersVae.types(P, { x: { dtype: "f32", shape: x } }), {
      latent: { dtype: "f32", shape: [2, 4, 8, 8] },
    });
    const w = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
    const { latent } = diffusersVae.apply(P, w, { x: tr.input("x", x) });
    const { image } = diffusersVae.apply(P, w, { latent });
    const ex = await createExecutor("cpu");
    try {
      const prepared = await ex.prepare(tr.build({ latent, image }));
      const feeds = Object.fromEntries(prepared.inputNames.map((n) => {
        const data = n === "x" ? toFloat32(io.sample) : weights[n];
        return [n, ex.upload(data, n === "x" ? x : shapes[n], "f32")];
      }));
      const res = await prepared.run(feeds);
      const mean = toFloat32(io.latent_mean).map((v) => v * 0.18215);
      const errs = {
        latent: maxRel(await ex.read(res.latent) as Float32Array, mean),
        image: maxRel(await ex.read(res.image) as Float32Array, toFloat32(io.reconstruction)),
      };
      console.log(`  max relative error: latent ${errs.latent.toExponential(2)}, image ${errs.image.toExponential(2)}`);
      assert.ok(errs.latent < 5e-5 && errs.image < 5e-5, JSON.stringify(errs));
    } finally {
      await ex.close();
    }
  },
});

Deno.test({
  name: "diffusers_vae: the gradient of a pixel loss through the decoder matches finite differences",
  ...opts,
  fn: async () => {
    const shapes = diffusersVae.shapes(P), weights = diffusersVae.init(P, new Rng(0));
    const zShape = [1, 4, 4, 4], iShape = [1, 3, 8, 8];
    const rng = new Rng(7), z0 = rng.fold("z").normal(64), wPix = rng.fold("w").normal(192);
    const tr = new Trace();
    const w = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
    const z = tr.input("z", zShape), pix = tr.input("w_pix", iShape);
    const loss = sum(mul(diffusersVae.apply(P, w, { latent: z }).image, pix));
    const g = grad(loss, { z }).z;
    const ex = await createExecutor("reference");
    try {
      const prepared = await ex.prepare(tr.build({ loss, g }));
      const run = async (zv: Float32Array) => {
        const feeds = Object.fromEntries(prepared.inputNames.map((n) => {
          const [data, shape] = n === "z" ? [zv, zShape] : n === "w_pix" ? [wPix, iShape] : [weights[n], shapes[n]];
          return [n, ex.upload(data, shape, "f32")];
        }));
        const res = await prepared.run(feeds);
        return { loss: (await ex.read(res.loss) as Float32Array)[0], g: await ex.read(res.g) as Float32Array };
      };
      const { g: analytic } = await run(z0);
      const h = 1e-2;
      let worst = 0;
      for (const i of [0, 5, 17, 31, 42, 63]) {
        const up = z0.slice(), down = z0.slice();
        up[i] += h;
        down[i] -= h;
        const fd = ((await run(up)).loss - (await run(down)).loss) / (2 * h);
        worst = Math.max(worst, Math.abs(fd - analytic[i]) / Math.max(1e-3, Math.abs(analytic[i])));
      }
      console.log(`  worst relative difference to central differences: ${worst.toExponential(2)}`);
      assert.ok(worst < 1e-2, `gradient differs from finite differences by ${worst}`);
    } finally {
      await ex.close();
    }
  },
});

Deno.test({
  name: "latent_data: encodes once, hits the cache in a second run, misses it when the VAE's weights change",
  ...opts,
  fn: async () => {
    const cache = await tmp("latent_data_cache");
    const n = 5, per = 3 * 16 * 16, images = new Rng(3).fold("images").normal(n * per).map((v) => Math.tanh(v));
    const dataset: Dataset = {
      size: n,
      batch: (idx) => {
        const out = new Float32Array(idx.length * per);
        Array.from(idx).forEach((j, i) => out.set(images.subarray(j * per, (j + 1) * per), i * per));
        return { image: out, caption_id: Int32Array.from(idx) };
      },
    };
    const models: Record<string, ModelInfo> = {
      vae: { name: "vae", kind: "diffusers_vae", params: P, shapes: diffusersVae.shapes(P) },
    };
    const base = diffusersVae.init(P, new Rng(0));
    const p = latentData.params.parse({ dataset: "d", vae: "vae", batch: 3, encode_batch: 2 });
    const run = async (weights: Record<string, Float32Array>) => {
      const ex = await createExecutor("cpu"), logs: string[] = [];
      try {
        const ctx = hostContext("latents", {
          cache,
          executor: ex,
          models,
          dataset: () => Promise.resolve(dataset),
          readModel: () => Promise.resolve(weights),
          log: (l) => logs.push(l),
          memory: new RunMemory(),
        });
        return { out: await latentData.host!(ctx, p, {}), logs };
      } finally {
        await ex.close();
      }
    };
    const first = await run(base);
    assert.match(first.logs.join("\n"), /latents: encoded 5 images into latents \[4,8,8\]/);
    assert.equal((first.out.latent as Float32Array).length, 3 * 4 * 8 * 8);
    assert.equal((first.out.image as Float32Array).length, 3 * per);
    const second = await run(base);
    assert.match(second.logs.join("\n"), /latents: 5 latents from /);
    assert.deepEqual(second.out.latent, first.out.latent);
    const changed = { ...base, "decoder.conv_out.bias": base["decoder.conv_out.bias"].map((v) => v + 0.1) };
    assert.match((await run(changed)).logs.join("\n"), /latents: encoded 5 images/);
    // The batch's latents are the encodings of the batch's own images.
    const ids = first.out.caption_id as Int32Array;
    const ex = await createExecutor("cpu");
    try {
      const { VaeRunner } = await import("../../../models/diffusers/vae_runner.ts");
      const r = await VaeRunner.create(ex, models.vae, base, "encode", 3, [3, 16, 16]);
      const alone = await r.run(first.out.image as Float32Array, 3);
      await r.dispose();
      assert.ok(maxRel(first.out.latent as Float32Array, alone) < 1e-5, `batch ${Array.from(ids)}`);
    } finally {
      await ex.close();
    }
  },
});
