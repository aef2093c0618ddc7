/**
 * `sample`: a grid of images from a diffusion UNet at the stage's cadence (and at the end), for fixed prompts and
 * seeds, written to `<out>/samples/step-XXXXXXXX.png` with the prompts and seeds of each row and column in a JSON
 * file beside it. Rows are prompts, columns seeds; the same prompt and seed give the same noise every time.
 *
 * @module
 */
import { z } from "zod";
import type { Executor } from "../engine/executors/executor.ts";
import { generate, UNetRunner } from "../models/diffusion/generate.ts";
import { makeSchedule, ScheduleParams } from "../models/diffusion/schedules.ts";
import { gridToPng, writeAtomic } from "../models/png_grid.ts";
import type { UNetParams } from "../models/unet.ts";
import type { StageDef } from "../pipeline/stage.ts";
import { checkTextWidths, loadCaptionEncoder } from "./text_encode.ts";

const Params = z.strictObject({
  /** A declared `unet` model. */
  model: z.string(),
  /** Sample from the model's EMA when it has one. */
  ema: z.boolean().default(true),
  prompts: z.array(z.string()).min(1).default(["red apple", "grinning face", "sun", "blue heart"]),
  seeds: z.array(z.number().int().min(0)).min(1).default([0, 1, 2, 3]),
  sampler: z.enum(["ddpm", "ddim", "euler", "add"]).default("ddim"),
  steps: z.number().int().positive().default(50),
  /** Classifier-free guidance scale (1: none). */
  guidance: z.number().min(1).default(1),
  schedule: ScheduleParams.default({ kind: "cosine", T: 1000, zeroTerminalSnr: true }),
  prediction: z.enum(["eps", "v", "x0"]).default("v"),
  /** Text encoder folder or hub id, as in `text_encode`. */
  text_encoder: z.string().default("models/text_encoder"),
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
  alsoLast: true,
  models: (p) => [p.model],
  types: ({ params, models }) => {
    const info = models[params.model];
    if (info?.kind === "unet") checkTextWidths(params.model, info.params as UNetParams, params.text_encoder);
    return {};
  },
  effect: async (ctx, p) => {
    const info = ctx.models[p.model];
    if (info.kind !== "unet") throw new Error(`sample: model "${p.model}" is a ${info.kind}, not a unet`);
    const u = info.params as UNetParams;
    const weights = await ctx.readModel(p.model, { ema: p.ema });
    const grid = await sampleGrid(ctx.executor, u, weights, p);
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

/** Generates the prompts × seeds grid with the given weights (also used by `deno task sample`). */
export async function sampleGrid(
  executor: Executor,
  u: UNetParams,
  weights: Record<string, Float32Array>,
  p: Pick<
    z.output<typeof Params>,
    "prompts" | "seeds" | "sampler" | "steps" | "guidance" | "schedule" | "prediction" | "text_encoder"
  >,
): Promise<{ png: Uint8Array; images: Float32Array[]; legend: Record<string, unknown> }> {
  const enc = await loadCaptionEncoder(p.text_encoder);
  const captions = p.prompts.flatMap((c) => p.seeds.map(() => c));
  const seeds = p.prompts.flatMap(() => p.seeds);
  const text = { ...(await enc.encode(captions)), length: enc.dims.length };
  const empty = p.guidance > 1 ? { ...(await enc.encode(captions.map(() => ""))), length: enc.dims.length } : undefined;
  const runner = await UNetRunner.create(executor, u, weights, captions.length, enc.dims.length);
  try {
    const t0 = performance.now();
    const out = await generate(runner, makeSchedule(p.schedule), p, seeds, text, empty);
    const ms = performance.now() - t0;
    const per = u.in_channels * u.size * u.size;
    const images = captions.map((_, i) => out.slice(i * per, (i + 1) * per));
    const png = gridToPng(images, u.in_channels, u.size, { cols: p.seeds.length });
    const legend = {
      rows: p.prompts,
      cols: p.seeds,
      sampler: p.sampler,
      steps: p.steps,
      guidance: p.guidance,
      ms_per_image: ms / captions.length,
    };
    return { png, images, legend };
  } finally {
    await runner.dispose();
  }
}
