/**
 * A grid of samples from a diffusion UNet: rows are prompts, columns seeds; the same prompt and seed give the same
 * noise every time. The `sample` stage and `deno task sample` draw it.
 *
 * @module
 */
import type { Executor } from "../../engine/executors/executor.ts";
import { loadTextEncoder, type TextEncoderChoice } from "../text_encoder_spec.ts";
import { gridToPng } from "../png_grid.ts";
import type { UNetParams } from "../unet.ts";
import type { DenoiserModel, LatentDecoder } from "../denoiser.ts";
import { generate, type SampleSettings, UNetRunner } from "./generate.ts";
import { makeSchedule, type ScheduleOptions } from "./schedules.ts";

/** What a grid is drawn with: its prompts and seeds, the sampler's settings, the schedule and the text encoder. */
export interface GridSettings extends SampleSettings {
  prompts: string[];
  seeds: number[];
  schedule: ScheduleOptions;
  text_encoder: TextEncoderChoice;
  /** A run's cache folder, where `use-lite` is built (absent: the project's `.cache/`). */
  cache?: string;
  /** For a latent denoiser: the VAE decoder that turns its samples into the grid's pixels. */
  decode?: LatentDecoder;
}

/** Generates the prompts × seeds grid with the given weights (also used by `deno task sample`). */
export async function sampleGrid(
  executor: Executor,
  u: UNetParams | DenoiserModel,
  weights: Record<string, Float32Array>,
  p: GridSettings,
): Promise<{ png: Uint8Array; images: Float32Array[]; legend: Record<string, unknown> }> {
  const enc = await loadTextEncoder(p.text_encoder, p.cache);
  const captions = p.prompts.flatMap((c) => p.seeds.map(() => c));
  const seeds = p.prompts.flatMap(() => p.seeds);
  const text = { ...(await enc.encode(captions)), length: enc.dims.length };
  const empty = p.guidance > 1 ? { ...(await enc.encode(captions.map(() => ""))), length: enc.dims.length } : undefined;
  const runner = await UNetRunner.create(executor, u, weights, captions.length, enc.dims.length);
  try {
    const t0 = performance.now();
    let out = await generate(runner, makeSchedule(p.schedule), p, seeds, text, empty);
    if (p.decode) out = await p.decode.decode(out, captions.length);
    const ms = performance.now() - t0;
    const [c, side] = p.decode ? [p.decode.channels, p.decode.size] : [u.in_channels, u.size];
    const per = c * side * side;
    const images = captions.map((_, i) => out.slice(i * per, (i + 1) * per));
    const png = gridToPng(images, c, side, { cols: p.seeds.length });
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
