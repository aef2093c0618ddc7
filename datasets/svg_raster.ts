/**
 * SVG files to dataset images with `@resvg/resvg-wasm` (pure WASM, so the same pixels on every machine), and a disk
 * cache of the results.
 *
 * An SVG is rendered with its larger side at `render` px (centred on a transparent square when it is not square),
 * composited on the background and box-filtered down to `size` (image_util's `resize`), then rounded to 8 bits once,
 * as the sprite-sheet images are.
 *
 * The cache holds one file per (artist, size, background): a header naming everything the pixels depend on (package
 * and renderer versions, sizes, background, the list of files) and the RGB bytes. A header that differs in anything
 * is a miss, so a stale file is never read; files are written atomically.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { initWasm, Resvg } from "@resvg/resvg-wasm";
import { writeAtomic } from "../models/png_grid.ts";
import { type Planar, resize, writeU8 } from "./image_util.ts";

const MAGIC = "EMOJIPX1";
// Bump when the way pixels are made changes in a way the header does not already name.
const FORMAT = 1;

/** The folder of an npm package as a file path ending in "/", found through the import map by its file `sub`. */
export function packageDir(specifier: string, sub: string, what: string): string {
  let url: string;
  try {
    url = import.meta.resolve(`${specifier}${sub}`);
  } catch (e) {
    throw new Error(`${what}: npm package ${specifier} not found (${(e as Error).message})`);
  }
  const file = url.startsWith("file:") ? decodeURIComponent(new URL(url).pathname) : "";
  if (!file.endsWith(`/${sub}`)) throw new Error(`${what}: ${specifier}${sub} resolved to ${url}, not a file`);
  return file.slice(0, file.length - sub.length);
}

/** "name@version" of the npm package in `dir`, from its package.json. */
export function packageId(dir: string): string {
  const path = `${dir}package.json`;
  let pkg: { name?: unknown; version?: unknown };
  try {
    pkg = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    throw new Error(`${path}: cannot read the package manifest (${(e as Error).message})`);
  }
  if (typeof pkg.name !== "string" || typeof pkg.version !== "string") {
    throw new Error(`${path}: expected "name" and "version" strings`);
  }
  return `${pkg.name}@${pkg.version}`;
}

const RESVG_DIR = packageDir("@resvg/resvg-wasm/", "index_bg.wasm", "svg_raster");
/** The renderer, as keyed in the cache. */
export const RENDERER = packageId(RESVG_DIR);

let ready: Promise<void> | null = null;
/** Initialises resvg's WASM module once per process (also when some other module of the process did it first). */
export function initResvg(): Promise<void> {
  ready ??= Deno.readFile(`${RESVG_DIR}index_bg.wasm`).then((b) => initWasm(b)).catch((e) => {
    if (!/already initiali[sz]ed/i.test((e as Error).message ?? "")) throw e;
  });
  ready.catch(() => {
    ready = null;
  });
  return ready;
}

/** Renders one SVG's bytes with its larger side at `px`; RGBA, premultiplied (as resvg gives it). */
function renderSvg(svg: Uint8Array, px: number, where: string): { width: number; height: number; data: Uint8Array } {
  const draw = (mode: "width" | "height") => {
    let r: InstanceType<typeof Resvg> | null = null;
    try {
      r = new Resvg(svg, { fitTo: { mode, value: px }, font: { loadSystemFonts: false } });
      const img = r.render();
      const out = { width: img.width, height: img.height, data: img.pixels };
      img.free();
      return out;
    } catch (e) {
      throw new Error(`${where}: not a renderable SVG (${(e as Error).message ?? e})`);
    } finally {
      r?.free();
    }
  };
  const img = draw("width");
  return img.height > px ? draw("height") : img;
}

