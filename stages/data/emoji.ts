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
 * @module
 */
import { decode } from "fast-png";
import { z } from "zod";
import { Rng } from "../../engine/rng.ts";
import type { DatasetDef } from "../../pipeline/stage.ts";
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
});

/** Parameters of the `emoji` dataset, after defaults. */
export type EmojiParams = z.output<typeof Params>;

/** One image of the set. */
export interface EmojiEntry {
  caption: string;
  /** Caption of its base emoji: the unit of the split. */
  group: string;
  variant: boolean;
  sheetX: number;
  sheetY: number;
}

interface RawEmoji {
  name: string;
  sheet_x: number;
  sheet_y: number;
  sort_order?: number;
  has_img_google?: boolean;
  skin_variations?: Record<string, { sheet_x: number; sheet_y: number; has_img_google?: boolean }>;
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
  const isCell = (x: unknown, y: unknown) =>
    Number.isInteger(x) && Number.isInteger(y) && (x as number) >= 0 && (x as number) < GRID &&
    (y as number) >= 0 && (y as number) < GRID;
  const bases = (raw as RawEmoji[]).map((e, i) => {
    if (typeof e?.name !== "string" || !e.name || !isCell(e.sheet_x, e.sheet_y)) {
      throw new Error(`${path}: entry ${i} lacks a name or a sheet cell within the ${GRID}x${GRID} grid`);
    }
    return { e, i };
  }).filter(({ e }) => e.has_img_google !== false);
  bases.sort((a, b) => (a.e.sort_order ?? a.i) - (b.e.sort_order ?? b.i) || a.i - b.i);
  const out: EmojiEntry[] = [];
  for (const { e, i } of bases) {
    const group = e.name.toLowerCase();
    out.push({ caption: group, group, variant: false, sheetX: e.sheet_x, sheetY: e.sheet_y });
    for (const key of Object.keys(e.skin_variations ?? {}).sort()) {
      const v = e.skin_variations![key];
      if (v.has_img_google === false) continue;
      if (!isCell(v.sheet_x, v.sheet_y)) throw new Error(`${path}: entry ${i} variation ${key} lacks a sheet cell`);
      const caption = variantCaption(group, key, `${path}: entry ${i}`);
      out.push({ caption, group, variant: true, sheetX: v.sheet_x, sheetY: v.sheet_y });
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

interface Rendered {
  entries: EmojiEntry[];
  /** All entries' images, 3×size×size bytes each. */
  pixels: Uint8Array;
}

// The whole set per (size, background), decoded once per process: train and held-out splits share it.
const rendered = new Map<string, Promise<Rendered>>();

async function render(size: number, bg: [number, number, number]): Promise<Rendered> {
  const dir = emojiPackageDir();
  const entries = await emojiEntries(dir);
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
  return { entries, pixels };
}

/** Loads the emoji set for `p` (the seed is unused: the split is fixed). */
export async function loadEmoji(p: EmojiParams): Promise<CaptionedDataset> {
  const bg = parseColor(p.background, "emoji: params.background");
  const key = `${p.size}/${bg.join(",")}`;
  let job = rendered.get(key);
  if (!job) {
    job = render(p.size, bg);
    rendered.set(key, job);
    job.catch(() => rendered.delete(key));
  }
  const { entries, pixels } = await job;
  const held = heldoutGroups(entries.map((e) => e.group), p.heldout_fraction);
  const keep: number[] = [];
  entries.forEach((e, i) => {
    if (!p.skin_tones && e.variant) return;
    if (p.split === "all" || (p.split === "heldout") === held.has(e.group)) keep.push(i);
  });
  if (keep.length === 0) {
    throw new Error(`emoji: split "${p.split}" is empty with heldout_fraction ${p.heldout_fraction}`);
  }
  const per = 3 * p.size * p.size, sub = new Uint8Array(keep.length * per);
  keep.forEach((i, k) => sub.set(pixels.subarray(i * per, (i + 1) * per), k * per));
  const { captions, ids } = captionIndex(keep.map((i) => entries[i].caption));
  return imageDataset(sub, { channels: 3, height: p.size, width: p.size }, ids, captions);
}

/** The emoji dataset kind. */
export const emoji: DatasetDef<EmojiParams> = {
  kind: "emoji",
  doc: "Noto emoji (emoji-datasource-google 16.0.0) with skin tones, captioned by name; fixed ~10% held-out split",
  params: Params,
  fields: (p) => ({ image: { dtype: "f32", shape: [3, p.size, p.size] }, caption_id: { dtype: "i32", shape: [] } }),
  load: (p) => loadEmoji(p),
};
