/**
 * `emoji` dataset: Google's Noto emoji from npm `emoji-datasource-google@16.0.0` (images Apache-2.0, metadata MIT),
 * every emoji and (optionally) every skin-tone variant as an RGB image, alpha-composited on a background colour, with
 * its lower-cased name as caption ("red apple"; variants "waving hand sign: medium skin tone").
 *
 * Images come from the package's sprite sheets `img/google/sheets-clean/{16,20,32,64}.png`: a 62×62 grid of cells of
 * S+2 px, the image at (sheet_x·(S+2)+1, sheet_y·(S+2)+1). A `size` that is one of the sheet sizes is cropped as is;
 * another size (4–64) is box-filtered down from the next larger sheet after compositing.
 *
 * The held-out split is fixed (it does not depend on the run's seed): base emoji are grouped by caption (two base
 * emoji share a name in 16.0.0: "man in tuxedo"), groups are ranked by a keyed hash of the caption, and the first
 * round(heldout_fraction · groups) are held out, with all their skin-tone variants.
 *
 * `artists` adds other artists' renditions of the same emoji, matched by code point (datasets/emoji_artists.ts):
 * - `noto`: Google's Noto (emoji-datasource-google 16.0.0, Apache-2.0), from the sprite sheets; the default alone.
 * - `openmoji`: OpenMoji 17.0.0 (CC BY-SA 4.0), its colour SVGs, matched by hexcode (U+FE0F ignored).
 * - `fluent`: Microsoft's Fluent emoji, flat style (npm fluentui-emoji 1.3.0, MIT), matched by CLDR-name slug.
 * SVGs are rendered with resvg-wasm at a multiple of `size` of at least 128 px, composited on the background and
 * box-filtered down, and cached in `cache` (default .cache/emoji/). Every image keeps the caption of the Noto image
 * with its code points; emoji an artist lacks are absent for it, and art with no Noto image is not used. The split is
 * the Noto groups' whatever the artists, so adding artists never changes which captions are held out. Images come in
 * Noto's order, each emoji's artists in the order listed; unless `artists` is the default `[noto]`, batches have an
 * `artist` field (i32, the index into `artists`).
 *
 * @module
 */
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { decode } from "fast-png";
import { z } from "zod";
import { Rng } from "../engine/rng.ts";
import type { DatasetDef, DatasetEnv, PortSpec } from "../pipeline/stage.ts";
import { type Artist, type ArtistImages, artistImages, ARTISTS, codeKey } from "./emoji_artists.ts";
import {
  type CaptionedDataset,
  captionIndex,
  composite,
  imageDataset,
  parseColor,
  resize,
  type Rgba,
  toRgba,
  writeU8,
} from "./image_util.ts";

const SHEETS = [16, 20, 32, 64] as const;
const GRID = 62;
// Keys the split's hash; changing it changes which emoji are held out.
const SPLIT_KEY = 20261128;
const PROJECT_ROOT = fileURLToPath(new URL("../", import.meta.url));

/** CLDR names of the Fitzpatrick modifiers, as used in Unicode's emoji names ("…: medium-light skin tone"). */
export const SKIN_TONES: Readonly<Record<string, string>> = {
  "1F3FB": "light skin tone",
  "1F3FC": "medium-light skin tone",
  "1F3FD": "medium skin tone",
  "1F3FE": "medium-dark skin tone",
  "1F3FF": "dark skin tone",
};

