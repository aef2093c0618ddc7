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

/** `FolderParams` as parsed. */
export type FolderParamsValue = z.output<typeof FolderParams>;

// Which key a folder problem is told at: the variant when the weight file of a named variant is what is missing.
function faultKey(p: FolderParamsValue, message: string): keyof FolderParamsValue {
  if (p.subfolder && /^subfolder |: no subfolder /.test(message)) return "subfolder";
  if (p.variant && / no diffusion_pytorch_model\./.test(message)) return "variant";
  return "path";
}

/**
 * `FolderParams` that also open and check the folder (`check` throws one line): planning parses params before it
 * asks for shapes, so a folder's error is told at the key at fault. Only params that are otherwise right are checked:
 * a misspelt `varient` is one error, not that and a missing file.
 */
export function checkedFolderParams(check: (p: FolderParamsValue) => void) {
  return FolderParams.superRefine((p, ctx) => {
    try {
      check(p);
    } catch (e) {
      const message = (e as Error).message.split("\n")[0];
      ctx.addIssue({ code: "custom", path: [faultKey(p, message)], message });
    }
  }, { when: (payload) => payload.issues.length === 0 });
}
