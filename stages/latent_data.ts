/**
 * `latent_data`: the `data` stage for latent diffusion: seeded, shuffled batches of a declared dataset (the same
 * batches `data` gives for the same seed and stage name) with, beside its fields, each image's VAE latent
 * `latent` [B, latent_channels, H/f, W/f], for the student and the teacher to work on while the discriminator reads
 * `image`.
 *
 * The dataset is encoded once per run, on the run's executor, with the frozen VAE (`diffusers_vae`), and cached under `cache` keyed by the VAE's weights and config, the images
 * themselves and the executor: a rerun or a resume reads the latents back, and a changed VAE or dataset is a miss.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import type { HostArray } from "../engine/executors/executor.ts";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.ts";
import { VaeRunner } from "../models/diffusers/vae_runner.ts";
import { type DiffusersVaeParams, openVae } from "../models/diffusers/vae_kind.ts";
import { weightsKey } from "../models/weights_key.ts";
import { datasetKinds, type HostContext, modelKinds, type StageDef, StageTypeError } from "../pipeline/stage.ts";
import { batchIndices } from "./data.ts";

const Params = z.strictObject({
  /** Name of a dataset declared under `data:`, with an `image` field. */
  dataset: z.string(),
  /** The frozen VAE: a declared `diffusers_vae`. */
  vae: z.string(),
  batch: z.number().int().positive().default(32),
  shuffle: z.boolean().default(true),
  /**
   * Where the encoded dataset is cached by key: true, `latents/` in the run's cache folder (`run.cache`); a folder;
   * false: encode every run. Where the folder cannot be written the run goes on without caching.
   */
  cache: z.union([z.boolean(), z.string().min(1)]).default(true),
  /** Images per VAE run while the dataset is encoded. */
  encode_batch: z.number().int().positive().default(16),
});
type P = z.output<typeof Params>;

/** The latent_data stage. */
export const latentData: StageDef<P> = {
  kind: "latent_data",
  doc: "seeded, shuffled batches of a dataset with each image's VAE latent (encoded once, cached)",
  role: "host",
  params: Params,
  inputs: [],
  models: (p) => [p.vae],
  datasets: (p) => [p.dataset],
  types: ({ params, datasets, models }) => {
    const info = datasets[params.dataset], vae = models[params.vae];
    if (!info) throw new StageTypeError(`dataset "${params.dataset}" is not declared`, ["params", "dataset"]);
    if (vae?.kind !== "diffusers_vae") {
      throw new StageTypeError(`model "${params.vae}" must be a diffusers_vae`, ["params", "vae"]);
    }
    const fields = datasetKinds().get(info.kind)!.fields(info.params);
    if (!fields.image) {
      throw new StageTypeError(`dataset "${params.dataset}" has no image field`, ["params", "dataset"]);
    }
    const out = Object.fromEntries(
      Object.entries(fields).map(([k, s]) => [k, { dtype: s.dtype, shape: [params.batch, ...s.shape] }]),
    );
    let latent;
    try {
      latent = modelKinds().get(vae.kind)!.types(vae.params, { x: out.image }).latent;
    } catch (e) {
      throw new StageTypeError(`model "${params.vae}" cannot encode the images: ${(e as Error).message}`, [
        "params",
        "vae",
      ]);
    }
    if (!latent) throw new StageTypeError(`model "${params.vae}" gives no latent for x`, ["params", "vae"]);
    return { ...out, latent };
  },
  host: async (ctx, p) => {
    const ds = await ctx.dataset(p.dataset);
    const bank = await ctx.memo("latents", () => encodeDataset(ctx, p));
    const idx = batchIndices(ctx, p, ds.size), per = bank.per;
    const latent = new Float32Array(p.batch * per);
    idx.forEach((j, i) => latent.set(bank.latents.subarray(j * per, (j + 1) * per), i * per));
    return { ...ds.batch(idx), latent } as Record<string, HostArray>;
  },
};

interface Encoded {
  latents: Float32Array;
  per: number;
}

/** Encodes every image of the dataset, or reads the encoding from the cache. */
async function encodeDataset(ctx: HostContext, p: P): Promise<Encoded> {
  const ds = await ctx.dataset(p.dataset), info = ctx.models[p.vae];
  const images = ds.batch(Int32Array.from({ length: ds.size }, (_, i) => i)).image as Float32Array;
  const shape = imageShape(ctx, p, images.length / ds.size);
  const kind = modelKinds().get(info.kind)!;
  const latentShape = kind.types(info.params, { x: { dtype: "f32", shape: [1, ...shape] } }).latent.shape.slice(1);
  const per = latentShape.reduce((a, b) => a * b, 1), full = [ds.size, ...latentShape];
  const weights = await ctx.readModel(p.vae);
  // Its config, not its params: they name a folder, whose scaling_factor or weights may change under the same name.
  const cfg = openVae(info.params as DiffusersVaeParams).cfg;
  const settings = { version: 1, vae: cfg, size: ds.size, executor: ctx.executor.name };
  // The images are keyed themselves, not only the dataset's settings: a changed file is a new encoding.
  const key = await weightsKey(settings, { ...weights, "\0images": images });
  const dir = p.cache === false ? null : p.cache === true ? join(ctx.cache, "latents") : p.cache;
  const file = dir && join(dir, `${key.slice(0, 32)}.safetensors`);
  if (file) {
    try {
      const t = (await readSafetensors(file)).tensors.latents;
      if (t?.dtype === "F32" && t.shape.join() === full.join()) {
        ctx.log(`${ctx.stage}: ${ds.size} latents from ${file}`);
        return { latents: t.data as Float32Array, per };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) ctx.log(`${ctx.stage}: ignoring the cache ${file}: ${e}`);
    }
  }
  const t0 = performance.now();
  const b = Math.min(p.encode_batch, ds.size);
  const runner = await VaeRunner.create(ctx.executor, info, weights, "encode", b, shape);
  let latents: Float32Array;
  try {
    latents = await runner.run(images, ds.size);
  } finally {
    await runner.dispose();
  }
  let cached = "";
  if (file) {
    try {
      await Deno.mkdir(dir!, { recursive: true });
      await writeSafetensors(file, { latents: { data: latents, shape: full } });
      cached = `, cached in ${file}`;
    } catch (e) {
      cached = ` (not cached: ${(e as Error).message})`;
    }
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  ctx.log(`${ctx.stage}: encoded ${ds.size} images into latents [${latentShape}] in ${secs} s${cached}`);
  return { latents, per };
}

/** The images' [C, S, S]: the VAE's input channels, and square images (as every dataset kind here makes). */
function imageShape(ctx: HostContext, p: P, per: number): number[] {
  const c = openVae(ctx.models[p.vae].params as DiffusersVaeParams).cfg.in_channels;
  const side = Math.round(Math.sqrt(per / c));
  if (c * side * side !== per) throw new Error(`${ctx.stage}: the images of "${p.dataset}" are not ${c}×S×S`);
  return [c, side, side];
}
