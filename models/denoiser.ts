/**
 * What the ADD stages and the samplers need of a denoiser, whatever model kind it is: the shape of what it denoises,
 * the text widths it reads, its parameter shapes and a traced forward pass. A model kind that is a denoiser says so
 * by a `denoiser(params)` method beside its `ModelDef` fields (the `unet` and `diffusers_unet` kinds have one), so a
 * stage asks `denoiserOf(model)` instead of checking kind names, and a user's own denoiser kind works the same way.
 *
 * `LatentDecoder` is the other half of latent diffusion on the host: what turns a batch of sampled latents into
 * pixels (a VAE's decoder compiled on an executor), for previews and reports.
 *
 * @module
 */
import type { Tensor } from "../engine/tensor.ts";
import { type ModelInfo, modelKinds, StageTypeError } from "../pipeline/stage.ts";

/**
 * A denoiser: `x` [B, in_channels, size, size] at timesteps `t` [B] with optional text → `out` of `x`'s shape, in the
 * model's own parameterisation. The field names are the `unet` kind's, so code written for its params reads these.
 */
export interface DenoiserModel {
  /** Channels of what it denoises (3 for pixels, the VAE's latent channels in latent space). */
  in_channels: number;
  /** Side of what it denoises (square), as the model's config gives it. */
  size: number;
  /** Width of the text hidden states it cross-attends to (0: none). */
  context_dim: number;
  /** Width of the pooled text embedding it reads (0: none). */
  pooled_dim: number;
  /** Parameter path → shape. */
  shapes: Record<string, number[]>;
  /** The traced forward pass. */
  forward(p: Record<string, Tensor>, x: Tensor, t: Tensor, tokens?: Tensor, pooled?: Tensor): Tensor;
  /**
   * Everything beside the weights that its outputs depend on (architecture, config), for cache keys. The `unet`
   * kind's is its params, so banks and report rows cached before this interface keep their keys.
   */
  settings: unknown;
}

/** The method a denoiser model kind adds to its `ModelDef`. */
export interface DenoiserKind<P> {
  /** The denoiser that params `p` make. */
  denoiser(p: P): DenoiserModel;
}

/** Whether a declared model's kind is a denoiser (without building it: its params are not read). */
export function isDenoiser(info: ModelInfo | undefined): boolean {
  const def = info && modelKinds().get(info.kind) as Partial<DenoiserKind<unknown>> | undefined;
  return typeof def?.denoiser === "function";
}

/** The denoiser a declared model is, or null when its kind is not a denoiser. */
export function denoiserOf(info: ModelInfo | undefined): DenoiserModel | null {
  if (!info) return null;
  const def = modelKinds().get(info.kind) as Partial<DenoiserKind<unknown>> | undefined;
  return typeof def?.denoiser === "function" ? def.denoiser(info.params) : null;
}

/** The registered model kinds that are denoisers, for error messages. */
export function denoiserKinds(): string[] {
  return [...modelKinds().values()].filter((d) => typeof (d as Partial<DenoiserKind<unknown>>).denoiser === "function")
    .map((d) => d.kind);
}

/** The line a stage throws when a model is not a denoiser. */
export const notADenoiser = (name: string, info: ModelInfo | undefined): string =>
  `model "${name}" ${info ? `is a ${info.kind}, not a denoiser` : "is not declared"} (denoiser kinds: ${
    denoiserKinds().join(", ")
  })`;

/** Turns sampled latents into pixels on the host: a VAE's decoder compiled for `batch` latents. */
export interface LatentDecoder {
  /** Channels of the pixels it makes. */
  channels: number;
  /** Side of the pixels it makes for latents of the denoiser's size. */
  size: number;
  /** Pixels [n, channels, size, size] of `n` latents (flattened), n ≤ any batch: decoded in chunks. */
  decode(latents: Float32Array, n: number): Promise<Float32Array>;
  /** Frees what it compiled. */
  dispose(): Promise<void>;
}

/**
 * Checks at planning that `vae` decodes the denoiser's samples (a model kind mapping `latent` to `image`), for
 * the `vae` of the `sample` and report stages; returns the pixels' channels and side.
 */
export function checkDecodes(
  vae: ModelInfo | undefined,
  name: string,
  u: DenoiserModel,
  at: (string | number)[],
): { channels: number; size: number } {
  const kind = vae && modelKinds().get(vae.kind);
  let image;
  try {
    image = kind?.types(vae!.params, { latent: { dtype: "f32", shape: [1, u.in_channels, u.size, u.size] } }).image;
  } catch (e) {
    throw new StageTypeError(`model "${name}" cannot decode the samples: ${(e as Error).message}`, at);
  }
  if (!image) throw new StageTypeError(`model "${name}" is not a VAE decoding latents into an image`, at);
  return { channels: image.shape[1], size: image.shape[2] };
}
