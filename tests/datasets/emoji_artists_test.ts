/**
 * The emoji set's other artists: counts against each package's own files, code-point matching (known emoji, and
 * Fluent's name matching against a reverse derivation from the names), the split across artists, pixels against
 * resvg's own PNG output, the Noto-only default against hashes taken before artists existed, and the cache.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Resvg } from "@resvg/resvg-wasm";
import { decode } from "fast-png";
import "../../stages/mod.ts";
import { datasetKinds } from "../../pipeline/stage.ts";
import { dataLoad } from "../../stages/data.ts";
import { emoji, type EmojiDataset, emojiEntries, type EmojiParams, loadEmoji } from "../../datasets/emoji.ts";
import { artistImages, fluentSlugs, matchFluent } from "../../datasets/emoji_artists.ts";
import { composite, resize } from "../../datasets/image_util.ts";
import { initResvg, rasterise } from "../../datasets/svg_raster.ts";

const dirOf = (spec: string, file: string) => {
  const p = new URL(import.meta.resolve(`${spec}${file}`)).pathname;
  return p.slice(0, p.length - file.length);
};
const NOTO = dirOf("emoji-datasource-google/", "emoji.json");
const OPENMOJI = dirOf("openmoji/", "data/openmoji.json");
const FLUENT = dirOf("fluentui-emoji/", "package.json");

interface Meta {
  name: string;
  unified: string;
  short_names: string[];
  has_img_google: boolean;
  skin_variations?: Record<string, { unified: string; has_img_google: boolean }>;
}
const META: Meta[] = JSON.parse(Deno.readTextFileSync(`${NOTO}emoji.json`));
const OM: { hexcode: string; annotation: string; skintone: number | string }[] = JSON.parse(
  Deno.readTextFileSync(`${OPENMOJI}data/openmoji.json`),
);
// Written here independently of emoji_artists.ts: code points without U+FE0F; Fluent's slugs.
const strip = (h: string) => h.toUpperCase().split("-").filter((c) => c !== "FE0F").join("-");
const slug = (s: string) =>
  s.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase().replace(/[’']/g, "").replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "");
/** Every Noto image's code, with its base's code and its skin-variation key ("" for a base). */
const NOTO_IMAGES = META.filter((e) => e.has_img_google).flatMap((e) => [
  { code: strip(e.unified), base: strip(e.unified), tone: "", meta: e },
  ...Object.entries(e.skin_variations ?? {}).filter(([, v]) => v.has_img_google)
    .map(([k, v]) => ({ code: strip(v.unified), base: strip(e.unified), tone: k, meta: e })),
]);
const NOTO_CODES = new Set(NOTO_IMAGES.map((e) => e.code));
const BASE_CODES = new Set(NOTO_IMAGES.filter((e) => !e.tone).map((e) => e.code));

const ALL3 = ["noto", "openmoji", "fluent"] as const;
const params = (o: Partial<EmojiParams> = {}): EmojiParams => ({
  split: "all",
  size: 32,
  background: "#ffffff",
  heldout_fraction: 0.1,
  skin_tones: true,
  ...o,
});
const perArtist = (ds: EmojiDataset) => {
  const n = ds.artists.map(() => 0);
  for (let i = 0; i < ds.size; i++) n[ds.artistOf(i)]++;
  return Object.fromEntries(ds.artists.map((a, k) => [a, n[k]]));
};
const captionsOf = (ds: EmojiDataset, artist?: number) =>
  Array.from({ length: ds.size }, (_, i) => i).filter((i) => artist === undefined || ds.artistOf(i) === artist)
    .map((i) => ds.captionOf(i));

