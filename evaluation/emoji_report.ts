/**
 * The emoji evaluation's inputs and outputs: its two caption sets (the held-out split and a fixed subset of the
 * training split, each with its real images), and the report files.
 *
 * @module
 */
import { Rng } from "../engine/rng.ts";
import { emoji, type EmojiParams, loadEmoji } from "../datasets/emoji.ts";
import { writeAtomic } from "../models/png_grid.ts";
import { type CaptionSet, type EvalReport, reportMarkdown } from "./evaluate.ts";

// Keys the choice of the train subset and of `limit` subsets; changing it changes which images are evaluated.
const SUBSET_KEY = 20261205;

/** A fixed subset of `n` of `size` indices (all of them, in order, when n ≥ size), ascending. */
function subset(size: number, n: number, tag: string): number[] {
  if (n >= size) return Array.from({ length: size }, (_, i) => i);
  const perm = new Rng(SUBSET_KEY).fold(tag).permutation(size);
  return Array.from(perm.subarray(0, n)).sort((a, b) => a - b);
}

/**
 * The two caption sets of the report: the emoji held-out split (at most `limit` images) and a fixed subset of the
 * training split of `train_images` images (default: the held-out count), at most `limit`.
 */
export async function emojiCaptionSets(
  dataset: Record<string, unknown>,
  o: { train_images?: number; limit?: number } = {},
): Promise<CaptionSet[]> {
  const parse = (split: "heldout" | "train"): EmojiParams => {
    const r = emoji.params.safeParse({ ...dataset, split });
    if (!r.success) {
      const i = r.error.issues[0];
      throw new Error(`eval_report: params.dataset.${i.path.join(".")}: ${i.message}`);
    }
    return r.data;
  };
  const hp = parse("heldout"), tp = parse("train");
  const [held, train] = [await loadEmoji(hp), await loadEmoji(tp)];
  const cap = o.limit ?? Infinity;
  const nHeld = Math.min(held.size, cap);
  const nTrain = Math.min(train.size, o.train_images ?? nHeld, cap);
  const make = (name: string, label: string, ds: typeof held, idx: number[]): CaptionSet => ({
    name,
    label,
    images: ds.batch(idx).image as Float32Array,
    channels: 3,
    size: hp.size,
    captions: idx.map((i) => ds.captionOf(i)),
  });
  return [
    make("heldout", "held-out", held, subset(held.size, nHeld, "heldout")),
    make("train", "train", train, subset(train.size, nTrain, "train")),
  ];
}

/** Writes `<dir>/<name>.json` (the report plus `meta`) and `<dir>/<name>.md`, each atomically. Returns the paths. */
export async function writeReport(
  dir: string,
  report: EvalReport,
  meta: Record<string, string | number | null>,
  name = "report",
): Promise<{ json: string; md: string }> {
  await Deno.mkdir(dir, { recursive: true });
  const json = `${dir}/${name}.json`, md = `${dir}/${name}.md`;
  await writeAtomic(json, JSON.stringify({ ...meta, ...report }, null, 2) + "\n");
  await writeAtomic(md, reportMarkdown(report, meta));
  return { json, md };
}
