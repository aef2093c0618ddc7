/**
 * Image helpers shared by the image dataset kinds: any PNG to 8-bit RGBA, alpha compositing on a background colour,
 * resampling, and an 8-bit image store whose batches are f32 NCHW in [-1, 1].
 *
 * Compositing and resampling work on sRGB-encoded values (as image viewers and most training pipelines do), in
 * float64, and the result is rounded to 8 bits once: a dataset example is exactly what saving the composited image as
 * an 8-bit PNG would give.
 *
 * @module
 */
import { decode, type DecodedPng } from "fast-png";
import type { HostArray } from "../engine/executors/executor.ts";
import type { Dataset } from "../pipeline/stage.ts";

/** An 8-bit RGBA image, row-major, 4 bytes a pixel. */
export interface Rgba {
  width: number;
  height: number;
  data: Uint8Array;
}

/** A planar float image (C×H×W), values on the 0..255 scale. */
export interface Planar {
  channels: number;
  height: number;
  width: number;
  data: Float64Array;
}

/** `"#rrggbb"` → [r, g, b] in 0..255; throws one line naming `where` for anything else. */
export function parseColor(hex: string, where: string): [number, number, number] {
  const m = /^#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})$/.exec(hex);
  if (!m) throw new Error(`${where}: colour "${hex}" is not of the form "#rrggbb"`);
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
}

// Samples of `depth` bits unpacked to one number each; PNG rows of sub-byte depths start on a byte boundary.
function unpackSamples(png: DecodedPng): ArrayLike<number> {
  const { width, height, depth } = png;
  const perRow = width * png.channels;
  if (depth >= 8) return png.data;
  const bytesPerRow = Math.ceil((perRow * depth) / 8), mask = (1 << depth) - 1;
  const out = new Uint8Array(perRow * height);
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < perRow; i++) {
      const bit = i * depth, byte = png.data[y * bytesPerRow + (bit >> 3)];
      out[y * perRow + i] = (byte >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

/**
 * Converts a decoded PNG of any colour type and bit depth (grey, grey+alpha, RGB, RGBA, indexed; 1–16 bits; tRNS
 * transparency) to 8-bit RGBA. 16-bit samples are rounded to 8 bits, sub-byte grey is scaled to 0..255.
 */
export function toRgba(png: DecodedPng): Rgba {
  const { width, height, channels, depth } = png;
  const n = width * height, out = new Uint8Array(n * 4), s = unpackSamples(png);
  const max = (1 << depth) - 1;
  const to8 = (v: number) => Math.round((v * 255) / max);
  if (png.palette) {
    for (let i = 0; i < n; i++) {
      const c = png.palette[s[i]];
      if (!c) throw new Error(`palette index ${s[i]} out of range (${png.palette.length} colours)`);
      out.set([c[0], c[1], c[2], c.length > 3 ? c[3] : 255], i * 4);
    }
    return { width, height, data: out };
  }
  // tRNS for grey/RGB images: one colour (in the image's own bit depth) that is fully transparent.
  const key = png.transparency && png.transparency.length > 0 ? png.transparency : null;
  for (let i = 0; i < n; i++) {
    const p = i * channels;
    let r: number, g: number, b: number, a: number;
    if (channels === 1 || channels === 2) {
      r = g = b = s[p];
      a = channels === 2 ? to8(s[p + 1]) : key && s[p] === key[0] ? 0 : 255;
    } else if (channels === 3 || channels === 4) {
      r = s[p], g = s[p + 1], b = s[p + 2];
      a = channels === 4 ? to8(s[p + 3]) : key && r === key[0] && g === key[1] && b === key[2] ? 0 : 255;
    } else {
      throw new Error(`unsupported PNG channel count ${channels}`);
    }
    out[i * 4] = to8(r), out[i * 4 + 1] = to8(g), out[i * 4 + 2] = to8(b), out[i * 4 + 3] = a;
  }
  return { width, height, data: out };
}

/** Reads and decodes a PNG file to 8-bit RGBA; errors name the file. */
export async function readPng(path: string): Promise<Rgba> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    return toRgba(decode(bytes));
  } catch (e) {
    throw new Error(`${path}: not a readable PNG image (${(e as Error).message})`);
  }
}

/**
 * Alpha-composites the `w`×`h` window at (`x0`, `y0`) of `img` on an opaque `bg` colour ("over", straight alpha):
 * c·a + bg·(1 − a). Returns a planar RGB image on the 0..255 scale.
 */
export function composite(
  img: Rgba,
  bg: readonly number[],
  x0 = 0,
  y0 = 0,
  w = img.width,
  h = img.height,
): Planar {
  if (x0 < 0 || y0 < 0 || x0 + w > img.width || y0 + h > img.height) {
    throw new RangeError(`composite: window ${w}x${h}+${x0}+${y0} outside a ${img.width}x${img.height} image`);
  }
  const out = new Float64Array(3 * w * h), plane = w * h, d = img.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = ((y0 + y) * img.width + x0 + x) * 4, a = d[p + 3] / 255, q = y * w + x;
      for (let c = 0; c < 3; c++) out[c * plane + q] = d[p + c] * a + bg[c] * (1 - a);
    }
  }
  return { channels: 3, height: h, width: w, data: out };
}