Deno.test("emoji artists: counts per artist against each package's files", async () => {
  // OpenMoji: its metadata's entries whose code points (U+FE0F aside) are a Noto image, all of which have an SVG.
  const om = OM.filter((o) => NOTO_CODES.has(strip(o.hexcode)));
  for (const o of om) assert.ok((await Deno.stat(`${OPENMOJI}color/svg/${o.hexcode}.svg`)).isFile);
  const omBases = om.filter((o) => BASE_CODES.has(strip(o.hexcode))).length;
  const [all, bases] = await Promise.all([
    loadEmoji(params({ artists: [...ALL3] })),
    loadEmoji(params({ artists: [...ALL3], skin_tones: false })),
  ]);
  const n = perArtist(all), nb = perArtist(bases);
  assert.equal(n.noto, NOTO_IMAGES.length);
  assert.equal(n.openmoji, om.length);
  assert.equal(nb.openmoji, omBases);
  // Fluent: one image per matched file of icons/flat, never more than there are files or Noto images.
  const files = [...Deno.readDirSync(`${FLUENT}icons/flat`)].filter((f) => f.name.endsWith(".svg")).length;
  const m = matchFluent(await emojiEntries());
  assert.equal(m.files.length + m.unmatched.length + m.ambiguous.length, files);
  assert.equal(n.fluent, m.files.length);
  assert.ok(n.fluent > 0.95 * files, `fluent matched ${n.fluent} of ${files} files`);
  assert.equal(all.size, n.noto + n.openmoji + n.fluent);
  console.log(
    `per artist: ${JSON.stringify(n)} (bases ${JSON.stringify(nb)}); fluent: ${m.files.length}/${files}` +
      ` files matched, ${m.unmatched.length} unmatched, ${m.ambiguous.length} ambiguous`,
  );
});

Deno.test("emoji artists: Fluent's slugs match what the CLDR and short names say, and nothing is guessed", async () => {
  const entries = await emojiEntries();
  const m = matchFluent(entries);
  const got = new Map(m.files.map((f, k) => [f.slice("icons/flat/".length, -4), entries[m.entry[k]].code]));
  // Known files, the right code points: a clock, a renamed face, a variant, and a name ending in "-light".
  const known: Record<string, string> = {
    "red-apple": "1F34E",
    "one-oclock": "1F550",
    "face-with-symbols-on-mouth": "1F92C",
    "woman-surfing-dark": "1F3C4-1F3FF-200D-2640",
    "waving-hand-medium-light": "1F44B-1F3FC",
    "waving-hand-default": "1F44B",
    "police-car-light": "1F6A8",
    "police-car": "1F693",
    "a-button-blood-type": "1F170",
    "cat": "1F408",
    "cat-face": "1F431",
    "man-wrestling": "1F93C-200D-2642",
  };
  for (const [s, code] of Object.entries(known)) assert.equal(got.get(s), code, s);
  // Names neither CLDR nor a short name gives are skipped, and so is a Unicode-name look-alike (U+1F46F's Unicode
  // name is "WOMAN WITH BUNNY EARS"; Fluent's file is the women's sequence).
  for (const s of ["keycap-hashtag", "blackbird", "person-genie", "woman-with-bunny-ears"]) {
    assert.ok(m.unmatched.includes(s) && !got.has(s), s);
  }
  // Reverse, from the names to files: each Noto image's expected slugs (CLDR name from OpenMoji, else short names;
  // single-tone variants as "<base>-<tone>", toned bases also as "<base>-default"), kept where exactly one such file
  // exists and no other image expects it. The two derivations must agree image for image.
  const fileSet = new Set(fluentSlugs());
  const cldr = new Map(OM.map((o) => [strip(o.hexcode), o.annotation]));
  const names = (code: string, meta: Meta) => {
    const c = cldr.get(code);
    return c ? [slug(c)] : meta.short_names.map(slug);
  };
  const TONE: Record<string, string> = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
  };
  const claims = new Map<string, string[]>();
  for (const img of NOTO_IMAGES) {
    const toned = Object.keys(img.meta.skin_variations ?? {}).length > 0;
    const base = names(img.base, img.meta);
    const want = !img.tone
      ? [...base, ...(toned ? base.map((b) => `${b}-default`) : [])]
      : TONE[img.tone]
      ? base.map((b) => `${b}-${TONE[img.tone]}`)
      : [];
    const hits = [...new Set(want)].filter((s) => fileSet.has(s));
    if (hits.length === 1) claims.set(hits[0], [...claims.get(hits[0]) ?? [], img.code]);
  }
  const reverse = new Map([...claims].filter(([, c]) => c.length === 1).map(([s, c]) => [s, c[0]]));
  const diff = [...new Set([...got.keys(), ...reverse.keys()])].filter((s) => got.get(s) !== reverse.get(s));
  // They differ only where a short name stands in for a CLDR name that Fluent does not use (e.g. "hugging-face",
  // CLDR "smiling face with open hands"): the forward match is that short name's emoji, the reverse has none.
  for (const s of diff) {
    const img = NOTO_IMAGES.find((e) => e.code === got.get(s));
    assert.ok(
      img && !reverse.has(s) && img.meta.short_names.map(slug).includes(s),
      `${s}: ${got.get(s)} vs ${reverse.get(s)}`,
    );
  }
  assert.ok(diff.length < 10, `${diff.length} short-name matches`);
  console.log(
    `fluent: forward and reverse matching differ on ${diff.length} slugs, all short names: ${diff.join(", ")}`,
  );
});

