/**
 * Image datasets: emoji counts against the package metadata, the held-out split (no leaks, variants with their
 * base), pixel values against the sprite sheets, Fashion-MNIST against its raw files, image folders written here,
 * and the resampling filters against hand computations.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { decode, encode } from "fast-png";
import { datasetKinds } from "../../pipeline/stage.ts";
import "../../stages/mod.ts";
import { dataLoad } from "../../stages/data.ts";
import { type EmojiParams, heldoutGroups, loadEmoji } from "../../datasets/emoji.ts";
import { FASHION_MNIST_DIR, loadFashionMnist } from "../../datasets/fashion_mnist.ts";
import { loadImageFolder } from "../../datasets/image_folder.ts";
import { resampleWeights, resize, toRgba } from "../../datasets/image_util.ts";
import { Rng } from "../../engine/rng.ts";

const PKG = new URL(".", import.meta.resolve("emoji-datasource-google/emoji.json")).pathname;
interface Meta {
  name: string;
  sheet_x: number;
  sheet_y: number;
  has_img_google: boolean;
  skin_variations?: Record<string, { has_img_google: boolean }>;
}
const META: Meta[] = JSON.parse(Deno.readTextFileSync(`${PKG}emoji.json`));
const emojiParams = (o: Partial<EmojiParams> = {}): EmojiParams => ({
  split: "all",
  size: 32,
  background: "#ffffff",
  heldout_fraction: 0.1,
  skin_tones: true,
  ...o,
});
// A variant caption without its skin tones is its base's caption (written here independently of emoji.ts).
const baseOf = (c: string) =>
  c.replace(/[:,] (?:(?:light|medium-light|medium|medium-dark|dark) skin tone(?:, )?)+$/, "");
const captionsOf = (ds: { size: number; captionOf?(i: number): string }) =>
  Array.from({ length: ds.size }, (_, i) => ds.captionOf!(i));

Deno.test("emoji: counts match the package metadata", async () => {
  const bases = META.filter((e) => e.has_img_google).length;
  const variants = META.reduce(
    (n, e) => n + Object.values(e.skin_variations ?? {}).filter((v) => v.has_img_google).length,
    0,
  );
  // The field notes' counts for 16.0.0: 1,911 emoji and 3,786 images in all.
  assert.equal(bases, 1911);
  assert.equal(bases + variants, 3786);
  const all = await loadEmoji(emojiParams());
  const noTones = await loadEmoji(emojiParams({ skin_tones: false }));
  assert.equal(all.size, bases + variants);
  assert.equal(noTones.size, bases);
  assert.deepEqual(
    new Set(captionsOf(noTones)),
    new Set(META.map((e) => e.name.toLowerCase())),
    "base captions are the lower-cased names",
  );
  assert.ok(noTones.captions.includes("red apple"));
  const b = all.batch([0, all.size - 1]);
  assert.equal(b.image.length, 2 * 3 * 32 * 32);
  assert.ok(b.image instanceof Float32Array && b.caption_id instanceof Int32Array);
  assert.equal(all.captions[b.caption_id[1]], all.captionOf(all.size - 1));
  // Every variant caption names its base, and every distinct (base, tones) pair gets its own caption.
  for (const c of captionsOf(all)) assert.ok(noTones.captions.includes(baseOf(c)), `variant "${c}" has no base`);
});

Deno.test("emoji: the held-out split is fixed, about 10% of base emoji, and does not leak", async () => {
  const [train, held, trainB, heldB] = await Promise.all([
    loadEmoji(emojiParams({ split: "train" })),
    loadEmoji(emojiParams({ split: "heldout" })),
    loadEmoji(emojiParams({ split: "train", skin_tones: false })),
    loadEmoji(emojiParams({ split: "heldout", skin_tones: false })),
  ]);
  assert.equal(train.size + held.size, 3786);
  assert.equal(trainB.size + heldB.size, 1911);
  const heldBases = new Set(captionsOf(heldB)), trainBases = new Set(captionsOf(trainB));
  const groups = new Set(META.map((e) => e.name.toLowerCase()));
  assert.equal(heldBases.size, Math.round(0.1 * groups.size));
  for (const c of heldBases) assert.ok(!trainBases.has(c), `"${c}" is in both splits`);
  // Variants go with their base, and the held-out images are exactly the held bases with all their variants.
  const heldCaps = new Set(captionsOf(held));
  for (const c of captionsOf(train)) {
    assert.ok(!heldCaps.has(c), `"${c}" is in both splits`);
    assert.ok(trainBases.has(baseOf(c)), `train "${c}" lacks its base in train`);
  }
  for (const c of heldCaps) assert.ok(heldBases.has(baseOf(c)), `held-out "${c}" lacks its base in held-out`);
  const expectHeld = META.filter((e) => heldBases.has(e.name.toLowerCase()))
    .reduce((n, e) => n + 1 + Object.keys(e.skin_variations ?? {}).length, 0);
  assert.equal(held.size, expectHeld);
  // The split ignores the run's seed, the order of names, and grows monotonically with the fraction.
  const viaDef = await datasetKinds().get("emoji")!.load(emojiParams({ split: "heldout" }), 12345);
  assert.deepEqual(captionsOf(viaDef), captionsOf(held));
  const names = [...groups];
  assert.deepEqual(heldoutGroups(names.toReversed(), 0.1), heldoutGroups(names, 0.1));
  const five = heldoutGroups(names, 0.05);
  assert.equal(five.size, Math.round(0.05 * names.length));
  for (const g of five) assert.ok(heldBases.has(g));
});

const sheets = new Map<number, ReturnType<typeof decode>>();

/** The red apple's pixels, on the 0..255 scale, from a sheet decoded here; (dx, dy) shifts the crop. */
function appleFromSheet(S: number, bg: number[], shift = 0): (x: number, y: number, c: number) => number {
  const sheet = sheets.get(S) ?? decode(Deno.readFileSync(`${PKG}img/google/sheets-clean/${S}.png`));
  sheets.set(S, sheet);
  assert.equal(sheet.channels, 4);
  const apple = META.find((e) => e.name === "RED APPLE")!;
  const x0 = apple.sheet_x * (S + 2) + 1 + shift, y0 = apple.sheet_y * (S + 2) + 1 + shift;
  return (x, y, c) => {
    const p = ((y0 + y) * sheet.width + x0 + x) * 4, a = sheet.data[p + 3] / 255;
    return sheet.data[p + c] * a + bg[c] * (1 - a);
  };
}

