/**
 * The text encoder an export carries: the folder the run encoded its captions with (a local folder such as
 * `models/text_encoder`, or the `use-lite` build in the run's cache folder, built first if missing), copied whole, in
 * the layout transformers.js loads offline, with the sizes and fixed batch the generator needs.
 *
 * @module
 */
import { join } from "node:path";
import { loadCaptionEncoder, localModelFolder } from "../models/caption_encoder.ts";
import { ensureUseEncoder, USE_LITE_MODEL, useEncoderDir } from "../models/use_lite/build.ts";
import type { Manifest } from "./manifest.ts";

/** The encoder's folder on disk and its manifest section (its `folder` relative to the export). */
export interface EncoderExport {
  dir: string;
  section: Manifest["text_encoder"];
  /** Where it came from, for the model card: the config's name for it. */
  name: string;
}

/** Resolves, checks and loads (once, to learn its batch) the encoder named by a run's `text_encode` stage. */
export async function resolveEncoder(model: string, cache: string | undefined): Promise<EncoderExport> {
  let dir: string | null;
  if (model === USE_LITE_MODEL) {
    dir = useEncoderDir(cache);
    await ensureUseEncoder(dir);
  } else {
    dir = localModelFolder(model);
  }
  if (!dir) {
    throw new Error(`text encoder "${model}": not a local folder (a hub id?); an export needs the encoder on disk`);
  }
  const enc = await loadCaptionEncoder(model === USE_LITE_MODEL ? model : dir, undefined, cache);
  const type = JSON.parse(await Deno.readTextFile(join(dir, "config.json"))).model_type;
  return {
    dir,
    name: model,
    section: {
      folder: "text_encoder",
      class: type === "clip_text_model" || type === "clip" ? "clip" : "auto",
      ...enc.dims,
      batch: enc.batch,
    },
  };
}

/** Copies a folder recursively (files and folders only; a link is refused rather than followed out of the tree). */
export async function copyFolder(from: string, to: string): Promise<number> {
  await Deno.mkdir(to, { recursive: true });
  let bytes = 0;
  for await (const e of Deno.readDir(from)) {
    const src = join(from, e.name), dst = join(to, e.name);
    if (e.isDirectory) bytes += await copyFolder(src, dst);
    else if (e.isFile) {
      await Deno.copyFile(src, dst);
      bytes += (await Deno.stat(dst)).size;
    } else throw new Error(`${src}: a link; the encoder folder must hold plain files`);
  }
  return bytes;
}