Deno.test("emoji artists: red apple is 1F34E in all three, Noto's caption, reddish, drawn differently", async () => {
  const ds = await loadEmoji(params({ artists: [...ALL3], skin_tones: false }));
  const idx = Array.from({ length: ds.size }, (_, i) => i).filter((i) => ds.captionOf(i) === "red apple");
  assert.deepEqual(idx.map((i) => ds.artistOf(i)), [0, 1, 2]);
  assert.deepEqual(idx.map((i) => ds.codeOf(i)), ["1F34E", "1F34E", "1F34E"]);
  const b = ds.batch(idx), img = b.image as Float32Array, per = 3 * 32 * 32;
  assert.deepEqual(Array.from(b.artist as Int32Array), [0, 1, 2]);
  assert.equal(new Set(b.caption_id).size, 1);
  const px = (k: number, c: number, p: number) => (img[k * per + c * 1024 + p] + 1) * 127.5;
  for (let k = 0; k < 3; k++) {
    // Mean colour of the pixels that are not the white background.
    const sum = [0, 0, 0];
    let n = 0;
    for (let p = 0; p < 1024; p++) {
      if (px(k, 0, p) + px(k, 1, p) + px(k, 2, p) > 3 * 245) continue;
      for (let c = 0; c < 3; c++) sum[c] += px(k, c, p);
      n++;
    }
    const [r, g, bl] = sum.map((s) => s / n);
    assert.ok(
      n > 100 && r > g + 60 && r > bl + 60,
      `${ds.artists[k]}: mean ${[r, g, bl].map(Math.round)} over ${n} px`,
    );
  }
  for (const k of [1, 2]) {
    let d = 0;
    for (let j = 0; j < per; j++) d += Math.abs(img[k * per + j] - img[j]) * 127.5;
    assert.ok(d / per > 5, `${ds.artists[k]} vs noto: mean |difference| ${d / per}`);
  }
});

