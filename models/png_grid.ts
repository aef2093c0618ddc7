/**
 * Image grids as PNG: images in the project's convention (CHW floats in [-1, 1]) tiled into one picture, written
 * atomically (temporary file, then rename).
 *
 * @module
 */
import { dirname } from "node:path";
import { encode } from "fast-png";

/** Options of `gridToPng`. */
export interface GridOptions {
  /** Images per row (default: √n rounded up). */
  cols?: number;
  /** Pixels between cells (background white). */
  pad?: number;
  /** Integer upscaling of each pixel, so 32×32 images are visible. */
  scale?: number;
}

/** Tiles `images` (each [channels, size, size], 1 or 3 channels, values in [-1, 1]) into RGB PNG bytes. */
export function gridToPng(images: Float32Array[], channels: number, size: number, o: GridOptions = {}): Uint8Array {
  const n = images.length, cols = o.cols ?? Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
  const pad = o.pad ?? 2, scale = o.scale ?? 2, cell = size * scale;
  const W = cols * cell + (cols + 1) * pad, H = rows * cell + (rows + 1) * pad;
  const px = new Uint8Array(W * H * 3).fill(255);
  images.forEach((img, k) => {
    if (img.length !== channels * size * size) {
      throw new Error(`gridToPng: image ${k} has ${img.length} values, expected ${channels}×${size}×${size}`);
    }
    const ox = pad + (k % cols) * (cell + pad), oy = pad + Math.floor(k / cols) * (cell + pad);
    for (let y = 0; y < cell; y++) {
      for (let x = 0; x < cell; x++) {
        const sy = Math.floor(y / scale), sx = Math.floor(x / scale);
        for (let c = 0; c < 3; c++) {
          const v = img[(channels === 1 ? 0 : c) * size * size + sy * size + sx];
          px[((oy + y) * W + ox + x) * 3 + c] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
        }
      }
    }
  });
  return encode({ width: W, height: H, data: px, channels: 3, depth: 8 });
}

/** Writes bytes or text atomically, making the folder first (`sample --out grids/new/x.png` should just work). */
export async function writeAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