Deno.test("emoji: pixels of the red apple match the sprite sheets", async () => {
  const bg = [0x20, 0x40, 0x60];
  const ds = await loadEmoji(emojiParams({ background: "#204060", skin_tones: false }));
  const i = captionsOf(ds).indexOf("red apple");
  assert.ok(i >= 0);
  const img = ds.batch([i]).image as Float32Array;
  const at = (x: number, y: number, c: number) => (img[(c * 32 + y) * 32 + x] + 1) * 127.5;
  // Exact: the 32 px sheet composited by hand, rounded to 8 bits.
  const ref = appleFromSheet(32, bg);
  let worst = 0;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) worst = Math.max(worst, Math.abs(at(x, y, c) - Math.round(ref(x, y, c))));
    }
  }
  assert.ok(worst < 1e-3, `max error ${worst} on the 0..255 scale`);
  // What it should look like: red at the centre, the background in the corner.
  assert.ok(at(16, 18, 0) > 200 && at(16, 18, 1) < 120 && at(16, 18, 2) < 80, "centre is red");
  for (let c = 0; c < 3; c++) assert.ok(Math.abs(at(0, 0, c) - bg[c]) < 1e-3, "corner is the background");
  // Independent of the 32 px sheet's offsets: the 64 px sheet's apple, box-averaged 2×, is close only when the crop
  // is where the field notes say (±1 px shifts are several times worse).
  const mae = (shift: number) => {
    const big = appleFromSheet(64, bg, shift);
    let s = 0;
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < 32; y++) {
        for (let x = 0; x < 32; x++) {
          const m = (big(2 * x, 2 * y, c) + big(2 * x + 1, 2 * y, c) + big(2 * x, 2 * y + 1, c) +
            big(2 * x + 1, 2 * y + 1, c)) / 4;
          s += Math.abs(at(x, y, c) - m);
        }
      }
    }
    return s / 3072;
  };
  const [m0, mp, mm] = [mae(0), mae(1), mae(-1)];
  assert.ok(m0 < 4 && m0 < 0.5 * mp && m0 < 0.5 * mm, `mean |32 px - 64 px/2|: ${m0} (shifted ${mp}, ${mm})`);
});