Deno.test("emoji artists: pixels are resvg's own PNG output, composited and box-filtered", async () => {
  const bg = [0x20, 0x40, 0x60];
  const ds = await loadEmoji(params({ artists: ["openmoji", "fluent"], background: "#204060", skin_tones: false }));
  await initResvg();
  for (const [k, file] of [[0, `${OPENMOJI}color/svg/1F34E.svg`], [1, `${FLUENT}icons/flat/red-apple.svg`]] as const) {
    const i = Array.from({ length: ds.size }, (_, j) => j).find((j) =>
      ds.captionOf(j) === "red apple" && ds.artistOf(j) === k
    )!;
    const got = ds.batch([i]).image as Float32Array;
    // Independent path: resvg's PNG (straight alpha) at 128 px, decoded, composited by `composite`, 4×4 block means.
    const png = decode(new Resvg(await Deno.readFile(file), { fitTo: { mode: "width", value: 128 } }).render().asPng());
    assert.equal(png.channels, 4);
    const ref = resize(composite({ width: 128, height: 128, data: png.data as Uint8Array }, bg), 32, 32);
    let worst = 0;
    for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs((got[j] + 1) * 127.5 - ref.data[j]));
    assert.ok(worst <= 1.5, `${ds.artists[k]}: max error ${worst}`);
  }
  // A non-square SVG is centred on the square, its larger side fitted: an 8:3 red box at 8 px covers rows 2..4 of 8
  // (so output rows 1 and half of 2), a 1:2 box columns 2..5 (output columns 1 and 2).
  const dir = await Deno.makeTempDir({ prefix: "svg_raster_test_" });
  try {
    const box = (w: number, h: number) =>
      `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${w} ${h}">` +
      `<rect width="${w}" height="${h}" fill="#f00"/></svg>`;
    await Deno.writeTextFile(`${dir}/wide.svg`, box(8, 3));
    await Deno.writeTextFile(`${dir}/tall.svg`, box(1, 2));
    const [wide, tall] = [
      await rasterise(`${dir}/wide.svg`, 4, 8, [0, 0, 255]),
      await rasterise(`${dir}/tall.svg`, 4, 8, [0, 0, 255]),
    ];
    const at = (img: typeof wide, y: number, x: number) =>
      [0, 1, 2].map((c) => Math.round(img.data[c * 16 + y * 4 + x]));
    const [bgc, red, half] = [[0, 0, 255], [255, 0, 0], [128, 0, 128]];
    assert.deepEqual([0, 1, 2, 3].map((y) => at(wide, y, 0)), [bgc, red, half, bgc]);
    assert.deepEqual([0, 1, 2, 3].map((x) => at(tall, 3, x)), [bgc, red, red, bgc]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("emoji artists: the split is Noto's, across all artists", async () => {
  const [train, held, notoHeld] = await Promise.all([
    loadEmoji(params({ split: "train", artists: [...ALL3] })),
    loadEmoji(params({ split: "heldout", artists: [...ALL3] })),
    loadEmoji(params({ split: "heldout" })),
  ]);
  const trainCaps = new Set(captionsOf(train)), heldCaps = new Set(captionsOf(held));
  for (const c of heldCaps) assert.ok(!trainCaps.has(c), `"${c}" is in both splits`);
  // The same captions are held out as with Noto alone, and each artist's held-out captions are among them.
  assert.deepEqual(heldCaps, new Set(captionsOf(notoHeld)));
  for (const a of [1, 2]) for (const c of captionsOf(held, a)) assert.ok(heldCaps.has(c));
  const all = perArtist(await loadEmoji(params({ artists: [...ALL3] })));
  const [t, h] = [perArtist(train), perArtist(held)];
  for (const a of ALL3) assert.equal(t[a] + h[a], all[a], a);
  assert.ok(h.openmoji > 0 && h.fluent > 0);
  console.log(`train ${JSON.stringify(t)}, heldout ${JSON.stringify(h)}`);
});

// sha256 (first 16 hex) of the Noto-only set's f32 images, caption ids and captions, taken before artists existed.
const BEFORE: [Partial<EmojiParams>, number, string][] = [
  [{ split: "all" }, 3786, "e81a580c96bd4e45"],
  [{ split: "train" }, 3435, "1b3f0364dea33e5e"],
  [{ split: "heldout" }, 351, "0da93a9abb2d9a90"],
  [{ split: "train", size: 24, background: "#204060", skin_tones: false }, 1720, "2410f3b889142dff"],
];
const hashOf = (ds: EmojiDataset) => {
  const b = ds.batch(Array.from({ length: ds.size }, (_, i) => i));
  return createHash("sha256").update(new Uint8Array((b.image as Float32Array).buffer))
    .update(new Uint8Array((b.caption_id as Int32Array).buffer)).update(JSON.stringify(ds.captions)).digest("hex")
    .slice(0, 16);
};

Deno.test("emoji artists: the Noto-only default is as before; beside others, Noto's images are the same", async () => {
  for (const [o, n, h] of BEFORE) {
    const [byDefault, explicit] = [await loadEmoji(params(o)), await loadEmoji(params({ ...o, artists: ["noto"] }))];
    assert.equal(byDefault.size, n);
    assert.equal(hashOf(byDefault), h, JSON.stringify(o));
    assert.equal(hashOf(explicit), h);
    assert.deepEqual(Object.keys(byDefault.batch([0])), ["image", "caption_id"]);
  }
  const parsed = emoji.params.parse({});
  assert.deepEqual(Object.keys(emoji.fields(parsed)), ["image", "caption_id"]);
  // With the others, the Noto images are the same images with the same captions, and caption ids index `captions`.
  const [noto, mixed] = [await loadEmoji(params()), await loadEmoji(params({ artists: [...ALL3] }))];
  const notoIdx = Array.from({ length: mixed.size }, (_, i) => i).filter((i) => mixed.artistOf(i) === 0);
  assert.deepEqual(mixed.captions, noto.captions, "OpenMoji has every Noto emoji, so the caption list is Noto's");
  const [a, b] = [noto.batch(notoIdx.map((_, k) => k)), mixed.batch(notoIdx)];
  assert.deepEqual(a.image, b.image);
  assert.deepEqual(a.caption_id, b.caption_id);
  const any = mixed.batch([mixed.size - 1]);
  assert.equal(mixed.captions[any.caption_id[0]], mixed.captionOf(mixed.size - 1));
});

Deno.test("emoji artists: params, fields and the data stage", async () => {
  assert.match(emoji.params.safeParse({ artists: ["noto", "noto"] }).error!.message, /listed twice/);
  assert.ok(!emoji.params.safeParse({ artists: ["twemoji"] }).success);
  assert.ok(!emoji.params.safeParse({ artists: [] }).success);
  const p = datasetKinds().get("emoji")!.params.parse({ split: "all", artists: ["fluent", "noto"] });
  const datasets = { e: { name: "e", kind: "emoji", params: p } };
  const types = dataLoad.types({ params: { dataset: "e", batch: 4, shuffle: true }, inputs: {}, models: {}, datasets });
  assert.deepEqual(types.artist, { dtype: "i32", shape: [4] });
  const ds = await loadEmoji(p);
  assert.deepEqual(ds.artists, ["fluent", "noto"]);
  // Each emoji's images in the order listed: Fluent's (where it has one) before Noto's.
  const i = captionsOf(ds).indexOf("red apple");
  assert.deepEqual([ds.artistOf(i), ds.artistOf(i + 1)], [0, 1]);
  const b = ds.batch([i, i + 1]);
  assert.ok(b.artist instanceof Int32Array);
  assert.deepEqual(Array.from(b.artist), [0, 1]);
});

Deno.test("emoji artists: rendered pixels are cached and read back on the second load", async () => {
  const dir = await Deno.makeTempDir({ prefix: "emoji_cache_test_" });
  try {
    const entries = await emojiEntries(), bg = [255, 255, 255];
    let t0 = performance.now();
    const cold = await artistImages("fluent", entries, 16, bg, dir);
    const tCold = performance.now() - t0;
    t0 = performance.now();
    const warm = await artistImages("fluent", entries, 16, bg, dir);
    const tWarm = performance.now() - t0;
    assert.ok(!cold.cached && warm.cached);
    assert.deepEqual(warm.pixels, cold.pixels);
    assert.deepEqual(warm.entry, cold.entry);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(names.length, 1, `one file, no temporaries: ${names}`);
    console.log(`fluent 16 px: cold ${(tCold / 1000).toFixed(1)} s, warm ${(tWarm / 1000).toFixed(2)} s`);
    // What is read is the file: its pixel bytes changed are what comes back.
    const path = `${dir}/${names[0]}`, bytes = await Deno.readFile(path);
    const tail = bytes.length - cold.pixels.length;
    bytes.fill(7, tail);
    await Deno.writeFile(path, bytes);
    const forged = await artistImages("fluent", entries, 16, bg, dir);
    assert.ok(forged.cached && forged.pixels.every((v) => v === 7));
    // A file made under another key (here: its header edited) is not read; it is rendered and written again.
    bytes[tail - 3] ^= 1;
    await Deno.writeFile(path, bytes);
    const again = await artistImages("fluent", entries, 16, bg, dir);
    assert.ok(!again.cached);
    assert.deepEqual(again.pixels, cold.pixels);
    assert.ok((await artistImages("fluent", entries, 16, bg, dir)).cached);
    // Another background is another file.
    assert.ok(!(await artistImages("fluent", entries.slice(0, 40), 16, [0, 0, 0], dir)).cached);
    assert.equal([...Deno.readDirSync(dir)].length, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
