/**
 * The `emoji` dataset's other artists: their images of the Noto emoji, matched by code point, rasterised from SVG.
 *
 * - OpenMoji (npm `openmoji@17.0.0`, CC BY-SA 4.0): `color/svg/<HEXCODE>.svg`, one per entry of `data/openmoji.json`;
 *   an entry matches the Noto image whose code point sequence is the same once U+FE0F is removed from both.
 * - Microsoft Fluent (npm `fluentui-emoji@1.3.0`, MIT, art © Microsoft): `icons/flat/<slug>.svg`, named by a slug of
 *   the CLDR name and nothing else; skin-toned emoji come as `<slug>-{default,light,medium-light,medium,medium-dark,
 *   dark}`. A slug's code point comes from the names: CLDR names (OpenMoji's `annotation`) first, emoji-datasource's
 *   short names where no CLDR name has that slug (Fluent keeps some older CLDR names that survive there, e.g.
 *   `man-wrestling`). Unicode character names are not used: they reuse CLDR phrases for other emoji ("WOMAN WITH
 *   BUNNY EARS" is U+1F46F, whose CLDR name is "people with bunny ears", while Fluent's `woman-with-bunny-ears` is the
 *   women's sequence). A file matches when exactly one Noto image fits it (the whole slug, or a tone suffix on a
 *   base's slug); no fit, several, or a Noto image claimed by two files are skipped, never guessed.
 *
 * @module
 */
import { packageDir, packageId, rasteriseAll, type RasterKey } from "./svg_raster.ts";

/** The artists of the `emoji` set; Noto's images come from the sprite sheets, the others from SVG here. */
export const ARTISTS = ["noto", "openmoji", "fluent"] as const;
export type Artist = typeof ARTISTS[number];

/** What matching needs of a Noto image (the `emoji` entries carry these). */
export interface CodedEntry {
  /** Code points, upper-case hex joined by "-", without U+FE0F. */
  code: string;
  /** `code` of its base emoji (itself for a base). */
  base: string;
  /** A variant's `skin_variations` key in emoji-datasource ("1F3FB", "1F3FB-1F3FC"); "" for a base. */
  tone: string;
  /** emoji-datasource's short names (bases only). */
  shortNames: readonly string[];
}

/** A code point sequence in hex ("0023-FE0F-20E3", any case) as a `CodedEntry.code` ("0023-20E3"). */
export function codeKey(hex: string): string {
  return hex.toUpperCase().split("-").filter((c) => c !== "FE0F").join("-");
}