Deno.test("emoji: non-sheet sizes are box-filtered from the next larger sheet", async () => {
  const [e24, e32] = await Promise.all([
    loadEmoji(emojiParams({ size: 24, skin_tones: false })),
    loadEmoji(emojiParams({ size: 32, skin_tones: false })),
  ]);
  const i = captionsOf(e32).indexOf("red apple");
  assert.equal(captionsOf(e24).indexOf("red apple"), i);
  const small = e24.batch([i]).image as Float32Array, big = e32.batch([i]).image as Float32Array;
  assert.equal(small.length, 3 * 24 * 24);
  // 32 → 24: output pixel 1 covers input [4/3, 8/3): 2/3 of pixel 1 and 2/3 of pixel 2, each over the width 4/3.
  const w = [[1, 2 / 3], [2, 2 / 3]].map(([j, o]) => [j, o / (4 / 3)]);
  for (let c = 0; c < 3; c++) {
    let want = 0;
    for (const [y, wy] of w) for (const [x, wx] of w) want += wy * wx * ((big[(c * 32 + y) * 32 + x] + 1) * 127.5);
    const got = (small[(c * 24 + 1) * 24 + 1] + 1) * 127.5;
    // The 32 px values are already rounded to 8 bits, so allow the two roundings.
    assert.ok(Math.abs(got - want) <= 1, `channel ${c}: ${got} vs ${want}`);
  }
});

Deno.test("resampling: box filter when shrinking, linear when growing, against hand computations", () => {
  for (const [n, m] of [[7, 3], [32, 24], [5, 9], [4, 4]]) {
    for (const { w } of resampleWeights(n, m)) assert.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  }
  // 3 → 2: out0 covers [0, 1.5): (a + b/2)/1.5; out1 covers [1.5, 3): (b/2 + c)/1.5.
  const line = (v: number[]) => ({ channels: 1, height: 1, width: v.length, data: Float64Array.from(v) });
  const [a, b, c] = [10, 40, 100];
  assert.deepEqual(Array.from(resize(line([a, b, c]), 1, 2).data).map((v) => +v.toFixed(9)), [
    +((a + b / 2) / 1.5).toFixed(9),
    +((b / 2 + c) / 1.5).toFixed(9),
  ]);
  // 2 → 4: centres at -0.25, 0.25, 0.75, 1.25 (clamped).
  assert.deepEqual(Array.from(resize(line([a, b]), 1, 4).data), [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]);
  // 2× in 2-D is the 2×2 block mean.
  const rng = new Rng(3), img = { channels: 2, height: 6, width: 8, data: Float64Array.from(rng.uniform(96)) };
  const half = resize(img, 3, 4);
  for (let ch = 0; ch < 2; ch++) {
    for (let y = 0; y < 3; y++) {
      for (let x = 0; x < 4; x++) {
        const p = (yy: number, xx: number) => img.data[(ch * 6 + yy) * 8 + xx];
        const want = (p(2 * y, 2 * x) + p(2 * y, 2 * x + 1) + p(2 * y + 1, 2 * x) + p(2 * y + 1, 2 * x + 1)) / 4;
        assert.ok(Math.abs(half.data[(ch * 3 + y) * 4 + x] - want) < 1e-12);
      }
    }
  }
});

Deno.test("toRgba: grey+alpha, 16-bit RGB and palette PNGs", () => {
  const ga = toRgba(decode(encode({ width: 2, height: 1, data: Uint8Array.of(10, 255, 200, 0), channels: 2 })));
  assert.deepEqual(Array.from(ga.data), [10, 10, 10, 255, 200, 200, 200, 0]);
  const rgb16 = toRgba(
    decode(encode({ width: 1, height: 1, data: Uint16Array.of(65535, 257 * 7, 0), channels: 3, depth: 16 })),
  );
  assert.deepEqual(Array.from(rgb16.data), [255, 7, 0, 255]);
  const pal = toRgba({
    width: 3,
    height: 1,
    data: Uint8Array.of(0b01_00_10_00),
    depth: 2,
    channels: 1,
    text: {},
    palette: [[1, 2, 3, 255], [4, 5, 6, 128], [7, 8, 9, 0]],
  });
  assert.deepEqual(Array.from(pal.data), [4, 5, 6, 128, 1, 2, 3, 255, 7, 8, 9, 0]);
});

