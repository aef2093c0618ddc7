/**
 * `diffusers_vae` model: a pretrained diffusers `AutoencoderKL` from its folder (or a downloaded hub id), under
 * diffusers' own parameter keys (the attention names of early VAE files are mapped onto them). It is meant frozen: in
 * ADD no optimizer names it; the student and the teacher work in its latent space and the discriminator sees pixels.
 *
 * Inputs and outputs, either or both:
 * - `x` [B, C, H, W] in [-1, 1] → `latent` [B, latent_channels, H/f, W/f]: the posterior's mean in the diffusion
 *   model's latent space, (mean − shift_factor) · scaling_factor. The mean, not a sample: a cached encoding must not
 *   depend on a draw, and diffusers' own training scripts for SD-Turbo-style distillation take the mode too.
 * - `latent` [B, latent_channels, h, w] → `image` [B, C, h·f, w·f]: the decoder on latent / scaling_factor +
 *   shift_factor. Traced like any model, so a loss on `image` differentiates through the decoder into the latent.
 *
 * f is 2^(blocks − 1): 8 for the Stable Diffusion VAEs. Planning checks the folder (config, every key and shape) and
 * reports a problem as one line at the config's `path` (or `subfolder`/`variant`) key.
 *
 * @module
 */
import type { z } from "zod";
import { checkedFolderParams, FolderParams } from "./folder_params.ts";
import { decodeSafetensors, toFloat32 } from "../../engine/safetensors.ts";
import { expectPort, type ModelDef, type PortSpec, StageTypeError } from "../../pipeline/stage.ts";
import { renameOldVaeKeys, vaeDecode, vaeEncode, vaeFromLatent, vaeShapes, vaeToLatent } from "./autoencoder_kl.ts";
import { type VaeConfig, vaeConfig } from "./autoencoder_kl_config.ts";
import { checkWeights, DiffusersFolderError, openFolder, type WeightMap, weightMap } from "./folder.ts";

const Params = FolderParams;
/** `diffusers_vae` settings. */
export type DiffusersVaeParams = z.output<typeof Params>;
type P = DiffusersVaeParams;

/** A VAE folder's config, shapes and where its weights are (under the current key names). */
export interface OpenedVae {
  cfg: VaeConfig;
  shapes: Record<string, number[]>;
  weights: WeightMap & { original: Record<string, string> };
  /** The spatial factor f between pixels and latents. */
  factor: number;
}

/** Opens `p`'s folder; throws one line. */
export function openVae(p: P): OpenedVae {
  const folder = openFolder(p.path, p);
  if (folder.className !== "AutoencoderKL") {
    throw new DiffusersFolderError(folder.configFile, `a ${folder.className} is not a VAE (AutoencoderKL)`);
  }
  const cfg = vaeConfig(folder.json, folder.configFile), w = weightMap(folder.dir, p.variant);
  // Early VAE files name the mid attention query/key/value/proj_attn: rename the header's keys, remember the originals.
  const tagged = Object.fromEntries(Object.entries(w.entries).map(([k, e]) => [k, { ...e, key: k }]));
  const renamed = renameOldVaeKeys(tagged), original: Record<string, string> = {};
  const entries: WeightMap["entries"] = {}, files: WeightMap["files"] = {};
  for (const [k, e] of Object.entries(renamed)) {
    entries[k] = { dtype: e.dtype, shape: e.shape };
    files[k] = w.files[e.key];
    original[k] = e.key;
  }
  const factor = 2 ** (cfg.block_out_channels.length - 1);
  return { cfg, shapes: vaeShapes(cfg), weights: { source: w.source, entries, files, original }, factor };
}

/** The VAE's weights as float32, under the current key names. */
export function loadVaeWeights(o: OpenedVae): Record<string, Float32Array> {
  checkWeights(o.weights, o.shapes);
  const out: Record<string, Float32Array> = {};
  for (const file of new Set(Object.values(o.weights.files))) {
    const { tensors } = decodeSafetensors(Deno.readFileSync(file), file);
    for (const [k, f] of Object.entries(o.weights.files)) {
      // A squeezed conv-shaped attention weight keeps its data's order: only the shape differs.
      if (f === file && o.shapes[k]) out[k] = toFloat32(tensors[o.weights.original[k]]);
    }
  }
  return out;
}

// The folder is opened and checked while params are parsed (folder_params.ts).
const Checked = checkedFolderParams((p) => {
  const o = openVae(p);
  checkWeights(o.weights, o.shapes);
});

function types(p: P, inputs: Record<string, PortSpec>): Record<string, PortSpec> {
  const { cfg, factor: f } = openVae(p), out: Record<string, PortSpec> = {};
  for (const k of Object.keys(inputs)) {
    if (k !== "x" && k !== "latent") throw new StageTypeError(`diffusers_vae has no input "${k}"`, ["inputs", k]);
  }
  if (!inputs.x && !inputs.latent) {
    throw new StageTypeError(`diffusers_vae needs the input x (to encode) or latent (to decode)`, ["inputs"]);
  }
  if (inputs.x) {
    const x = expectPort(inputs, "x", { dtype: "f32", shape: [-1, cfg.in_channels, -1, -1] });
    if (x.shape[2] % f || x.shape[3] % f) {
      throw new StageTypeError(`input "x" is ${x.shape[2]}×${x.shape[3]}: not multiples of the VAE's ${f}`, [
        "inputs",
        "x",
      ]);
    }
    out.latent = { dtype: "f32", shape: [x.shape[0], cfg.latent_channels, x.shape[2] / f, x.shape[3] / f] };
  }
  if (inputs.latent) {
    const z = expectPort(inputs, "latent", { dtype: "f32", shape: [-1, cfg.latent_channels, -1, -1] });
    out.image = { dtype: "f32", shape: [z.shape[0], cfg.out_channels, z.shape[2] * f, z.shape[3] * f] };
  }
  return out;
}

/** The diffusers_vae model kind. */
export const diffusersVae: ModelDef<P> = {
  kind: "diffusers_vae",
  doc: "a pretrained diffusers VAE (AutoencoderKL) from its folder or a downloaded hub id; x → latent, latent → image",
  params: Checked,
  shapes: (p) => openVae(p).shapes,
  init: (p) => loadVaeWeights(openVae(p)),
  types,
  apply: (p, w, { x, latent }) => {
    const { cfg } = openVae(p);
    return {
      ...(x ? { latent: vaeToLatent(cfg, vaeEncode(cfg, w, x).mean) } : {}),
      ...(latent ? { image: vaeDecode(cfg, w, vaeFromLatent(cfg, latent)) } : {}),
    };
  },
};
