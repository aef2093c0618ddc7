/**
 * Image generation with a UNet on an executor: the UNet's inference graph is compiled once per batch size, its
 * weights uploaded once, and wrapped as a sampler `Denoiser`; then any sampler of `samplers.ts` runs on it, with
 * classifier-free guidance when asked.
 *
 * @module
 */
import { constantLimit, type Executor, packLimit } from "../../engine/executors/executor.ts";
import { Program, ResidentStore } from "../../engine/program.ts";
import { chunkLayout, frozenWeights, layoutOf } from "../../engine/pack.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import { unetDenoiser, type UNetParams } from "../unet.ts";
import type { DenoiserModel } from "../denoiser.ts";
import { cfg, type Denoiser, type Prediction, sampleAdd, sampleDdim, sampleDdpm, sampleEuler } from "./samplers.ts";
import type { Schedule } from "./schedules.ts";

/** Text conditioning of a batch: hidden states [B, L, D] and pooled [B, P], flattened. */
export interface TextBatch {
  tokens: Float32Array;
  pooled: Float32Array;
  length: number;
}

/** A denoiser as given: the project's UNet by its params, any other kind by its `Denoiser`. */
export const asDenoiser = (u: UNetParams | DenoiserModel): DenoiserModel => "forward" in u ? u : unetDenoiser(u);

/** A UNet (any denoiser) compiled on an executor for one batch size. */
export class UNetRunner {
  private constructor(
    private readonly store: ResidentStore,
    private readonly program: Program,
    readonly u: DenoiserModel,
    readonly batch: number,
    readonly textLength: number,
  ) {}

  /** Compiles the UNet for `batch` images and text of `textLength` tokens, and uploads `weights`. */
  static async create(
    executor: Executor,
    model: UNetParams | DenoiserModel,
    weights: Record<string, Float32Array>,
    batch: number,
    textLength: number,
  ): Promise<UNetRunner> {
    const u = asDenoiser(model), tr = new Trace();
    const chunks = chunkLayout(layoutOf(u.shapes), packLimit(executor), `UNetRunner on ${executor.name}`);
    const w = frozenWeights(tr, "weights", chunks, weights, constantLimit(executor));
    const x = tr.input("x", [batch, u.in_channels, u.size, u.size]), t = tr.input("t", [batch]);
    const tokens = u.context_dim ? tr.input("tokens", [batch, textLength, u.context_dim]) : undefined;
    const pooled = u.pooled_dim ? tr.input("pooled", [batch, u.pooled_dim]) : undefined;
    const out = u.forward(w.params, x, t, tokens, pooled);
    // The weights stay resident: constants, or inputs bound to the store and never replaced.
    const store = new ResidentStore(executor);
    const inputs = Object.fromEntries(w.uploads.map(([n]) => [n, n]));
    const program = await Program.create(store, tr.build({ out }), { inputs });
    for (const [n, data] of w.uploads) store.set(n, data);
    return new UNetRunner(store, program, u, batch, textLength);
  }

  /** One evaluation: x [B, C, S, S] at integer timestep t for every image. */
  async run(x: Float32Array, t: number, text: TextBatch): Promise<Float32Array> {
    const u = this.u;
    const feeds: Record<string, Float32Array> = { x, t: new Float32Array(this.batch).fill(t) };
    if (u.context_dim) feeds.tokens = text.tokens;
    if (u.pooled_dim) feeds.pooled = text.pooled;
    return Float32Array.from((await this.program.run(feeds, ["out"])).out);
  }

  /** The runner as a sampler denoiser for fixed text conditioning. */
  denoiser(prediction: Prediction, text: TextBatch): Denoiser {
    return { prediction, predict: (x, t) => this.run(x, t, text) };
  }

  /** Frees the compiled graph and the weights. */
  async dispose(): Promise<void> {
    this.store.dispose();
    await this.program.dispose();
  }
}

/** Sampler settings. */
export interface SampleSettings {
  sampler: "ddpm" | "ddim" | "euler" | "add";
  steps: number;
  /** Classifier-free guidance scale; 1 (or less) means no guidance. */
  guidance: number;
  prediction: Prediction;
}

/**
 * Generates one image per seed from pure noise (the seed fixes the noise, so a prompt/seed pair always gives the same
 * image). `text` conditions each image; `empty` is the empty caption's conditioning, for guidance.
 */
export async function generate(
  runner: UNetRunner,
  schedule: Schedule,
  s: SampleSettings,
  seeds: readonly number[],
  text: TextBatch,
  empty?: TextBatch,
): Promise<Float32Array> {
  const u = runner.u, per = u.in_channels * u.size * u.size;
  const xT = new Float32Array(seeds.length * per);
  seeds.forEach((seed, i) => xT.set(new Rng(seed).fold("xT").normal(per), i * per));
  let d = runner.denoiser(s.prediction, text);
  if (s.guidance > 1) {
    if (!empty) throw new Error("generate: guidance > 1 needs the empty caption's conditioning");
    d = cfg(d, runner.denoiser(s.prediction, empty), s.guidance);
  }
  const rng = new Rng(seeds[0] ?? 0).fold("sampler");
  switch (s.sampler) {
    case "ddpm":
      return await sampleDdpm(d, xT, schedule, { steps: s.steps, rng });
    case "ddim":
      return await sampleDdim(d, xT, schedule, { steps: s.steps });
    case "euler":
      return await sampleEuler(d, xT, schedule, { steps: s.steps });
    case "add":
      return await sampleAdd(d, xT, schedule, { steps: s.steps, rng });
  }
}
