/**
 * The Fashion-MNIST evaluation of text-to-image generators, judged by the project's own classifier
 * (`fashion_judge.ts`): each generator makes `perClass` images for each of the 10 class-name prompts, and the judge
 * gives
 *
 * - class accuracy: the share classified as the prompt's class (chance 10%), overall and per class;
 * - FD: the Fréchet distance of the judge's 128-d penultimate features to those of the 10,000 real test images;
 * - beside them, ms/image of generation alone (compilation, text encoding and judging excluded).
 *
 * Image k of a generator's set has the prompt of class k mod 10 and seed k, so the first 10·n images are the same
 * whatever `perClass` (a short run is a prefix of a long one) and a rerun gives the same images. Images are clamped and
 * rounded to 8 bits first (`toDisplayed`), as the real ones are.
 *
 * The floor row is what a generator that reproduced its training data would score: a fixed, class-balanced subset of
 * the training images (as many as each generator makes) judged against the test set. Its accuracy is on images the
 * judge was trained on, so it sits above the judge's 92.15% test accuracy.
 *
 * @module
 */
import type { Executor } from "../engine/executors/executor.ts";
import { Rng } from "../engine/rng.ts";
import { FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, loadFashionMnist } from "../datasets/fashion_mnist.ts";
import type { TextBatch } from "../models/diffusion/generate.ts";
import { countNonFinite, toDisplayed } from "./eval_metrics.ts";
import { type CaptionEncoderLike, generateBatched, type UNetGenerator, unetRunners } from "./evaluate.ts";
import {
  argmaxRows,
  classAccuracy,
  type FashionJudge,
  fashionTestImages,
  type JudgeOutputs,
  judgeRunner,
  loadFashionJudge,
} from "../models/fashion_judge.ts";
import { frechetDistanceOfFeatures } from "./fid.ts";

/** How the report names the shipped judge. */
export const FASHION_JUDGE_LABEL =
  "fashion_cnn (models/fashion_classifier, 92.15% test accuracy), trained by this project; no network in the " +
  "pipeline trains against it";

// Keys the floor's training subset; changing it changes the floor's images.
const FLOOR_KEY = 20261207;

/** Any other source of images (an oracle in tests): [n, 3, 32, 32] in [-1, 1] for n prompts and seeds. */
export interface FashionCustomGenerator {
  name: string;
  generate(captions: readonly string[], seeds: readonly number[]): Promise<Float32Array>;
}

/** What `evaluateFashion` evaluates. */
export type FashionGenerator = UNetGenerator | FashionCustomGenerator;

/** Images [N, C, 32, 32], row-major, in [-1, 1]. */
export interface ImageSet {
  data: Float32Array;
  shape: readonly number[];
}

/** Options of `evaluateFashion`. */
export interface FashionEvalOptions {
  executor: Executor;
  generators: readonly FashionGenerator[];
  /** Needed when a generator is a UNet. */
  encoder?: CaptionEncoderLike;
  /** Images per class prompt (default 100: 1,000 a generator). */
  perClass?: number;
  /** Images per UNet run (default 50). */
  batch?: number;
  /** The classifier (default the shipped one, `FASHION_JUDGE_LABEL`). */
  judge?: FashionJudge;
  /** How the report names `judge` (default: the shipped one's label when `judge` is not given). */
  judgeLabel?: string;
  /** The real images FD is taken against (default the 10,000 test images). */
  real?: ImageSet;
  /** The floor's labelled real images (default a fixed class-balanced training subset); false: no floor row. */
  floor?: { images: ImageSet; labels: ArrayLike<number> } | false;
  log?: (line: string) => void;
}

/** The judge's verdict on one set. */
export interface FashionScores {
  n: number;
  accuracy: number;
  /** By intended class, in `FASHION_MNIST_CLASSES` order. */
  perClass: number[];
  fd: number;
}