/** A name as Fluent's file slugs write it: lower case, no accents or apostrophes, other non-alphanumeric runs "-". */
export function slugOf(name: string): string {
  return name.normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase().replace(/['’‘ʼ]/g, "")
    .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
}

const FLUENT_TONES: Readonly<Record<string, string>> = {
  default: "",
  light: "1F3FB",
  "medium-light": "1F3FC",
  medium: "1F3FD",
  "medium-dark": "1F3FE",
  dark: "1F3FF",
};

/** OpenMoji's package folder. */
export const openmojiDir = (): string => packageDir("openmoji/", "data/openmoji.json", "emoji: artist openmoji");
/** The Fluent package's folder. */
export const fluentDir = (): string => packageDir("fluentui-emoji/", "package.json", "emoji: artist fluent");

/** `data/openmoji.json`: hexcode and CLDR annotation of every OpenMoji image. */
export function readOpenmoji(dir = openmojiDir()): { hexcode: string; annotation: string }[] {
  const path = `${dir}data/openmoji.json`;
  let raw: unknown;
  try {
    raw = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    throw new Error(`${path}: cannot read the OpenMoji metadata (${(e as Error).message})`);
  }
  if (!Array.isArray(raw)) throw new Error(`${path}: expected a JSON array of emoji`);
  return raw.map((e, i) => {
    if (typeof e?.hexcode !== "string" || !/^[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*$/.test(e.hexcode)) {
      throw new Error(`${path}: entry ${i} lacks a "hexcode" of hex code points joined by "-"`);
    }
    if (typeof e.annotation !== "string") throw new Error(`${path}: entry ${i} lacks an "annotation" string`);
    return { hexcode: e.hexcode, annotation: e.annotation };
  });
}

/** Index of each code in `entries`; a code two entries share maps to -1 (matches on it are ambiguous). */
function byCode(entries: readonly CodedEntry[]): Map<string, number> {
  const m = new Map<string, number>();
  entries.forEach((e, i) => m.set(e.code, m.has(e.code) ? -1 : i));
  return m;
}

/** One artist's images of the Noto entries: entry index and file (relative to the package) per image, by entry. */
export interface ArtistMatch {
  entry: number[];
  files: string[];
}

const sortByEntry = (pairs: [number, string][]): ArtistMatch => {
  pairs.sort((a, b) => a[0] - b[0]);
  return { entry: pairs.map((p) => p[0]), files: pairs.map((p) => p[1]) };
};

/** OpenMoji's images of `entries`: those whose hexcode is an entry's code up to U+FE0F. */
export function matchOpenmoji(entries: readonly CodedEntry[], list = readOpenmoji()): ArtistMatch {
  const codes = byCode(entries), seen = new Map<number, string | null>();
  for (const { hexcode } of list) {
    const i = codes.get(codeKey(hexcode)) ?? -1;
    if (i >= 0) seen.set(i, seen.has(i) ? null : `color/svg/${hexcode}.svg`);
  }
  return sortByEntry([...seen].filter((p): p is [number, string] => p[1] !== null));
}

/** The slugs of `icons/flat/`, sorted. */
export function fluentSlugs(dir = fluentDir()): string[] {
  const path = `${dir}icons/flat`;
  try {
    return [...Deno.readDirSync(path)].filter((e) => e.isFile && e.name.endsWith(".svg"))
      .map((e) => e.name.slice(0, -4)).sort();
  } catch (e) {
    throw new Error(`${path}: cannot list the Fluent emoji (${(e as Error).message})`);
  }
}

/** Fluent's matches and what was left out. */
export interface FluentMatch extends ArtistMatch {
  /** Slugs no Noto image fits. */
  unmatched: string[];
  /** Slugs several Noto images fit, or that share their one image with another slug. */
  ambiguous: string[];
}

/** Matches Fluent's slugs to `entries` by name (see the module comment); `cldr` is OpenMoji's metadata. */
export function matchFluent(
  entries: readonly CodedEntry[],
  slugs = fluentSlugs(),
  cldr = readOpenmoji(),
): FluentMatch {
  const codes = byCode(entries), variants = new Map<string, number>();
  entries.forEach((e, i) => {
    if (e.tone) variants.set(`${e.base} ${e.tone}`, variants.has(`${e.base} ${e.tone}`) ? -1 : i);
  });
  const index = (names: [string, number][]) => {
    const m = new Map<string, Set<number>>();
    for (const [name, i] of names) {
      if (i < 0) continue;
      const s = slugOf(name);
      if (s) m.set(s, (m.get(s) ?? new Set()).add(i));
    }
    return m;
  };
  const byCldr = index(cldr.map((o) => [o.annotation, codes.get(codeKey(o.hexcode)) ?? -1]));
  const byShort = index(entries.flatMap((e, i) => e.shortNames.map((n): [string, number] => [n, i])));
  const lookup = (s: string) => byCldr.get(s) ?? byShort.get(s) ?? new Set<number>();
  const found = new Map<number, string[]>(), unmatched: string[] = [], ambiguous: string[] = [];
  for (const slug of slugs) {
    const fits = new Set(lookup(slug));
    for (const [suffix, tone] of Object.entries(FLUENT_TONES)) {
      if (!slug.endsWith(`-${suffix}`)) continue;
      for (const b of lookup(slug.slice(0, -suffix.length - 1))) {
        const e = entries[b];
        const i = tone ? variants.get(`${e.base} ${tone}`) ?? -1 : e.tone ? -1 : b;
        if (i >= 0) fits.add(i);
      }
    }
    if (fits.size === 0) unmatched.push(slug);
    else if (fits.size > 1) ambiguous.push(slug);
    else found.set([...fits][0], [...found.get([...fits][0]) ?? [], slug]);
  }
  const pairs: [number, string][] = [];
  for (const [i, s] of found) {
    if (s.length === 1) pairs.push([i, `icons/flat/${s[0]}.svg`]);
    else ambiguous.push(...s);
  }
  return { ...sortByEntry(pairs), unmatched, ambiguous: ambiguous.sort() };
}

/** Render size for an image side: the smallest multiple of `size` of at least 128 px (an integer box filter). */
export const renderSize = (size: number): number => size * Math.ceil(128 / size);

/** One artist's images of the Noto entries: entry index per image and RGB bytes, 3×size×size each. */
export interface ArtistImages {
  entry: Int32Array;
  pixels: Uint8Array;
  /** Whether the pixels came from the disk cache. */
  cached: boolean;
}

/** An SVG artist's images of `entries` at `size` on `bg`, through the cache folder `cacheDir` (null: none). */
export async function artistImages(
  artist: Exclude<Artist, "noto">,
  entries: readonly CodedEntry[],
  size: number,
  bg: readonly number[],
  cacheDir: string | null,
): Promise<ArtistImages> {
  const cldr = readOpenmoji();
  const dir = artist === "openmoji" ? openmojiDir() : fluentDir();
  const match = artist === "openmoji" ? matchOpenmoji(entries, cldr) : matchFluent(entries, fluentSlugs(dir), cldr);
  const key: RasterKey = {
    artist,
    package: packageId(dir),
    size,
    render: renderSize(size),
    background: [...bg],
    files: match.files,
  };
  const { pixels, cached } = await rasteriseAll(dir, key, cacheDir);
  return { entry: Int32Array.from(match.entry), pixels, cached };
}
