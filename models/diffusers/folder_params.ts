/**
 * The params of a model kind read from a diffusers folder (`diffusers_unet`, `diffusers_vae`): where the folder is,
 * which model inside it, which weight file.
 *
 * @module
 */
import { z } from "zod";

/** `{ path, subfolder?, variant? }` of a diffusers-folder model kind. */
export const FolderParams = z.strictObject({
  /** A diffusers model folder (relative to the working directory), or a hub id `org/name` downloaded beforehand. */
  path: z.string().min(1),
  /** The model's folder inside `path`, e.g. `unet` or `vae` for a whole pipeline's folder. */
  subfolder: z.string().min(1).optional(),
  /** Which weight file: `fp16` reads `diffusion_pytorch_model.fp16.safetensors` (any dtype becomes float32). */
  variant: z.string().regex(/^[\w-]+$/, "a variant name such as fp16").optional(),
});