/** One generator's row. */
export interface FashionRow extends FashionScores {
  name: string;
  /** Sampler, or "custom". */
  sampler: string;
  steps: number | null;
  guidance: number | null;
  msPerImage: number;
  /** Generated images holding a NaN or an infinity (before clamping). */
  nonFinite: number;
  /** Where a caller reused a stored row: when and on what it was computed. */
  cached?: string;
}

/** What `evaluateFashion` returns. */
export interface FashionReport {
  executor: string;
  /** ISO 8601 time the evaluation finished. */
  date: string;
  judge: string;
  classes: string[];
  perClass: number;
  /** Real images FD is taken against, and what they are. */
  realN: number;
  reference: string;
  featureDim: number;
  floor: FashionScores | null;
  /** What the floor's images are (null: no floor). */
  floorImages: string | null;
  rows: FashionRow[];
}

const isUNet = (g: FashionGenerator): g is UNetGenerator => "weights" in g;

/**
 * A fixed class-balanced subset of the training split: `perClass` images of each class, image k of class k mod 10
 * as the generators' sets are ordered.
 */
export async function fashionTrainFloor(perClass: number, channels: 1 | 3 = 3) {
  const ds = await loadFashionMnist({ split: "train", channels, pad: 2, dir: FASHION_MNIST_DIR });
  const classOf = new Map(FASHION_MNIST_CLASSES.map((c, i) => [c, i]));
  const byClass: number[][] = FASHION_MNIST_CLASSES.map(() => []);
  for (const i of new Rng(FLOOR_KEY).fold("floor").permutation(ds.size)) {
    const c = byClass[classOf.get(ds.captionOf(i))!];
    if (c.length < perClass) c.push(i);
  }
  const k = FASHION_MNIST_CLASSES.length, idx: number[] = [];
  for (let i = 0; i < perClass; i++) {
    for (let c = 0; c < k; c++) if (byClass[c][i] !== undefined) idx.push(byClass[c][i]);
  }
  const b = ds.batch(idx);
  return { images: { data: b.image as Float32Array, shape: [idx.length, channels, 32, 32] }, labels: b.caption_id };
}

/** Every generator's prompts, labels and seeds: image k has the prompt of class k mod 10 and seed k. */
function fashionPrompts(perClass: number) {
  const classes = FASHION_MNIST_CLASSES.length, n = classes * perClass;
  const captions = Array.from({ length: n }, (_, k) => FASHION_MNIST_CLASSES[k % classes]);
  const labels = Int32Array.from({ length: n }, (_, k) => k % classes), seeds = [...labels.keys()];
  return { n, captions, labels, seeds };
}

type Prompts = ReturnType<typeof fashionPrompts>;

/** A generator's images (displayed, i.e. clamped and rounded), their generation time and non-finite count. */
type Made = { images: Float32Array; ms: number; nonFinite: number };

// The prompts' text conditioning (and the empty one, when a generator guides), encoded once for every UNet.
async function encodePrompts(o: FashionEvalOptions, captions: readonly string[]) {
  let text: TextBatch | undefined, empty: TextBatch | undefined;
  if (o.generators.some(isUNet)) {
    if (!o.encoder) throw new Error("fashion eval: UNet generators need options.encoder");
    const L = o.encoder.dims.length;
    text = { ...(await o.encoder.encode(captions)), length: L };
    if (o.generators.some((g) => isUNet(g) && g.settings.guidance > 1)) {
      empty = { ...(await o.encoder.encode(captions.map(() => ""))), length: L };
    }
  }
  return { text, empty };
}

async function generateCustom(g: FashionCustomGenerator, { n, captions, seeds }: Prompts, per: number) {
  const t0 = performance.now(), out = await g.generate(captions, seeds);
  const res = { images: Float32Array.from(out), ms: performance.now() - t0 };
  if (out.length !== n * per) {
    throw new Error(`fashion eval: "${g.name}" gave ${out.length} values for ${n} images`);
  }
  return res;
}