const haveFashion = existsSync(`${FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz`);
if (!haveFashion) {
  console.warn(`fashion_mnist tests skipped: ${FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)`);
}

Deno.test({
  name: "fashion_mnist: counts, labels and pixels against the raw IDX files",
  ignore: !haveFashion,
  fn: async () => {
    const p = { channels: 3 as const, pad: 2, dir: FASHION_MNIST_DIR };
    const [train, test] = await Promise.all([
      loadFashionMnist({ ...p, split: "train" }),
      loadFashionMnist({ ...p, split: "test" }),
    ]);
    assert.equal(train.size, 60000);
    assert.equal(test.size, 10000);
    // Classes are balanced (6,000 / 1,000 each), and the first labels are known: train 9; test 9, 2, 1.
    for (const [ds, per] of [[train, 6000], [test, 1000]] as const) {
      const hist = new Array(10).fill(0);
      for (const id of ds.batch(Array.from({ length: ds.size }, (_, i) => i)).caption_id) hist[id]++;
      assert.deepEqual(hist, new Array(10).fill(per));
    }
    assert.equal(train.captionOf(0), "ankle boot");
    assert.deepEqual([0, 1, 2].map((i) => test.captionOf(i)), ["ankle boot", "pullover", "trouser"]);
    // Pixels: the raw bytes (header 16 bytes) in the 28×28 interior, −1 in the 2 px border, grey in all channels.
    const raw = gunzipSync(Deno.readFileSync(`${FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz`));
    const k = 1234, img = test.batch([k]).image as Float32Array;
    assert.equal(img.length, 3 * 32 * 32);
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const inside = y >= 2 && y < 30 && x >= 2 && x < 30;
        const want = inside ? raw[16 + k * 784 + (y - 2) * 28 + (x - 2)] / 127.5 - 1 : -1;
        for (let c = 0; c < 3; c++) assert.ok(Math.abs(img[(c * 32 + y) * 32 + x] - want) < 1e-6);
      }
    }
    const grey = await loadFashionMnist({ ...p, split: "test", channels: 1 });
    assert.deepEqual(grey.batch([k]).image, img.subarray(0, 1024));
  },
});

Deno.test("fashion_mnist: a missing folder is one line naming the path and the apt package", async () => {
  await assert.rejects(
    loadFashionMnist({ split: "train", channels: 3, pad: 2, dir: "/nonexistent/fm" }),
    /\/nonexistent\/fm\/train-images-idx3-ubyte\.gz not found.*apt-get install -y dataset-fashion-mnist/,
  );
});