/** The SVG at `path` as a `size`×`size` RGB image on `bg`: rendered at `render` px, composited, box-filtered. */
export async function rasterise(path: string, size: number, render: number, bg: readonly number[]): Promise<Planar> {
  await initResvg();
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  const img = renderSvg(bytes, render, path);
  const ox = Math.floor((render - img.width) / 2), oy = Math.floor((render - img.height) / 2);
  const plane = render * render, out = new Float64Array(3 * plane);
  for (let c = 0; c < 3; c++) out.fill(bg[c], c * plane, (c + 1) * plane);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const p = (y * img.width + x) * 4, keep = 1 - img.data[p + 3] / 255, q = (oy + y) * render + ox + x;
      // Premultiplied "over": c + bg·(1 − a).
      for (let c = 0; c < 3; c++) out[c * plane + q] = img.data[p + c] + bg[c] * keep;
    }
  }
  return resize({ channels: 3, height: render, width: render, data: out }, size, size);
}

/** What a cached set of rendered images depends on; `files` are relative to the package folder. */
export interface RasterKey {
  artist: string;
  /** "name@version" of the art's package. */
  package: string;
  size: number;
  render: number;
  background: readonly number[];
  files: string[];
}

/** Where the set for `key` is cached in `dir`, and the exact header its file must carry. */
function cachePath(dir: string, key: RasterKey): { path: string; header: string } {
  const header = JSON.stringify({ format: FORMAT, renderer: RENDERER, ...key });
  const hash = createHash("sha256").update(header).digest("hex").slice(0, 16);
  const bg = key.background.map((v) => v.toString(16).padStart(2, "0")).join("");
  return { path: `${dir}/${key.artist}-${key.size}px-${bg}-${hash}.bin`, header };
}

/** The cached RGB bytes for `key`, or null when absent, unreadable or made under any other key. */
export async function readCached(dir: string, key: RasterKey): Promise<Uint8Array | null> {
  const { path, header } = cachePath(dir, key);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch {
    return null;
  }
  const want = new TextEncoder().encode(header), head = MAGIC.length + 4;
  if (bytes.length < head || new TextDecoder().decode(bytes.subarray(0, MAGIC.length)) !== MAGIC) return null;
  const n = new DataView(bytes.buffer, bytes.byteOffset + MAGIC.length, 4).getUint32(0, true);
  if (n !== want.length || bytes.length !== head + n + key.files.length * 3 * key.size * key.size) return null;
  for (let i = 0; i < n; i++) if (bytes[head + i] !== want[i]) return null;
  return bytes.slice(head + n);
}

/** Writes the set for `key` (atomically); returns the path. */
export async function writeCached(dir: string, key: RasterKey, pixels: Uint8Array): Promise<string> {
  const { path, header } = cachePath(dir, key);
  const h = new TextEncoder().encode(header), head = MAGIC.length + 4;
  const out = new Uint8Array(head + h.length + pixels.length);
  out.set(new TextEncoder().encode(MAGIC));
  new DataView(out.buffer, MAGIC.length, 4).setUint32(0, h.length, true);
  out.set(h, head);
  out.set(pixels, head + h.length);
  await writeAtomic(path, out);
  return path;
}

/**
 * The images of `key.files` (under `root`) as one block of RGB bytes, 3×size×size each: from the cache in `dir` when
 * it holds them, else rendered and (best effort) cached. `cached` says which.
 */
export async function rasteriseAll(
  root: string,
  key: RasterKey,
  dir: string | null,
): Promise<{ pixels: Uint8Array; cached: boolean }> {
  const hit = dir ? await readCached(dir, key) : null;
  if (hit) return { pixels: hit, cached: true };
  const per = 3 * key.size * key.size, pixels = new Uint8Array(key.files.length * per);
  for (let i = 0; i < key.files.length; i++) {
    writeU8(await rasterise(`${root}${key.files[i]}`, key.size, key.render, key.background), pixels, i * per);
  }
  if (dir) {
    // A run allowed to write only its output folder still loads; it just renders again next time.
    await writeCached(dir, key, pixels).catch(() => {});
  }
  return { pixels, cached: false };
}
