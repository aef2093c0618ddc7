/**
 * The diffusers model classes the project builds, by `config.json`'s `_class_name`: how each reads its config, its
 * parameter shapes under diffusers' keys, its forward pass's named inputs and outputs, and (for a denoiser) which of
 * them the pipeline's model-stage ports `x`, `t` and `tokens` are. A new class is one entry of `DIFFUSERS_CLASSES`;
 * the `diffusers_unet` kind and `deno task diffusers` read only this table.
 *
 * @module
 */
import { expand, reshape } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { unet2dConditionForward, unetShapes } from "./unet2d_condition.ts";
import { type UNetConfig, unetConfig } from "./unet2d_condition_config.ts";
import { unet2dModelForward, unet2dModelShapes } from "./unet2d_model.ts";
import { type UNet2DModelConfig, unet2dModelConfig } from "./unet2d_model_config.ts";
import { DiffusersFolderError } from "./folder.ts";
import { vaeDecode, vaeEncode, vaeShapes } from "./autoencoder_kl.ts";
import { type VaeConfig, vaeConfig } from "./autoencoder_kl_config.ts";

/** Why inputs do not fit: the input at fault and what was expected. */
export interface InputProblem {
  /** The forward input's name. */
  input: string;
  /** One line, e.g. `is [2,3,8,8], expected [B,4,H,W]`. */
  message: string;
}

/** One diffusers class. `C` is its parsed config. */
export interface DiffusersClass<C = unknown> {
  /** Validates config.json (one line naming the key on a value the project does not support). */
  config(json: unknown, source: string): C;
  /** Every parameter's shape under its diffusers state-dict key. */
  shapes(cfg: C): Record<string, number[]>;
  /** The forward pass's inputs, in the order the CLI reads them. */
  inputs: readonly string[];
  /**
   * Other sets of inputs the forward pass also takes (a VAE decodes a `latent` as well as encoding a `sample`); the
   * CLI takes the first set, `inputs` first, that the inputs file holds all of.
   */
  alternatives?: readonly (readonly string[])[];
  /** The outputs' shapes for inputs of `shapes`, or the first input that does not fit. */
  outputShapes(cfg: C, shapes: Record<string, readonly number[]>): Record<string, number[]> | InputProblem;
  /** The forward pass on traced parameters (by key) and inputs (by name). */
  forward(cfg: C, p: Record<string, Tensor>, inputs: Record<string, Tensor>): Record<string, Tensor>;
  /**
   * For a denoiser: the forward inputs behind the model stage's `x` (noisy image), `t` (timesteps [B]) and, when the
   * class is text-conditioned, `tokens` ([B, L, D] hidden states), and the output behind its `out`.
   */
  ports?: { x: string; t: string; tokens?: string; out: string };
}

/** Whether `outputShapes` said no. */
export const isProblem = (r: Record<string, number[]> | InputProblem): r is InputProblem =>
  typeof r.input === "string" && typeof r.message === "string";

const fmt = (s: readonly (number | string)[]) => `[${s.join(",")}]`;

/** `sample` and `timestep` of a UNet of `levels` resolutions: the batch, or the first input that does not fit. */
function sampleAndTimestep(
  inChannels: number,
  levels: number,
  s: Record<string, readonly number[]>,
): number | InputProblem {
  const x = s.sample, t = s.timestep, down = 2 ** (levels - 1);
  if (x.length !== 4 || x[1] !== inChannels || x[2] % down || x[3] % down) {
    const want = `[B,${inChannels},H,W] with H and W multiples of ${down}`;
    return { input: "sample", message: `is ${fmt(x)}, expected ${want}` };
  }
  const b = x[0];
  if (!(t.length === 0 || (t.length === 1 && (t[0] === b || t[0] === 1)))) {
    return { input: "timestep", message: `is ${fmt(t)}, expected [${b}] (one per sample), [1] or a scalar` };
  }
  return b;
}

function unet2dConditionShapes(
  cfg: UNetConfig,
  s: Record<string, readonly number[]>,
): Record<string, number[]> | InputProblem {
  const b = sampleAndTimestep(cfg.in_channels, cfg.block_out_channels.length, s);
  if (typeof b !== "number") return b;
  const x = s.sample, ctx = s.encoder_hidden_states;
  if (ctx.length !== 3 || ctx[0] !== b || ctx[2] !== cfg.cross_attention_dim) {
    return { input: "encoder_hidden_states", message: `is ${fmt(ctx)}, expected [${b},L,${cfg.cross_attention_dim}]` };
  }
  return { sample: [b, cfg.out_channels, x[2], x[3]] };
}