Deno.test("image_folder: PNGs with caption files, fits, and errors that name the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "image_folder_test_" });
  try {
    // a.png: 4×2 RGBA, left half opaque red, right half transparent; b.png: 2×2 grey; c.png shares a's caption.
    const a = new Uint8Array(4 * 2 * 4);
    for (let y = 0; y < 2; y++) for (let x = 0; x < 2; x++) a.set([255, 0, 0, 255], (y * 4 + x) * 4);
    await Deno.writeFile(`${dir}/a.png`, encode({ width: 4, height: 2, data: a, channels: 4 }));
    await Deno.writeTextFile(`${dir}/a.txt`, "  a red\n  box \n");
    await Deno.writeFile(
      `${dir}/b.png`,
      encode({ width: 2, height: 2, data: Uint8Array.of(0, 51, 102, 255), channels: 1 }),
    );
    await Deno.writeTextFile(`${dir}/b.txt`, "grey");
    await Deno.writeFile(
      `${dir}/c.png`,
      encode({ width: 2, height: 2, data: new Uint8Array(16).fill(128), channels: 4 }),
    );
    await Deno.writeTextFile(`${dir}/c.txt`, "a red box");
    await Deno.writeTextFile(`${dir}/notes.md`, "ignored");
    const base = { path: dir, size: 2, background: "#0000ff" };
    const ds = await loadImageFolder({ ...base, fit: "crop" });
    assert.equal(ds.size, 3);
    assert.deepEqual(ds.captions, ["a red box", "grey"]);
    const b = ds.batch([0, 1, 2]);
    assert.deepEqual(Array.from(b.caption_id), [0, 1, 0]);
    const px = (img: ArrayLike<number>, n: number, c: number, y: number, x: number) =>
      Math.round((img[((n * 3 + c) * 2 + y) * 2 + x] + 1) * 127.5);
    // crop keeps columns 1..2 of a: red | blue background.
    for (const y of [0, 1]) {
      assert.deepEqual([0, 1, 2].map((c) => px(b.image, 0, c, y, 0)), [255, 0, 0]);
      assert.deepEqual([0, 1, 2].map((c) => px(b.image, 0, c, y, 1)), [0, 0, 255]);
    }
    assert.deepEqual([0, 1, 2].map((c) => px(b.image, 1, c, 1, 0)), [102, 102, 102]);
    // c: grey 128 at alpha 128/255 over blue.
    const f = 128 / 255;
    assert.deepEqual(
      [0, 1, 2].map((c) => px(b.image, 2, c, 0, 0)),
      [128 * f, 128 * f, 128 * f + 255 * (1 - f)].map(Math.round),
    );
    // pad: a becomes 4×4 with background rows on top and bottom, then 2×2 box means:
    // top-left block = 2 background + 2 red pixels.
    const padded = (await loadImageFolder({ ...base, fit: "pad" })).batch([0]).image;
    assert.deepEqual([0, 1, 2].map((c) => px(padded, 0, c, 0, 0)), [128, 0, 128]);
    // stretch: 4 → 2 columns averages pairs: left pixel red, right background.
    const stretched = (await loadImageFolder({ ...base, fit: "stretch" })).batch([0]).image;
    assert.deepEqual([0, 1, 2].map((c) => px(stretched, 0, c, 0, 0)), [255, 0, 0]);
    assert.deepEqual([0, 1, 2].map((c) => px(stretched, 0, c, 0, 1)), [0, 0, 255]);

    await Deno.remove(`${dir}/b.txt`);
    await assert.rejects(loadImageFolder({ ...base, fit: "crop" }), /b\.png: its caption file .*b\.txt is missing/);
    await Deno.writeTextFile(`${dir}/b.txt`, "grey");
    await Deno.writeFile(`${dir}/d.png`, Uint8Array.of(1, 2, 3, 4));
    await Deno.writeTextFile(`${dir}/d.txt`, "broken");
    await assert.rejects(loadImageFolder({ ...base, fit: "crop" }), /d\.png: not a readable PNG image/);
    await Deno.remove(`${dir}/d.png`);
    await Deno.writeFile(`${dir}/e.jpg`, Uint8Array.of(0xff, 0xd8));
    await assert.rejects(loadImageFolder({ ...base, fit: "crop" }), /e\.jpg: only PNG images are read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("data stage: emoji batches have the declared types and are seeded", async () => {
  const params = datasetKinds().get("emoji")!.params.parse({ split: "heldout" });
  const datasets = { e: { name: "e", kind: "emoji", params } };
  const types = dataLoad.types({ params: { dataset: "e", batch: 4, shuffle: true }, inputs: {}, models: {}, datasets });
  assert.deepEqual(types, { image: { dtype: "f32", shape: [4, 3, 32, 32] }, caption_id: { dtype: "i32", shape: [4] } });
  const ds = await loadEmoji(params);
  const run = (seed: number, step: number) =>
    // deno-lint-ignore no-explicit-any
    dataLoad.host!({ stage: "data", seed, step, dataset: () => Promise.resolve(ds) } as any, {
      dataset: "e",
      batch: 4,
      shuffle: true,
    }, {});
  const [x, y, z] = [await run(1, 3), await run(1, 3), await run(2, 3)];
  assert.equal(x.image.length, 4 * 3 * 32 * 32);
  assert.deepEqual(x, y);
  assert.notDeepEqual(Array.from(x.caption_id), Array.from(z.caption_id));
});