/** Every generator's images, in `o.generators` order. */
async function generateAll(o: FashionEvalOptions, prompts: Prompts, batch: number, per: number): Promise<Made[]> {
  const log = o.log ?? (() => {}), n = prompts.n;
  const { text, empty } = await encodePrompts(o, prompts.captions);
  const made: Made[] = [];
  const runners = unetRunners(o.executor);
  try {
    for (const g of o.generators) {
      const res = isUNet(g)
        ? await generateBatched(g, n, text!, empty, batch, await runners.forGenerator(g, text!.length))
        : await generateCustom(g, prompts, per);
      made.push({ ...res, nonFinite: countNonFinite(res.images, per) });
      toDisplayed(res.images);
      log(`fashion eval: ${g.name}: ${n} images, ${(res.ms / n).toFixed(1)} ms/image`);
    }
  } finally {
    await runners.release();
  }
  return made;
}

/** The judge's scores of the floor and of every generator's images; the judge sees the real images once. */
async function judgeAll(
  o: FashionEvalOptions,
  judge: FashionJudge,
  made: readonly Made[],
  labels: Int32Array,
  floorSet: { images: ImageSet; labels: ArrayLike<number> } | null,
) {
  const ch = judge.params.channels, n = labels.length;
  const jr = await judgeRunner(o.executor, judge, 100);
  try {
    const real = await jr.run(o.real ?? (await fashionTestImages(ch)).images);
    const score = (out: JudgeOutputs, want: ArrayLike<number>): FashionScores => {
      const acc = classAccuracy(argmaxRows(out.logits, judge.params.classes), want, judge.params.classes);
      const fd = frechetDistanceOfFeatures(out.features, out.n, real.features, real.n, judge.params.hidden);
      return { n: out.n, accuracy: acc.accuracy, perClass: acc.perClass, fd };
    };
    const floor = floorSet ? score(await jr.run(floorSet.images), floorSet.labels) : null;
    const rows: FashionRow[] = [];
    for (const [i, g] of o.generators.entries()) {
      const s = score(await jr.run({ data: made[i].images, shape: [n, ch, 32, 32] }), labels);
      rows.push({
        name: g.name,
        sampler: isUNet(g) ? g.settings.sampler : "custom",
        steps: isUNet(g) ? g.settings.steps : null,
        guidance: isUNet(g) ? g.settings.guidance : null,
        ...s,
        msPerImage: made[i].ms / n,
        nonFinite: made[i].nonFinite,
      });
    }
    return { realN: real.n, floor, rows };
  } finally {
    await jr.close();
  }
}

/** Evaluates every generator (see the module doc); the judge is compiled once and sees the real images once. */
export async function evaluateFashion(o: FashionEvalOptions): Promise<FashionReport> {
  const perClass = o.perClass ?? 100, batch = o.batch ?? 50;
  for (const [k, v] of [["perClass", perClass], ["batch", batch]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`fashion eval: ${k} must be a positive integer, got ${v}`);
  }
  const names = o.generators.map((g) => g.name), dup = names.find((x, i) => names.indexOf(x) !== i);
  if (dup !== undefined) throw new Error(`fashion eval: the name "${dup}" is used twice`);
  const judge = o.judge ?? await loadFashionJudge(), ch = judge.params.channels;
  for (const g of o.generators.filter(isUNet)) {
    // A latent denoiser's images are what its VAE decoder makes.
    const [c, side] = g.decode ? [g.decode.channels, g.decode.size] : [g.u.in_channels, g.u.size];
    if (c !== ch || side !== 32) {
      throw new Error(`fashion eval: "${g.name}" makes ${c}×${side}² images, the judge takes ${ch}×32²`);
    }
  }
  const prompts = fashionPrompts(perClass);
  const made = await generateAll(o, prompts, batch, ch * 32 * 32);
  const floorSet = o.floor === false ? null : o.floor ?? await fashionTrainFloor(perClass, ch);
  const { realN, floor, rows } = await judgeAll(o, judge, made, prompts.labels, floorSet);
  return {
    executor: o.executor.name,
    date: new Date().toISOString(),
    judge: o.judgeLabel ?? (o.judge ? "a fashion_cnn given by the caller" : FASHION_JUDGE_LABEL),
    classes: [...FASHION_MNIST_CLASSES],
    perClass,
    realN,
    reference: o.real ? "real images given by the caller" : "real test images",
    featureDim: judge.params.hidden,
    floor,
    floorImages: floor === null ? null : o.floor ? "labelled real images given by the caller" : "training images, " +
      "fixed and class-balanced: what a generator that reproduced its training data would score (the judge was " +
      "trained on them, so its accuracy is above 92.15%)",
    rows,
  };
}

