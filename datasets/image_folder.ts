/**
 * `image_folder` dataset: a folder of PNG images, each captioned by the text file of the same stem (`cat.png` and
 * `cat.txt`). Captions are the file's text with runs of whitespace collapsed to one space.
 *
 * Every image is alpha-composited on `background`, made square by `fit` ("crop": the centred square; "pad": centred
 * on a background-coloured square; "stretch": as is), then resized to `size`×`size`: downscaling averages the exact
 * area each output pixel covers (box filter), upscaling interpolates linearly between pixel centres. Images are read
 * in file-name order (by UTF-16 code units), so example i is the same file on every machine. Only PNG is read; other
 * common image files in the folder are errors rather than silently skipped.
 *
 * @module
 */
import { z } from "zod";
import type { DatasetDef } from "../pipeline/stage.ts";
import {
  type CaptionedDataset,
  captionIndex,
  composite,
  imageDataset,
  parseColor,
  type Planar,
  readPng,
  resize,
  writeU8,
} from "./image_util.ts";

const Params = z.strictObject({
  /** The folder (relative paths are from the working directory). */
  path: z.string().min(1),
  /** Side of the square images, in pixels. */
  size: z.number().int().min(1).max(1024).default(32),
  /** Colour transparent pixels (and "pad" borders) become, "#rrggbb". */
  background: z.string().default("#ffffff"),
  /** How a non-square image becomes square: "crop", "pad" or "stretch". */
  fit: z.enum(["crop", "pad", "stretch"]).default("crop"),
});

/** Parameters of the `image_folder` dataset, after defaults. */
export type ImageFolderParams = z.output<typeof Params>;

const OTHER_IMAGES = /\.(jpe?g|gif|webp|bmp|tiff?|avif|heic)$/i;

/** Makes a planar image square as `fit` says. */
export function fitSquare(img: Planar, fit: ImageFolderParams["fit"], bg: readonly number[]): Planar {
  const { channels: C, height: H, width: W } = img;
  if (fit === "stretch" || H === W) return img;
  const S = fit === "crop" ? Math.min(H, W) : Math.max(H, W);
  const out = new Float64Array(C * S * S);
  // Offsets of the source in the square (negative when cropping).
  const oy = Math.floor((S - H) / 2), ox = Math.floor((S - W) / 2);
  for (let c = 0; c < C; c++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const sy = y - oy, sx = x - ox;
        out[(c * S + y) * S + x] = sy >= 0 && sy < H && sx >= 0 && sx < W ? img.data[(c * H + sy) * W + sx] : bg[c];
      }
    }
  }
  return { channels: C, height: S, width: S, data: out };
}

/** Loads a folder of PNG + caption files. */
export async function loadImageFolder(p: ImageFolderParams): Promise<CaptionedDataset> {
  const bg = parseColor(p.background, "image_folder: params.background");
  const dir = p.path.replace(/\/+$/, "") || "/";
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (e.isFile || e.isSymlink) names.push(e.name);
  } catch (e) {
    throw new Error(`image_folder: cannot list ${dir} (${(e as Error).message})`);
  }
  names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const other = names.find((n) => OTHER_IMAGES.test(n));
  if (other) throw new Error(`image_folder: ${dir}/${other}: only PNG images are read; convert or remove it`);
  const pngs = names.filter((n) => /\.png$/i.test(n));
  if (pngs.length === 0) throw new Error(`image_folder: ${dir} holds no .png images`);
  const per = 3 * p.size * p.size, pixels = new Uint8Array(pngs.length * per), texts: string[] = [];
  for (const [i, name] of pngs.entries()) {
    const file = `${dir}/${name}`, txt = `${dir}/${name.slice(0, -4)}.txt`;
    let caption: string;
    try {
      caption = (await Deno.readTextFile(txt)).trim().replace(/\s+/g, " ");
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound ? "is missing" : `cannot be read (${(e as Error).message})`;
      throw new Error(`image_folder: ${file}: its caption file ${txt} ${why}`);
    }
    if (!caption) throw new Error(`image_folder: ${txt}: the caption is empty`);
    texts.push(caption);
    const img = await readPng(file).catch((e) => {
      throw new Error(`image_folder: ${(e as Error).message}`);
    });
    if (img.width === 0 || img.height === 0) throw new Error(`image_folder: ${file}: the image is empty`);
    const square = fitSquare(composite(img, bg), p.fit, bg);
    writeU8(resize(square, p.size, p.size), pixels, i * per);
  }
  const { captions, ids } = captionIndex(texts);
  return imageDataset(pixels, { channels: 3, height: p.size, width: p.size }, ids, captions);
}

/** The image_folder dataset kind. */
export const imageFolder: DatasetDef<ImageFolderParams> = {
  kind: "image_folder",
  doc: "a folder of PNG images with same-stem .txt captions, composited, squared and resized",
  params: Params,
  fields: (p) => ({ image: { dtype: "f32", shape: [3, p.size, p.size] }, caption_id: { dtype: "i32", shape: [] } }),
  load: (p) => loadImageFolder(p),
};
