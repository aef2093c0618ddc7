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
  const clip = type === "clip_text_model" || type === "clip";
  return {
    dir,
    name: model,
    section: {
      folder: "text_encoder",
      onnx: await onnxFile(dir, clip),
      class: clip ? "clip" : "auto",
      ...enc.dims,
      batch: enc.batch,
    },
  };
}

/** The folder's one ONNX model under onnx/ (or the one transformers.js would take for the class when there are several). */
async function onnxFile(dir: string, clip: boolean): Promise<string> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(join(dir, "onnx"))) if (e.isFile && e.name.endsWith(".onnx")) names.push(e.name);
  } catch {
    // No onnx/ folder: reported below.
  }
  const pick = names.length === 1 ? names[0] : names.find((n) => n === (clip ? "text_model.onnx" : "model.onnx"));
  if (!pick) throw new Error(`${dir}/onnx: no ONNX model of the text encoder (found ${names.join(", ") || "none"})`);
  return `onnx/${pick}`;
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