// diffusers broadcasts one timestep over the batch; the forwards want one per sample.
const perSample = (timestep: Tensor, b: number) =>
  timestep.shape.length === 1 && timestep.shape[0] === b ? timestep : expand(reshape(timestep, [1]), [b]);

const unet2dCondition: DiffusersClass<UNetConfig> = {
  config: unetConfig,
  shapes: unetShapes,
  inputs: ["sample", "timestep", "encoder_hidden_states"],
  outputShapes: unet2dConditionShapes,
  forward: (cfg, p, { sample, timestep, encoder_hidden_states }) => ({
    sample: unet2dConditionForward(cfg, p, sample, perSample(timestep, sample.shape[0]), encoder_hidden_states),
  }),
  ports: { x: "sample", t: "timestep", tokens: "encoder_hidden_states", out: "sample" },
};

const unet2dModel: DiffusersClass<UNet2DModelConfig> = {
  config: unet2dModelConfig,
  shapes: unet2dModelShapes,
  inputs: ["sample", "timestep"],
  outputShapes: (cfg, s) => {
    const b = sampleAndTimestep(cfg.in_channels, cfg.block_out_channels.length, s);
    return typeof b === "number" ? { sample: [b, cfg.out_channels, s.sample[2], s.sample[3]] } : b;
  },
  forward: (cfg, p, { sample, timestep }) => ({
    sample: unet2dModelForward(cfg, p, sample, perSample(timestep, sample.shape[0])),
  }),
  ports: { x: "sample", t: "timestep", out: "sample" },
};

// Not a denoiser (no ports): the `diffusers_vae` kind encodes and decodes with it. Its forward is what
// `deno task diffusers forward` runs: a `sample` gives the posterior's moments and the reconstruction from its mean;
// a `latent` (unscaled, as diffusers' decode takes it) gives its decoding.
const autoencoderKL: DiffusersClass<VaeConfig> = {
  config: vaeConfig,
  shapes: vaeShapes,
  inputs: ["sample"],
  alternatives: [["latent"]],
  outputShapes: (cfg, s): Record<string, number[]> | InputProblem => {
    const f = 2 ** (cfg.block_out_channels.length - 1);
    if (s.latent) {
      const z = s.latent;
      if (z.length !== 4 || z[1] !== cfg.latent_channels) {
        return { input: "latent", message: `is ${fmt(z)}, expected [B,${cfg.latent_channels},h,w]` };
      }
      return { decoded: [z[0], cfg.out_channels, z[2] * f, z[3] * f] };
    }
    const x = s.sample;
    if (x.length !== 4 || x[1] !== cfg.in_channels || x[2] % f || x[3] % f) {
      return {
        input: "sample",
        message: `is ${fmt(x)}, expected [B,${cfg.in_channels},H,W] with H and W multiples of ${f}`,
      };
    }
    const latent = [x[0], cfg.latent_channels, x[2] / f, x[3] / f];
    return { reconstruction: [x[0], cfg.out_channels, x[2], x[3]], latent_mean: latent, latent_logvar: latent };
  },
  forward: (cfg, p, { sample, latent }): Record<string, Tensor> => {
    if (latent) return { decoded: vaeDecode(cfg, p, latent) };
    const { mean, logvar } = vaeEncode(cfg, p, sample);
    return { reconstruction: vaeDecode(cfg, p, mean), latent_mean: mean, latent_logvar: logvar };
  },
};

/** The classes built so far, by `_class_name`. */
// deno-lint-ignore no-explicit-any
export const DIFFUSERS_CLASSES: Readonly<Record<string, DiffusersClass<any>>> = {
  UNet2DConditionModel: unet2dCondition,
  AutoencoderKL: autoencoderKL,
  UNet2DModel: unet2dModel,
};

/** The entry for `className`, or one line naming `source` and the classes that are supported. */
// deno-lint-ignore no-explicit-any
export function diffusersClass(className: string, source: string): DiffusersClass<any> {
  if (Object.hasOwn(DIFFUSERS_CLASSES, className)) return DIFFUSERS_CLASSES[className];
  const known = Object.keys(DIFFUSERS_CLASSES).join(", ");
  throw new DiffusersFolderError(source, `_class_name "${className}" is not supported (supported: ${known})`);
}