const pct = (v: number) => Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : String(v);
const num = (v: number, d: number) => Number.isFinite(v) ? v.toFixed(d) : String(v);

/**
 * The report as markdown: one row per generator (the floor first) with accuracy, FD and ms/image, then per-class
 * accuracy, then what the columns measure, the executor, date and `meta`.
 */
export function fashionReportMarkdown(r: FashionReport, meta: Record<string, string | number | null> = {}): string {
  const floorName = "real training images (floor)", n = r.perClass * r.classes.length;
  const head = ["generator", "sampler", "steps", "guidance", "accuracy", "FD", "ms/image"];
  const row = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  // Name and sampler columns left, numbers right.
  const rule = (k: number, left = 1) => row(Array.from({ length: k }, (_, i) => (i < left ? "---" : "---:")));
  const lines = ["# Fashion-MNIST evaluation", "", `Judge: ${r.judge}.`, "", row(head), rule(head.length, 2)];
  if (r.floor) lines.push(row([floorName, "—", "—", "—", pct(r.floor.accuracy), num(r.floor.fd, 2), "—"]));
  for (const x of r.rows) {
    lines.push(
      row([x.name, x.sampler, x.steps ?? "—", x.guidance ?? "—", pct(x.accuracy), num(x.fd, 2), num(x.msPerImage, 1)]),
    );
  }
  lines.push("");
  for (const x of r.rows.filter((x) => x.nonFinite > 0)) {
    lines.push(`**${x.name} produced NaN or infinite values** in ${x.nonFinite} of ${x.n} images.`, "");
  }
  lines.push("Accuracy by intended class:", "", row(["generator", ...r.classes]), rule(r.classes.length + 1));
  if (r.floor) lines.push(row([floorName, ...r.floor.perClass.map(pct)]));
  for (const x of r.rows) lines.push(row([x.name, ...x.perClass.map(pct)]));
  lines.push(
    "",
    `- accuracy: share of the ${n} images a generator makes (${r.perClass} per class prompt, the prompt being the ` +
      "class name) that the judge classifies as the prompt's class; chance 10%",
    `- FD: Fréchet distance of the judge's ${r.featureDim}-d penultimate features (after the ReLU) to those of the ` +
      `${r.realN.toLocaleString("en-US")} ${r.reference}; fewer images give a larger distance, so compare rows of ` +
      "equal size",
    ...(r.floor ? [`- floor: ${r.floor.n} ${r.floorImages}, judged the same way`] : []),
    ...r.rows.filter((x) => x.cached).map((x) => `- ${x.name}: a stored row (same weights and settings), ${x.cached}`),
    "- seeds: image k has the prompt of class k mod 10 and seed k",
    "- ms/image: generation wall time only (no compilation, text encoding or judging)",
    `- executor: ${r.executor}`,
    `- date: ${r.date}`,
    ...Object.entries(meta).map(([k, v]) => `- ${k}: ${v ?? "—"}`),
    "",
  );
  return lines.join("\n");
}
