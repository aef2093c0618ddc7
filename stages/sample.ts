/**
 * `sample`: a grid of images from a diffusion UNet at the stage's cadence (and at the end), for fixed prompts and
 * seeds, written to `<out>/samples/step-XXXXXXXX.png` with the prompts and seeds of each row and column in a JSON
 * file beside it. Rows are prompts, columns seeds; the same prompt and seed give the same noise every time. A latent
 * denoiser's samples are decoded to pixels by the `vae` it names.
 *
 * @module
 */
import { z } from "zod";
import { sampleGrid } from "../models/diffusion/sample_grid.ts";
import { ScheduleSpec } from "../models/diffusers/schedule_param.ts";
import { writeAtomic } from "../models/png_grid.ts";
import { checkDecodes, denoiserOf, notADenoiser } from "../models/denoiser.ts";
import { latentDecoder } from "../models/diffusers/vae_runner.ts";
import { type StageDef, StageTypeError } from "../pipeline/stage.ts";
import { checkTextWidths, TextEncoderSpec } from "../models/text_encoder_spec.ts";

const Params = z.strictObject({
  /** A declared denoiser (`unet`, `diffusers_unet`, …). */
  model: z.string(),
  /** For a latent denoiser: the declared VAE (`diffusers_vae`) whose decoder turns its samples into pixels. */
  vae: z.string().optional(),
  /** Sample from the model's EMA when it has one. */
  ema: z.boolean().default(true),
  prompts: z.array(z.string()).min(1).default(["red apple", "grinning face", "sun", "blue heart"]),
  seeds: z.array(z.number().int().min(0)).min(1).default([0, 1, 2, 3]),
  sampler: z.enum(["ddpm", "ddim", "euler", "add"]).default("ddim"),
  steps: z.number().int().positive().default(50),
  /** Classifier-free guidance scale (1: none). */
  guidance: z.number().min(1).default(1),
  schedule: ScheduleSpec.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /**
   * The text encoder: a model (folder, `use-lite` or hub id), or `{ model, subfolder, variant, layer }`, as in
   * `text_encode`; the same as the run's text_encode, so that it samples on the states it trained on.
   */
  text_encoder: TextEncoderSpec,
  /** Folder under the run's output folder. */
  folder: z.string().regex(/^[\w.-]+$/, "a folder name").default("samples"),
});

/** The sample stage. */
export const sample: StageDef<z.output<typeof Params>> = {
  kind: "sample",
  doc: "image grid for fixed prompts × seeds with a chosen sampler, as PNG plus a JSON legend",
  role: "effect",
  params: Params,
  inputs: [],
  cadence: { always: ["end"] },
  models: (p) => [p.model, ...(p.vae ? [p.vae] : [])],
  types: ({ params, models }) => {
    const u = denoiserOf(models[params.model]);
    if (!u) throw new StageTypeError(notADenoiser(params.model, models[params.model]), ["params", "model"]);
    checkTextWidths(params.model, u, params.text_encoder);
    if (params.vae) checkDecodes(models[params.vae], params.vae, u, ["params", "vae"]);
    return {};
  },
  effect: async (ctx, p) => {
    const u = denoiserOf(ctx.models[p.model])!;
    const weights = await ctx.readModel(p.model, { ema: p.ema });
    const n = p.prompts.length * p.seeds.length, latent = [u.in_channels, u.size, u.size];
    const decode = p.vae
      ? await latentDecoder(ctx.executor, ctx.models[p.vae], await ctx.readModel(p.vae), latent, n)
      : undefined;
    const grid = await sampleGrid(ctx.executor, u, weights, { ...p, cache: ctx.cache, decode })
      .finally(() => decode?.dispose());
    const dir = `${ctx.out}/${p.folder}`;
    await Deno.mkdir(dir, { recursive: true });
    const name = `step-${String(ctx.step).padStart(8, "0")}`;
    await writeAtomic(`${dir}/${name}.png`, grid.png);
    await writeAtomic(`${dir}/${name}.json`, JSON.stringify(grid.legend, null, 2) + "\n");
    ctx.log(
      `samples: ${dir}/${name}.png (${p.prompts.length} prompts × ${p.seeds.length} seeds, ${p.sampler} ${p.steps} steps)`,
    );
  },
};
