/**
 * A tiny text-conditioned UNet for tests (the committed text encoder gives tokens [B, 32, 64] and pooled [B, 64]),
 * and random weights for it.
 */
import { Rng } from "../../engine/rng.ts";
import { unet } from "../../models/unet.ts";

/** The tiny UNet's parameters as a config would write them. */
export const TINY_UNET = {
  channels: [8, 16],
  attention_levels: [1],
  heads: 2,
  groups: 4,
  context_dim: 64,
  pooled_dim: 64,
  size: 32,
};

/**
 * The tiny UNet's weights with every parameter perturbed: the initialiser zeroes the output layers, and a UNet that
 * outputs 0 gives the same images whatever its other weights.
 */
export function randomTinyUnet(seed: number): Record<string, Float32Array> {
  const u = unet.params.parse(TINY_UNET), rng = new Rng(seed);
  const w = unet.init(u, rng.fold("init"));
  for (const [k, v] of Object.entries(w)) {
    const z = rng.fold(k).normal(v.length);
    for (let i = 0; i < v.length; i++) v[i] += 0.1 * z[i];
  }
  return w;
}
