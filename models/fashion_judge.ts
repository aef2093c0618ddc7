/**
 * The Fashion-MNIST judge: the project's own classifier (`fashion_cnn`, trained by `configs/fashion_classifier.yaml`,
 * weights in `models/fashion_classifier/`) scores generated images made for intended classes by
 *
 * - class accuracy: the share whose argmax class is the intended one (chance 10%), overall and per class;
 * - a Fréchet distance in the classifier's penultimate features (`features`, after the ReLU) against real images,
 *   by default the 10,000 test images: FID's construction with a network that knows this domain.
 *
 * Images are [N, C, 32, 32] in [-1, 1], as the diffusion configs serve Fashion-MNIST (`datasets/fashion_mnist.ts`).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import type { Executor } from "../engine/executors/executor.ts";
import { Program, ResidentStore } from "../engine/program.ts";
import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { Trace } from "../engine/tensor.ts";
import { FASHION_MNIST_DIR, loadFashionMnist } from "../datasets/fashion_mnist.ts";
import { fashionCnnForward, type FashionCnnParams, fashionCnnShapes } from "./fashion_cnn.ts";
import { frechetDistanceOfFeatures } from "../evaluation/fid.ts";

/** The shipped classifier's weights. */
export const FASHION_JUDGE_WEIGHTS: string = fileURLToPath(
  new URL("./fashion_classifier/cnn.safetensors", import.meta.url),
);

/** A loaded classifier: its settings (read off the weights' shapes) and weights. */
export interface FashionJudge {
  params: FashionCnnParams;
  weights: Record<string, Float32Array>;
}

/**
 * Loads a `fashion_cnn` safetensors file (a checkpoint's `cnn.safetensors`). The architecture is read off the tensor
 * shapes and checked against the model kind's own shapes, so any other file fails with one line naming it.
 */
export async function loadFashionJudge(path: string = FASHION_JUDGE_WEIGHTS): Promise<FashionJudge> {
  const { tensors } = await readSafetensors(path);
  const shape = (k: string) => {
    const t = tensors[k];
    if (!t) throw new Error(`${path}: no tensor "${k}"; expected a fashion_cnn's weights`);
    return t.shape;
  };
  const convs: number[] = [];
  while (tensors[`c${convs.length}.w`]) convs.push(shape(`c${convs.length}.w`)[0]);
  const params: FashionCnnParams = {
    channels: shape("c0.w")[1] as 1 | 3,
    size: 32,
    classes: shape("out.w")[0],
    convs,
    hidden: shape("fc.w")[0],
  };
  const want = fashionCnnShapes(params), weights: Record<string, Float32Array> = {};
  for (const [k, s] of Object.entries(want)) {
    if (shape(k).join(",") !== s.join(",")) {
      throw new Error(`${path}: tensor "${k}" is [${shape(k)}], a fashion_cnn of its other shapes has [${s}]`);
    }
    weights[k] = toFloat32(tensors[k]);
  }
  const extra = Object.keys(tensors).filter((k) => !(k in want));
  if (extra.length) throw new Error(`${path}: tensors ${extra.join(", ")} are not a fashion_cnn's`);
  return { params, weights };
}

/** The classifier's outputs for N images: logits [N, classes] and features [N, hidden], row-major. */
export interface JudgeOutputs {
  logits: Float32Array;
  features: Float32Array;
  n: number;
}

/** The classifier compiled on an executor with its weights uploaded once; `close` frees both. */
export interface JudgeRunner {
  judge: FashionJudge;
  run(images: { data: Float32Array; shape: readonly number[] }): Promise<JudgeOutputs>;
  close(): Promise<void>;
}