const Params = z.strictObject({
  /** "train", "heldout" (about `heldout_fraction` of base emoji, with their variants) or "all". */
  split: z.enum(["train", "heldout", "all"]).default("train"),
  /** Image side in pixels; 16, 20, 32 and 64 are cropped from a sheet without resampling. */
  size: z.number().int().min(4).max(64).default(32),
  /** Colour the transparent parts are composited on, "#rrggbb". */
  background: z.string().default("#ffffff"),
  /** Fraction of base emoji (grouped by caption) held out. */
  heldout_fraction: z.number().min(0).max(1).default(0.1),
  /** Include the skin-tone variants (always in their base emoji's split). */
  skin_tones: z.boolean().default(true),
  /** Whose art: any of noto, openmoji, fluent, each at most once; absent means [noto]. */
  artists: z.array(z.enum(ARTISTS)).min(1).refine((a) => new Set(a).size === a.length, "an artist is listed twice")
    .optional(),
  /**
   * Folder for the SVG artists' rendered pixels (relative to the project), or false for none; absent: `emoji/` in the
   * run's cache folder (`run.cache`), or the project's .cache/emoji outside a run.
   */
  cache: z.union([z.string(), z.literal(false)]).optional(),
});

/** Parameters of the `emoji` dataset, after defaults (`artists` and `cache` stay optional: old literals still fit). */
export type EmojiParams = z.output<typeof Params>;

/** One image of the set. */
export interface EmojiEntry {
  caption: string;
  /** Caption of its base emoji: the unit of the split. */
  group: string;
  variant: boolean;
  sheetX: number;
  sheetY: number;
  /** Code points, upper-case hex joined by "-", without U+FE0F: what other artists' images are matched by. */
  code: string;
  /** `code` of its base emoji. */
  base: string;
  /** The variant's `skin_variations` key ("1F3FB", "1F3FB-1F3FC"); "" for a base. */
  tone: string;
  /** emoji-datasource's short names (bases; none for variants). */
  shortNames: string[];
}

interface RawEmoji {
  name: string;
  unified: string;
  short_names?: string[];
  sheet_x: number;
  sheet_y: number;
  sort_order?: number;
  has_img_google?: boolean;
  skin_variations?: Record<string, { unified: string; sheet_x: number; sheet_y: number; has_img_google?: boolean }>;
}

/** The package folder (`…/emoji-datasource-google/`) as a file path ending in "/". */
export function emojiPackageDir(): string {
  let url: string;
  try {
    url = import.meta.resolve("emoji-datasource-google/emoji.json");
  } catch (e) {
    throw new Error(`emoji: npm package emoji-datasource-google@16.0.0 not found (${(e as Error).message})`);
  }
  if (!url.startsWith("file:")) throw new Error(`emoji: emoji-datasource-google resolved to ${url}, not a file`);
  return new URL(".", url).pathname;
}

/** Caption of a skin-tone variant: CLDR style, "name: tone" or, when the name already has a colon, "name, tone". */
export function variantCaption(base: string, key: string, where: string): string {
  const tones: string[] = [];
  for (const code of key.toUpperCase().split("-")) {
    const t = SKIN_TONES[code];
    if (!t) throw new Error(`${where}: unknown skin-tone code "${code}" in variation "${key}"`);
    if (!tones.includes(t)) tones.push(t);
  }
  return `${base}${base.includes(":") ? "," : ":"} ${tones.join(", ")}`;
}