/**
 * 1-D resampling weights from `n` samples to `m`, as (source index, weight) lists per output sample. Shrinking uses
 * the exact box filter (each output averages the input interval it covers, partial pixels weighted by overlap), so
 * an integer factor is the plain block mean; growing uses linear interpolation at pixel centres (half-pixel
 * convention, edges clamped). n == m is the identity.
 */
export function resampleWeights(n: number, m: number): { idx: number[]; w: number[] }[] {
  const out: { idx: number[]; w: number[] }[] = [];
  const scale = n / m;
  for (let i = 0; i < m; i++) {
    const idx: number[] = [], w: number[] = [];
    if (m === n) {
      idx.push(i), w.push(1);
    } else if (m < n) {
      const lo = i * scale, hi = (i + 1) * scale;
      for (let j = Math.floor(lo); j < Math.min(n, Math.ceil(hi)); j++) {
        const overlap = Math.min(hi, j + 1) - Math.max(lo, j);
        if (overlap > 1e-12) idx.push(j), w.push(overlap / scale);
      }
    } else {
      const x = Math.min(n - 1, Math.max(0, (i + 0.5) * scale - 0.5)), j = Math.floor(x), f = x - j;
      idx.push(j), w.push(1 - f);
      if (f > 0) idx.push(j + 1), w.push(f);
    }
    out.push({ idx, w });
  }
  return out;
}

/** Resizes a planar image to `h`×`w` (separable; see `resampleWeights` for the filters). */
export function resize(img: Planar, h: number, w: number): Planar {
  if (img.height === h && img.width === w) return img;
  const C = img.channels, H = img.height, W = img.width;
  const wx = resampleWeights(W, w), wy = resampleWeights(H, h);
  const tmp = new Float64Array(C * H * w), out = new Float64Array(C * h * w);
  for (let c = 0; c < C; c++) {
    for (let y = 0; y < H; y++) {
      const src = (c * H + y) * W, dst = (c * H + y) * w;
      for (let x = 0; x < w; x++) {
        let s = 0;
        for (let k = 0; k < wx[x].idx.length; k++) s += img.data[src + wx[x].idx[k]] * wx[x].w[k];
        tmp[dst + x] = s;
      }
    }
    for (let y = 0; y < h; y++) {
      const { idx, w: wt } = wy[y];
      for (let x = 0; x < w; x++) {
        let s = 0;
        for (let k = 0; k < idx.length; k++) s += tmp[(c * H + idx[k]) * w + x] * wt[k];
        out[(c * h + y) * w + x] = s;
      }
    }
  }
  return { channels: C, height: h, width: w, data: out };
}

/** Rounds a planar 0..255 image to bytes (clamped), into `dst` at `offset`. */
export function writeU8(img: Planar, dst: Uint8Array, offset: number): void {
  for (let i = 0; i < img.data.length; i++) dst[offset + i] = Math.min(255, Math.max(0, Math.round(img.data[i])));
}

/** A `Dataset` with its caption strings: what the image dataset kinds return. */
export interface CaptionedDataset extends Dataset {
  captions: string[];
  captionOf(i: number): string;
}

/**
 * A dataset of 8-bit images (N×C×H×W bytes) with caption ids. Batches give `image` as f32 NCHW with v/127.5 − 1 (so
 * 0 → −1, 255 → 1) and `caption_id` as i32 indices into `captions`. A one-channel store can be served as
 * `outChannels` = 3 (grey replicated), which keeps the store a third the size.
 */
export function imageDataset(
  pixels: Uint8Array,
  shape: { channels: number; height: number; width: number },
  captionIds: Int32Array,
  captions: string[],
  outChannels = shape.channels,
): CaptionedDataset {
  const n = captionIds.length, per = shape.channels * shape.height * shape.width;
  if (pixels.length !== n * per) throw new RangeError(`imageDataset: ${pixels.length} bytes for ${n}x${per}`);
  if (outChannels !== shape.channels && shape.channels !== 1) {
    throw new RangeError(`imageDataset: cannot serve ${shape.channels} channels as ${outChannels}`);
  }
  const outPer = outChannels * shape.height * shape.width;
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = v / 127.5 - 1;
  return {
    size: n,
    captions,
    captionOf: (i) => captions[captionIds[i]],
    batch: (indices): Record<string, HostArray> => {
      const image = new Float32Array(indices.length * outPer), ids = new Int32Array(indices.length);
      for (let b = 0; b < indices.length; b++) {
        const i = indices[b];
        if (!Number.isInteger(i) || i < 0 || i >= n) throw new RangeError(`batch: index ${i} outside 0..${n - 1}`);
        const src = i * per;
        for (let dst = b * outPer; dst < (b + 1) * outPer; dst += per) {
          for (let k = 0; k < per; k++) image[dst + k] = lut[pixels[src + k]];
        }
        ids[b] = captionIds[i];
      }
      return { image, caption_id: ids };
    },
  };
}

/** Caption strings → (distinct captions in order of first appearance, id per example). */
export function captionIndex(perExample: readonly string[]): { captions: string[]; ids: Int32Array } {
  const seen = new Map<string, number>(), captions: string[] = [], ids = new Int32Array(perExample.length);
  perExample.forEach((c, i) => {
    let id = seen.get(c);
    if (id === undefined) seen.set(c, id = captions.length), captions.push(c);
    ids[i] = id;
  });
  return { captions, ids };
}
