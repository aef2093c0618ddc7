/**
 * `diffusers_unet` model: a pretrained diffusers denoiser from its folder (or a downloaded hub id), under diffusers'
 * own parameter keys. `config.json` decides the network (`_class_name`, looked up in `DIFFUSERS_CLASSES`) and its
 * shapes; the weights are the kind's initial values, so a run starts from the pretrained model (an `init:` file of the
 * same keys, such as a checkpoint's, still overrides them).
 *
 * Inputs, as the `unet` kind's: `x` [B, C, H, W], `t` [B] (timesteps 0…T−1 as floats) and, for a text-conditioned
 * class such as UNet2DConditionModel, `tokens` [B, L, D] (its `encoder_hidden_states`). `pooled` is accepted and not
 * used: the SD 1.x/2.x UNet has no pooled-text input, and accepting it lets a config swap this kind in where a `unet`
 * was wired. Output: `out` in the model's own parameterisation (ε or v, as its scheduler says).
 *
 * Planning checks the folder (config values, every weight key and shape from the file headers) and reports a problem
 * as one line at the config's `path` (or `subfolder`/`variant`) key; the weights' data are read only at `init`.
 *
 * @module
 */
import type { z } from "zod";
import { checkedFolderParams, FolderParams } from "./folder_params.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { expectPort, type ModelDef, type PortSpec, StageTypeError } from "../../pipeline/stage.ts";
import type { DenoiserKind, DenoiserModel } from "../denoiser.ts";
import { type DiffusersClass, diffusersClass, isProblem } from "./classes.ts";
import {
  checkWeights,
  type DiffusersFolder,
  DiffusersFolderError,
  loadWeights,
  openFolder,
  weightMap,
} from "./folder.ts";

const Params = FolderParams;
/** `diffusers_unet` settings. */
export type DiffusersUNetParams = z.output<typeof Params>;
type P = DiffusersUNetParams;

interface Opened {
  folder: DiffusersFolder;
  // deno-lint-ignore no-explicit-any
  cls: DiffusersClass<any> & { ports: NonNullable<DiffusersClass["ports"]> };
  cfg: unknown;
  shapes: Record<string, number[]>;
}

/** Folder, class, config and shapes of `p`; throws one line. */
function open(p: P): Opened {
  const folder = openFolder(p.path, p);
  const cls = diffusersClass(folder.className, folder.configFile);
  if (!cls.ports) {
    throw new DiffusersFolderError(folder.configFile, `a ${folder.className} is not a denoiser (x, t → out)`);
  }
  const cfg = cls.config(folder.json, folder.configFile);
  return { folder, cls: cls as Opened["cls"], cfg, shapes: cls.shapes(cfg) };
}

// The folder is opened and checked while params are parsed (folder_params.ts).
const Checked = checkedFolderParams((p) => {
  const o = open(p);
  checkWeights(weightMap(o.folder.dir, p.variant), o.shapes);
});

function types(p: P, inputs: Record<string, PortSpec>): Record<string, PortSpec> {
  const { cls, cfg } = open(p), ports = cls.ports;
  for (const k of Object.keys(inputs)) {
    if (!["x", "t", "pooled", ...(ports.tokens ? ["tokens"] : [])].includes(k)) {
      throw new StageTypeError(`diffusers_unet has no input "${k}"`, ["inputs", k]);
    }
  }
  const named: Record<string, number[]> = {};
  const byName: Record<string, string> = {};
  for (const port of ["x", "t", "tokens"] as const) {
    const name = ports[port];
    if (!name) continue;
    named[name] = expectPort(inputs, port, { dtype: "f32" }).shape;
    byName[name] = port;
  }
  const out = cls.outputShapes(cfg, named);
  if (isProblem(out)) {
    const port = byName[out.input];
    throw new StageTypeError(`input "${port}" (${out.input}) ${out.message}`, ["inputs", port]);
  }
  return { out: { dtype: "f32", shape: out[ports.out] } };
}

/**
 * The folder's model as the ADD stages and samplers see it. The sizes come from config.json's own keys, which every
 * diffusers UNet class spells alike; `sample_size` is the side it was trained at (64 latents for a 512² SD model).
 */
function denoiser(p: P): DenoiserModel {
  const { cls, cfg, shapes, folder } = open(p), ports = cls.ports, json = folder.json;
  const num = (k: string, fallback: number) => typeof json[k] === "number" ? json[k] as number : fallback;
  return {
    in_channels: num("in_channels", 4),
    size: num("sample_size", 64),
    context_dim: ports.tokens ? num("cross_attention_dim", 0) : 0,
    pooled_dim: 0,
    shapes,
    forward: (w, x, t, tokens) => {
      const named: Record<string, Tensor> = { [ports.x]: x, [ports.t]: t };
      if (ports.tokens && tokens) named[ports.tokens] = tokens;
      return cls.forward(cfg, w, named)[ports.out];
    },
    settings: { class: folder.className, config: json },
  };
}

/** The diffusers_unet model kind. */
export const diffusersUnet: ModelDef<P> & DenoiserKind<P> = {
  kind: "diffusers_unet",
  doc:
    "a pretrained diffusers UNet (UNet2DConditionModel, UNet2DModel) from its folder or hub id; x, t[, tokens] → out",
  params: Checked,
  shapes: (p) => open(p).shapes,
  init: (p) => {
    const o = open(p);
    return loadWeights(weightMap(o.folder.dir, p.variant), o.shapes);
  },
  types,
  apply: (p, params, inputs) => {
    const { cls, cfg } = open(p), ports = cls.ports;
    const named = {
      [ports.x]: inputs.x,
      [ports.t]: inputs.t,
      ...(ports.tokens ? { [ports.tokens]: inputs.tokens } : {}),
    };
    return { out: cls.forward(cfg, params, named)[ports.out] };
  },
  denoiser,
};