/** Reads emoji.json: every image with a Google rendering, bases in the package's sort order, variants after each. */
export async function emojiEntries(dir = emojiPackageDir()): Promise<EmojiEntry[]> {
  const path = `${dir}emoji.json`;
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read the emoji metadata (${(e as Error).message})`);
  }
  if (!Array.isArray(raw)) throw new Error(`${path}: expected a JSON array of emoji`);
  const isCode = (u: unknown) => typeof u === "string" && /^[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*$/.test(u);
  const isCell = (x: unknown, y: unknown) =>
    Number.isInteger(x) && Number.isInteger(y) && (x as number) >= 0 && (x as number) < GRID &&
    (y as number) >= 0 && (y as number) < GRID;
  const bases = (raw as RawEmoji[]).map((e, i) => {
    if (typeof e?.name !== "string" || !e.name || !isCell(e.sheet_x, e.sheet_y) || !isCode(e.unified)) {
      throw new Error(
        `${path}: entry ${i} lacks a name, a "unified" code or a sheet cell within the ${GRID}x${GRID} grid`,
      );
    }
    return { e, i };
  }).filter(({ e }) => e.has_img_google !== false);
  bases.sort((a, b) => (a.e.sort_order ?? a.i) - (b.e.sort_order ?? b.i) || a.i - b.i);
  const out: EmojiEntry[] = [];
  for (const { e, i } of bases) {
    const group = e.name.toLowerCase(), base = codeKey(e.unified);
    const shortNames = (e.short_names ?? []).filter((n) => typeof n === "string");
    const at = (cell: { sheet_x: number; sheet_y: number }) => ({
      group,
      sheetX: cell.sheet_x,
      sheetY: cell.sheet_y,
      base,
    });
    out.push({ caption: group, variant: false, ...at(e), code: base, tone: "", shortNames });
    for (const key of Object.keys(e.skin_variations ?? {}).sort()) {
      const v = e.skin_variations![key];
      if (v.has_img_google === false) continue;
      if (!isCell(v.sheet_x, v.sheet_y) || !isCode(v.unified)) {
        throw new Error(`${path}: entry ${i} variation ${key} lacks a sheet cell or a "unified" code`);
      }
      const caption = variantCaption(group, key, `${path}: entry ${i}`);
      const [code, tone] = [codeKey(v.unified), key.toUpperCase()];
      out.push({ caption, variant: true, ...at(v), code, tone, shortNames: [] });
    }
  }
  return out;
}

/**
 * The held-out groups: distinct `groups` ranked by a keyed Philox hash of the name (ties by name), the first
 * round(fraction · count) of them. Depends on the names alone, not on their order or on any run seed.
 */
export function heldoutGroups(groups: Iterable<string>, fraction: number): Set<string> {
  const root = new Rng(SPLIT_KEY);
  const ranked = [...new Set(groups)].map((g) => {
    const [hi, lo] = root.fold(g).uint32(2);
    return { g, h: hi * 2 ** 32 + lo };
  }).sort((a, b) => a.h - b.h || (a.g < b.g ? -1 : a.g > b.g ? 1 : 0));
  return new Set(ranked.slice(0, Math.round(fraction * ranked.length)).map((r) => r.g));
}

// Each artist's images per (artist, size, background, cache folder), made once per process: the splits share them.
const made = new Map<string, Promise<ArtistImages>>();
function once(key: string, make: () => Promise<ArtistImages>): Promise<ArtistImages> {
  let job = made.get(key);
  if (!job) {
    job = make();
    made.set(key, job);
    job.catch(() => made.delete(key));
  }
  return job;
}

let entriesJob: Promise<EmojiEntry[]> | null = null;
function entriesOnce(): Promise<EmojiEntry[]> {
  entriesJob ??= emojiEntries();
  entriesJob.catch(() => entriesJob = null);
  return entriesJob;
}

/** Noto's images of every entry, from the sprite sheet of `size` or the next larger one. */
async function renderNoto(entries: EmojiEntry[], size: number, bg: [number, number, number]): Promise<ArtistImages> {
  const dir = emojiPackageDir();
  const sheetSize = SHEETS.find((s) => s >= size) ?? 64;
  const path = `${dir}img/google/sheets-clean/${sheetSize}.png`;
  let sheet: Rgba;
  try {
    sheet = toRgba(decode(await Deno.readFile(path)));
  } catch (e) {
    throw new Error(`${path}: cannot read the emoji sheet (${(e as Error).message})`);
  }
  const cell = sheetSize + 2;
  if (sheet.width !== GRID * cell || sheet.height !== GRID * cell) {
    throw new Error(`${path}: sheet is ${sheet.width}x${sheet.height}, expected ${GRID * cell}x${GRID * cell}`);
  }
  const per = 3 * size * size, pixels = new Uint8Array(entries.length * per);
  entries.forEach((e, i) => {
    const img = composite(sheet, bg, e.sheetX * cell + 1, e.sheetY * cell + 1, sheetSize, sheetSize);
    writeU8(resize(img, size, size), pixels, i * per);
  });
  return { entry: Int32Array.from(entries, (_, i) => i), pixels, cached: false };
}

const isNotoOnly = (artists: readonly Artist[] | undefined) =>
  !artists || (artists.length === 1 && artists[0] === "noto");

/** The emoji set: a captioned dataset that also says whose art and which code points each image is. */
export interface EmojiDataset extends CaptionedDataset {
  /** The artists, as listed in the parameters. */
  artists: Artist[];
  /** Index into `artists` of image `i`'s artist. */
  artistOf(i: number): number;
  /** Code points of image `i` (upper-case hex joined by "-", without U+FE0F). */
  codeOf(i: number): string;
}

/** Loads the emoji set for `p` (the seed is unused: the split is fixed). */
export async function loadEmoji(p: EmojiParams, env?: DatasetEnv): Promise<EmojiDataset> {
  const artists: Artist[] = [...(p.artists ?? ["noto"])];
  const bg = parseColor(p.background, "emoji: params.background");
  const cacheDir = p.cache === false
    ? null
    : p.cache === undefined
    ? env ? join(env.cache, "emoji") : join(PROJECT_ROOT, ".cache/emoji")
    : isAbsolute(p.cache)
    ? p.cache
    : join(PROJECT_ROOT, p.cache);
  const entries = await entriesOnce();
  const sets = await Promise.all(
    artists.map((a) =>
      a === "noto"
        ? once(`noto/${p.size}/${bg}`, () => renderNoto(entries, p.size, bg))
        : once(`${a}/${p.size}/${bg}/${cacheDir}`, () => artistImages(a, entries, p.size, bg, cacheDir))
    ),
  );
  // Where each entry's image is in each artist's set (-1: that artist lacks it).
  const slot = sets.map((s) => {
    const at = new Int32Array(entries.length).fill(-1);
    s.entry.forEach((e, k) => at[e] = k);
    return at;
  });
  // The split is Noto's groups whatever the artists: adding an artist never moves a caption.
  const held = heldoutGroups(entries.map((e) => e.group), p.heldout_fraction);
  const keep: { entry: number; artist: number; at: number }[] = [];
  entries.forEach((e, i) => {
    if (!p.skin_tones && e.variant) return;
    if (p.split !== "all" && (p.split === "heldout") !== held.has(e.group)) return;
    slot.forEach((at, a) => at[i] >= 0 && keep.push({ entry: i, artist: a, at: at[i] }));
  });
  if (keep.length === 0) {
    throw new Error(`emoji: split "${p.split}" is empty with heldout_fraction ${p.heldout_fraction}`);
  }
  const per = 3 * p.size * p.size, sub = new Uint8Array(keep.length * per);
  keep.forEach((k, j) => sub.set(sets[k.artist].pixels.subarray(k.at * per, (k.at + 1) * per), j * per));
  const { captions, ids } = captionIndex(keep.map((k) => entries[k.entry].caption));
  const ds = imageDataset(sub, { channels: 3, height: p.size, width: p.size }, ids, captions);
  const artistIds = Int32Array.from(keep, (k) => k.artist);
  const withArtist = !isNotoOnly(p.artists);
  return {
    ...ds,
    batch: (indices) => {
      const b = ds.batch(indices);
      return withArtist ? { ...b, artist: Int32Array.from(indices, (i) => artistIds[i]) } : b;
    },
    artists,
    artistOf: (i) => artistIds[i],
    codeOf: (i) => entries[keep[i].entry].code,
  };
}

/** The emoji dataset kind. */
export const emoji: DatasetDef<EmojiParams> = {
  kind: "emoji",
  doc: "emoji by Noto (default), OpenMoji and Fluent, captioned by Noto's names; fixed ~10% held-out split by caption",
  params: Params,
  fields: (p) => {
    const f: Record<string, PortSpec> = {
      image: { dtype: "f32", shape: [3, p.size, p.size] },
      caption_id: { dtype: "i32", shape: [] },
    };
    if (!isNotoOnly(p.artists)) f.artist = { dtype: "i32", shape: [] };
    return f;
  },
  load: (p, _seed, env) => loadEmoji(p, env),
};