/** Compiles the classifier for `batch` images per executor run (the last batch is zero-padded). */
export async function judgeRunner(executor: Executor, judge: FashionJudge, batch = 100): Promise<JudgeRunner> {
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`fashion judge: batch must be a positive integer`);
  const { params: p } = judge, shapes = fashionCnnShapes(p);
  const tr = new Trace(), inputs: Record<string, ReturnType<Trace["input"]>> = {};
  for (const [k, s] of Object.entries(shapes)) inputs[k] = tr.input(`judge.${k}`, s);
  const out = fashionCnnForward(p, inputs, tr.input("x", [batch, p.channels, p.size, p.size]));
  // The weights stay resident: inputs bound to the store, never replaced.
  const store = new ResidentStore(executor);
  const bound = Object.fromEntries(Object.keys(shapes).map((k) => [`judge.${k}`, `judge.${k}`]));
  const prog = await Program.create(store, tr.build({ logits: out.logits, features: out.features }), { inputs: bound });
  for (const [k, s] of Object.entries(shapes)) store.set(`judge.${k}`, judge.weights[k], s);
  const run = async (images: { data: Float32Array; shape: readonly number[] }): Promise<JudgeOutputs> => {
    const [n, c, h, w] = images.shape;
    if (images.shape.length !== 4 || c !== p.channels || h !== p.size || w !== p.size) {
      throw new Error(`fashion judge: images are [${images.shape}], expected [N,${p.channels},${p.size},${p.size}]`);
    }
    if (images.data.length !== n * c * h * w) {
      throw new Error(`fashion judge: ${images.data.length} values for [${images.shape}]`);
    }
    const per = c * h * w, logits = new Float32Array(n * p.classes), features = new Float32Array(n * p.hidden);
    for (let s = 0; s < n; s += batch) {
      const e = Math.min(n, s + batch), chunk = new Float32Array(batch * per);
      chunk.set(images.data.subarray(s * per, e * per));
      const { logits: l, features: f } = await prog.run({ x: chunk });
      logits.set(l.subarray(0, (e - s) * p.classes), s * p.classes);
      features.set(f.subarray(0, (e - s) * p.hidden), s * p.hidden);
    }
    return { logits, features, n };
  };
  const close = async () => {
    await prog.dispose();
    store.dispose();
  };
  return { judge, run, close };
}

/** Argmax class of each row of `logits` [N, classes] (the first on a tie). */
export function argmaxRows(logits: Float32Array, classes: number): Int32Array {
  const n = logits.length / classes, out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (logits[i * classes + c] > logits[i * classes + best]) best = c;
    out[i] = best;
  }
  return out;
}

/** Share of `predicted` equal to `labels`, overall and per intended class (NaN for a class with no images). */
export function classAccuracy(predicted: Int32Array, labels: ArrayLike<number>, classes: number): {
  accuracy: number;
  perClass: number[];
} {
  if (predicted.length !== labels.length) {
    throw new Error(`fashion judge: ${labels.length} labels for ${predicted.length} images`);
  }
  const hit = new Array(classes).fill(0), count = new Array(classes).fill(0);
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (!Number.isInteger(l) || l < 0 || l >= classes) throw new Error(`fashion judge: label ${l} at ${i}`);
    count[l]++;
    if (predicted[i] === l) hit[l]++;
  }
  const total = hit.reduce((a, b) => a + b, 0);
  return { accuracy: total / Math.max(1, labels.length), perClass: hit.map((h, c) => h / count[c]) };
}

/** Real images and their labels: by default the Fashion-MNIST test split, as the diffusion configs serve it. */
export async function fashionTestImages(channels: 1 | 3 = 3, count = 10_000): Promise<{
  images: { data: Float32Array; shape: [number, number, number, number] };
  labels: Int32Array;
}> {
  const ds = await loadFashionMnist({ split: "test", channels, pad: 2, dir: FASHION_MNIST_DIR });
  const n = Math.min(count, ds.size), b = ds.batch(Int32Array.from({ length: n }, (_, i) => i));
  return {
    images: { data: b.image as Float32Array, shape: [n, channels, 32, 32] },
    labels: b.caption_id as Int32Array,
  };
}

/** What the judge says of a set of generated images. */
export interface Judgement {
  /** Images judged. */
  n: number;
  /** Share classified as their intended class. */
  accuracy: number;
  /** The same by intended class (NaN where a class had no image). */
  perClass: number[];
  /** Fréchet distance of penultimate features to the real set's. */
  fd: number;
  /** Real images the distance was taken against. */
  realN: number;
}

/**
 * Judges generated `images` made for the intended class ids `labels` on `executor`: class accuracy and the Fréchet
 * distance of their features to those of `real` (default: the 10,000 test images). Needs at least 2 images a set.
 */
export async function judgeFashion(
  executor: Executor,
  images: { data: Float32Array; shape: readonly number[] },
  labels: ArrayLike<number>,
  opts: { judge?: FashionJudge; real?: { data: Float32Array; shape: readonly number[] }; batch?: number } = {},
): Promise<Judgement> {
  const judge = opts.judge ?? await loadFashionJudge();
  const runner = await judgeRunner(executor, judge, opts.batch);
  try {
    const real = opts.real ?? (await fashionTestImages(judge.params.channels)).images;
    const g = await runner.run(images), r = await runner.run(real);
    const acc = classAccuracy(argmaxRows(g.logits, judge.params.classes), labels, judge.params.classes);
    const fd = frechetDistanceOfFeatures(g.features, g.n, r.features, r.n, judge.params.hidden);
    return { n: g.n, accuracy: acc.accuracy, perClass: acc.perClass, fd, realN: r.n };
  } finally {
    await runner.close();
  }
}
