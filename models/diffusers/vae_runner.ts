/**
 * A `diffusers_vae` on the host's side of a run: its encoder or decoder compiled on an executor for one batch size,
 * its weights uploaded once, run over any number of images in chunks (the last one padded). The `latent_data` stage
 * encodes a dataset with it; previews and reports decode sampled latents with it (`LatentDecoder`).
 *
 * @module
 */
import { constantLimit, type Executor, packLimit } from "../../engine/executors/executor.ts";
import { chunkLayout, frozenWeights, layoutOf } from "../../engine/pack.ts";
import { Program, ResidentStore } from "../../engine/program.ts";
import { Trace } from "../../engine/tensor.ts";
import { type ModelInfo, modelKinds } from "../../pipeline/stage.ts";
import type { LatentDecoder } from "../denoiser.ts";

/**
 * One direction of a VAE compiled for `batch` inputs of shape `[C, H, W]`: any declared model whose kind maps `x` to
 * `latent` and `latent` to `image` (`diffusers_vae`).
 */
export class VaeRunner {
  private constructor(
    private readonly store: ResidentStore,
    private readonly program: Program,
    readonly batch: number,
    /** Values per input and per output. */
    readonly per: { in: number; out: number },
    /** The output's shape per item. */
    readonly outShape: number[],
  ) {}

  /** Compiles `direction` (`encode`: x → latent; `decode`: latent → image) and uploads `weights`. */
  static async create(
    executor: Executor,
    vae: Pick<ModelInfo, "kind" | "params">,
    weights: Record<string, Float32Array>,
    direction: "encode" | "decode",
    batch: number,
    shape: readonly number[],
  ): Promise<VaeRunner> {
    const def = modelKinds().get(vae.kind), p = vae.params;
    if (!def) throw new Error(`VaeRunner: model kind "${vae.kind}" is not registered`);
    const tr = new Trace();
    const chunks = chunkLayout(layoutOf(def.shapes(p)), packLimit(executor), `VaeRunner on ${executor.name}`);
    const w = frozenWeights(tr, "weights", chunks, weights, constantLimit(executor));
    const port = direction === "encode" ? "x" : "latent", outPort = direction === "encode" ? "latent" : "image";
    const input = tr.input("input", [batch, ...shape]);
    const spec = def.types(p, { [port]: { dtype: "f32", shape: [batch, ...shape] } })[outPort];
    if (!spec) throw new Error(`VaeRunner: a ${vae.kind} gives no ${outPort} for ${port}`);
    const out = def.apply(p, w.params, { [port]: input })[outPort];
    const store = new ResidentStore(executor);
    const inputs = Object.fromEntries(w.uploads.map(([n]) => [n, n]));
    const program = await Program.create(store, tr.build({ out }), { inputs });
    for (const [n, data] of w.uploads) store.set(n, data);
    const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
    const outShape = spec.shape.slice(1);
    return new VaeRunner(store, program, batch, { in: prod(shape), out: prod(outShape) }, outShape);
  }

  /** The outputs of `n` inputs (flattened), `batch` at a time. */
  async run(data: Float32Array, n: number): Promise<Float32Array> {
    const { batch, per } = this, out = new Float32Array(n * per.out);
    for (let s = 0; s < n; s += batch) {
      const m = Math.min(batch, n - s), chunk = new Float32Array(batch * per.in);
      chunk.set(data.subarray(s * per.in, (s + m) * per.in));
      const got = (await this.program.run({ input: chunk }, ["out"])).out as Float32Array;
      out.set(got.subarray(0, m * per.out), s * per.out);
    }
    return out;
  }

  /** Frees the compiled graph and the weights. */
  async dispose(): Promise<void> {
    this.store.dispose();
    await this.program.dispose();
  }
}

/** A `LatentDecoder` of latents `[C, h, w]` (square) with the VAE's weights, `batch` at a time. */
export async function latentDecoder(
  executor: Executor,
  vae: Pick<ModelInfo, "kind" | "params">,
  weights: Record<string, Float32Array>,
  latent: readonly number[],
  batch: number,
): Promise<LatentDecoder> {
  const r = await VaeRunner.create(executor, vae, weights, "decode", batch, latent);
  return {
    channels: r.outShape[0],
    size: r.outShape[1],
    decode: (latents, n) => r.run(latents, n),
    dispose: () => r.dispose(),
  };
}
