/**
 * The evaluation of text-to-image generators on caption sets: for each real image of a set, one image is generated
 * from its caption (seed = the image's index in the set); then, in the pooled feature space of the judge (`fid.ts`:
 * InceptionV3 by default, a network ADD's discriminator and perceptual loss do not use):
 *
 * - FID proxy: the Fréchet distance between the generated and the real images of the set;
 * - text fidelity: the share of generated images whose k nearest real images (L2, among the set's real images, or
 *   among a larger pool of real images given as the set's `retrieval`) include one with the prompt's caption, for
 *   k = 1 and 5. Several real images may share a caption, so a hit is counted by caption, and the chance level (a
 *   random k-subset of the real images retrieved among) is reported beside it;
 * - beside them, unless turned off, the same Fréchet distance on the discriminator's own network (MobileNetV2), which
 *   a student trained against that network can lower by fooling it, and the pixel FD (`pixelFeatures`), which uses
 *   no network at all;
 * - wall time per image of generation alone (UNet compilation, text encoding and feature extraction excluded).
 *
 * The FID proxy comes from `frechetDistanceOfFeatures`, which works on the n×n cross-Gram matrix whenever a set has
 * fewer images than the feature dimensions (2,048; the emoji held-out split has 351 images), exact and much cheaper
 * than the covariance route.
 *
 * Generated images are clamped to [-1, 1] and rounded to 8 bits before their features are taken: what a viewer (or a
 * PNG) shows, and the same grid of values the real images lie on. An untrained UNet's outputs far outside [-1, 1]
 * would otherwise dominate the distances.
 *
 * @module
 */
import type { Executor } from "../engine/executors/executor.ts";
import { generate, type SampleSettings, type TextBatch, UNetRunner } from "../models/diffusion/generate.ts";
import type { Schedule } from "../models/diffusion/schedules.ts";
import { asRgb, chanceFidelity, countNonFinite, pixelFeatures, textFidelity, toDisplayed } from "./eval_metrics.ts";
import {
  type FidOptions,
  frechetDistanceOfFeatures,
  JUDGE_LABELS,
  type JudgeName,
  pooledFeatures,
  resolveJudge,
} from "./fid.ts";
import type { UNetParams } from "../models/unet.ts";
import type { DenoiserModel, LatentDecoder } from "../models/denoiser.ts";

export { chanceFidelity, PIXEL_POOL, pixelFeatures, textFidelity, toDisplayed } from "./eval_metrics.ts";
export { reportMarkdown } from "./eval_markdown.ts";
export type { EvalReport, GeneratorRow, NetInfo, SetInfo, SetScores } from "./eval_report_types.ts";
import type { EvalReport, GeneratorRow, NetInfo, SetInfo, SetScores } from "./eval_report_types.ts";

/** Real images and their captions: the prompts and the reference of one evaluation set. */
export interface CaptionSet {
  /** Key in the report ("heldout", "train"). */
  name: string;
  /** Column label in the markdown report (default: `name`). */
  label?: string;
  /** [N, channels, size, size] row-major in [-1, 1]. */
  images: Float32Array;
  channels: number;
  size: number;
  /** The caption of each image (N entries; repeats allowed). */
  captions: readonly string[];
  /**
   * The real images text fidelity retrieves among, with their captions (default: this set's own images). A larger
   * pool (every training image, say) makes a hit harder by chance; the chance level is computed on it.
   */
  retrieval?: { images: Float32Array; captions: readonly string[] };
}

/** A UNet sampled with a sampler: the weights are compiled once per batch size and shared by generators using them. */
export interface UNetGenerator {
  name: string;
  /** The project's UNet by its params, or any denoiser kind's model. */
  u: UNetParams | DenoiserModel;
  /** For a latent denoiser: the VAE decoder that turns its samples into the pixels the sets hold. */
  decode?: LatentDecoder;
  /** Generators given the same object (a teacher at several step counts) share its compiled runners. */
  weights: Record<string, Float32Array>;
  settings: SampleSettings;
  schedule: Schedule;
}

/** Any other source of images, e.g. an oracle in tests. Returns [n, channels, size, size] for n captions and seeds. */
export interface CustomGenerator {
  name: string;
  generate(captions: readonly string[], seeds: readonly number[], set: CaptionSet): Promise<Float32Array>;
}

/** What `evaluateGenerators` evaluates. */
export type Generator = UNetGenerator | CustomGenerator;

/** Text conditioning: what `CaptionEncoder` (stages/text_encode.ts) provides. */
export interface CaptionEncoderLike {
  readonly dims: { length: number };
  encode(captions: readonly string[]): Promise<{ tokens: Float32Array; pooled: Float32Array }>;
}

/** Options of `evaluateGenerators`. */
export interface EvaluateOptions {
  executor: Executor;
  generators: readonly Generator[];
  sets: readonly CaptionSet[];
  /** Needed when a generator is a UNet. */
  encoder?: CaptionEncoderLike;
  /** Images per UNet run (default 16); a set's last, smaller batch gets a runner of its own size. */
  batch?: number;
  /** The judge: feature network of the FID proxy and text fidelity (default InceptionV3), as for `fidProxy`. */
  fid?: FidOptions;
  /**
   * A second FID, on the discriminator's own network (default MobileNetV2 at 96²), for comparison; false: none. Not
   * computed when it would be the judge itself.
   */
  discFid?: FidOptions | false;
  /** Progress lines. */
  log?: (line: string) => void;
}

const isUNet = (g: Generator): g is UNetGenerator => "weights" in g;

function checkSet(s: CaptionSet): number {
  const per = s.channels * s.size * s.size, n = s.captions.length;
  if (s.channels !== 1 && s.channels !== 3) throw new Error(`evaluate: set "${s.name}" has ${s.channels} channels`);
  if (s.images.length !== n * per) {
    throw new Error(`evaluate: set "${s.name}" has ${s.images.length} values for ${n} images of ${per}`);
  }
  if (n < 2) throw new Error(`evaluate: set "${s.name}" needs at least 2 images for the FID proxy, got ${n}`);
  const r = s.retrieval;
  if (r && (r.captions.length === 0 || r.images.length !== r.captions.length * per)) {
    throw new Error(
      `evaluate: set "${s.name}" retrieval has ${r.images.length} values for ${r.captions.length} images of ${per}`,
    );
  }
  return n;
}

/**
 * Generates `n` images with a UNet generator, in batches of at most `batch` (image k with seed k and row k of the text),
 * on the runner `runner` gives for each batch size; returns the images and the sampling time alone. Shared by the
 * emoji report and the Fashion-MNIST one (`fashion_eval.ts`).
 */
export async function generateBatched(
  g: UNetGenerator,
  n: number,
  text: TextBatch,
  empty: TextBatch | undefined,
  batch: number,
  runner: (size: number) => Promise<UNetRunner>,
): Promise<{ images: Float32Array; ms: number }> {
  const per = g.decode ? g.decode.channels * g.decode.size ** 2 : g.u.in_channels * g.u.size * g.u.size;
  const tokW = text.tokens.length / n, poolW = text.pooled.length / n;
  const slice = (t: TextBatch, s: number, e: number): TextBatch => ({
    tokens: t.tokens.subarray(s * tokW, e * tokW),
    pooled: t.pooled.subarray(s * poolW, e * poolW),
    length: t.length,
  });
  const images = new Float32Array(n * per);
  let ms = 0;
  for (let s = 0; s < n; s += batch) {
    const e = Math.min(n, s + batch), r = await runner(e - s);
    const seeds = Array.from({ length: e - s }, (_, i) => s + i);
    const t0 = performance.now();
    let out = await generate(r, g.schedule, g.settings, seeds, slice(text, s, e), empty && slice(empty, s, e));
    if (g.decode) out = await g.decode.decode(out, e - s);
    ms += performance.now() - t0;
    images.set(out, s * per);
  }
  return { images, ms };
}

/**
 * UNet runners of the weights in use, by batch size: generators in a row on the same weights (a teacher at several
 * step counts) compile once, and a change of weights frees the old runners first, so at most one set is alive.
 * `release` when done. Shared with `fashion_eval.ts`.
 */
export function unetRunners(executor: Executor) {
  let key: [UNetGenerator["u"], Record<string, Float32Array>] | null = null;
  const runners = new Map<number, UNetRunner>();
  const release = async () => {
    for (const r of runners.values()) await r.dispose();
    runners.clear();
    key = null;
  };
  /** The `runner` of `generateBatched` for `g` (text of `textLength` tokens). */
  const forGenerator = async (g: UNetGenerator, textLength: number) => {
    if (key?.[0] !== g.u || key[1] !== g.weights) await release();
    key = [g.u, g.weights];
    return async (b: number) => {
      let r = runners.get(b);
      if (!r) {
        r = await UNetRunner.create(executor, g.u, g.weights, b, textLength);
        runners.set(b, r);
      }
      return r;
    };
  };
  return { forGenerator, release };
}

// Throws on options evaluateGenerators cannot run; returns the batch and the sets' common image shape.
function checkOptions(o: EvaluateOptions): { batch: number; channels: number; size: number } {
  const { sets, generators } = o;
  const batch = o.batch ?? 16;
  if (!Number.isInteger(batch) || batch < 1) {
    throw new Error(`evaluate: batch must be a positive integer, got ${batch}`);
  }
  if (sets.length === 0 || generators.length === 0) throw new Error("evaluate: needs at least one set and generator");
  for (const list of [sets, generators]) {
    const names = list.map((x) => x.name);
    const dup = names.find((x, i) => names.indexOf(x) !== i);
    if (dup !== undefined) throw new Error(`evaluate: the name "${dup}" is used twice`);
  }
  if (generators.some((g) => g.name === "real")) throw new Error(`evaluate: "real" names the real images`);
  sets.forEach(checkSet);
  const { channels, size } = sets[0];
  if (sets.some((s) => s.channels !== channels || s.size !== size)) {
    throw new Error("evaluate: every set must have the same image channels and size");
  }
  for (const g of generators.filter(isUNet)) {
    const [c, side] = g.decode ? [g.decode.channels, g.decode.size] : [g.u.in_channels, g.u.size];
    if (c !== channels || side !== size) {
      throw new Error(
        `evaluate: generator "${g.name}" makes ${c}×${side}² images, the sets hold ` +
          `${channels}×${size}²`,
      );
    }
  }
  if (generators.some(isUNet) && !o.encoder) throw new Error("evaluate: UNet generators need options.encoder");
  return { batch, channels, size };
}

type SetTexts = Map<string, { text: TextBatch; empty?: TextBatch }>;

// Text conditioning once per set (the encoder caches captions; this keeps encoding out of the timings).
async function encodeSets(o: EvaluateOptions): Promise<SetTexts> {
  const texts: SetTexts = new Map();
  if (!o.generators.some(isUNet)) return texts;
  const enc = o.encoder!, L = enc.dims.length;
  const guided = o.generators.some((g) => isUNet(g) && g.settings.guidance > 1);
  for (const s of o.sets) {
    const text = { ...(await enc.encode(s.captions)), length: L };
    const empty = guided ? { ...(await enc.encode(s.captions.map(() => ""))), length: L } : undefined;
    texts.set(s.name, { text, empty });
  }
  return texts;
}

async function generateCustom(g: CustomGenerator, s: CaptionSet, per: number) {
  const seeds = s.captions.map((_, i) => i);
  const t0 = performance.now();
  const out = await g.generate(s.captions, seeds, s);
  const ms = performance.now() - t0;
  if (out.length !== s.captions.length * per) {
    throw new Error(`evaluate: generator "${g.name}" returned ${out.length} values for ${s.captions.length} images`);
  }
  return { images: Float32Array.from(out), ms };
}

/** Every generator's images on every set (`${generator}/${set}` → displayed images), and their generation times. */
async function generateAll(o: EvaluateOptions, texts: SetTexts, batch: number, per: number) {
  const log = o.log ?? (() => {});
  const generated = new Map<string, Float32Array>();
  const nonFinite = new Map<string, number>();
  const timing = new Map<string, { ms: number; images: number }>();
  const runners = unetRunners(o.executor);
  try {
    for (const g of o.generators) {
      let ms = 0, count = 0;
      const runner = isUNet(g) ? await runners.forGenerator(g, o.encoder!.dims.length) : null;
      for (const s of o.sets) {
        const t = texts.get(s.name);
        const res = isUNet(g)
          ? await generateBatched(g, s.captions.length, t!.text, t!.empty, batch, runner!)
          : await generateCustom(g, s, per);
        nonFinite.set(`${g.name}/${s.name}`, countNonFinite(res.images, per));
        generated.set(`${g.name}/${s.name}`, toDisplayed(res.images));
        ms += res.ms, count += s.captions.length;
      }
      timing.set(g.name, { ms, images: count });
      log(`eval: ${g.name}: ${count} images, ${(ms / count).toFixed(1)} ms/image`);
    }
  } finally {
    await runners.release();
  }
  return { generated, nonFinite, timing };
}

function setInfo(s: CaptionSet): SetInfo {
  const pool = s.retrieval?.captions ?? s.captions;
  return {
    name: s.name,
    label: s.label ?? s.name,
    images: s.captions.length,
    captions: new Set(s.captions).size,
    retrieval: pool.length,
    chanceTop1: chanceFidelity(s.captions, pool, 1),
    chanceTop5: chanceFidelity(s.captions, pool, 5),
  };
}

/**
 * Evaluates every generator on every set (see the module doc). UNet runners are compiled once per (weights, batch
 * size) and kept while consecutive generators share the weights; the feature network is compiled once, for all real
 * and generated images together.
 */
export async function evaluateGenerators(o: EvaluateOptions): Promise<EvalReport> {
  const { batch, channels, size } = checkOptions(o);
  const made = await generateAll(o, await encodeSets(o), batch, channels * size * size);
  const scored = await scoreAll(o, made.generated, size, channels);
  const rows: GeneratorRow[] = o.generators.map((g) => {
    const t = made.timing.get(g.name)!;
    const scores = scored.rows.get(g.name)!;
    for (const s of o.sets) scores[s.name].nonFinite = made.nonFinite.get(`${g.name}/${s.name}`)!;
    return {
      name: g.name,
      sampler: isUNet(g) ? g.settings.sampler : "custom",
      steps: isUNet(g) ? g.settings.steps : null,
      guidance: isUNet(g) ? g.settings.guidance : null,
      sets: scores,
      msPerImage: t.ms / t.images,
    };
  });
  return {
    executor: o.executor.name,
    date: new Date().toISOString(),
    featureDim: scored.judge.dim,
    judge: scored.judge,
    discNet: scored.discNet,
    sets: o.sets.map(setInfo),
    floor: scored.floor,
    rows,
  };
}

/** Features of the named image parts [n, C, S, S] on one network, in one pass; `get(key)` slices them back out. */
async function partFeatures(
  executor: Executor,
  parts: readonly { key: string; data: Float32Array }[],
  size: number,
  channels: number,
  opts: FidOptions,
) {
  const per = channels * size * size, rgb = 3 * size * size;
  const total = parts.reduce((a, p) => a + p.data.length / per, 0);
  const all = new Float32Array(total * rgb);
  const offsets = new Map<string, { at: number; n: number }>();
  let at = 0;
  for (const p of parts) {
    const n = p.data.length / per;
    all.set(asRgb(p.data, channels, size), at * rgb);
    offsets.set(p.key, { at, n });
    at += n;
  }
  const { features, dim } = await pooledFeatures(executor, { data: all, shape: [total, 3, size, size] }, opts);
  const get = (key: string) => {
    const { at, n } = offsets.get(key)!;
    return { f: features.subarray(at * dim, (at + n) * dim), n };
  };
  return { dim, get };
}

/**
 * The scores of every generated set: FID proxy and text fidelity on the judge, FID on the discriminator's network,
 * pixel FD; and the real-vs-real floors. One feature pass per network over all images (the retrieval pools on the
 * judge only).
 */
async function scoreAll(o: EvaluateOptions, generated: Map<string, Float32Array>, size: number, channels: number) {
  const { executor, sets, generators } = o;
  const real = sets.map((s) => ({ key: `real/${s.name}`, data: s.images }));
  const gen = generators.flatMap((g) =>
    sets.map((s) => ({ key: `${g.name}/${s.name}`, data: generated.get(`${g.name}/${s.name}`)! }))
  );
  // Retrieval pools by identity: sets sharing one pool (every training image, say) have its features taken once.
  const poolKeys = new Map<Float32Array, string>();
  for (const s of sets) {
    if (s.retrieval && !poolKeys.has(s.retrieval.images)) poolKeys.set(s.retrieval.images, `pool/${s.name}`);
  }
  const pools = [...poolKeys].map(([data, key]) => ({ key, data }));
  const j = resolveJudge(o.fid);
  const d = o.discFid === false ? null : resolveJudge({ judge: "mobilenet_v2", ...o.discFid });
  const useDisc = d !== null && (d.judge !== j.judge || d.size !== j.size);
  const jf = await partFeatures(executor, [...real, ...pools, ...gen], size, channels, o.fid ?? {});
  const df = useDisc
    ? await partFeatures(executor, [...real, ...gen], size, channels, { judge: "mobilenet_v2", ...o.discFid })
    : null;
  const fd = (f: typeof jf, a: string, b: string) => {
    const x = f.get(a), y = f.get(b);
    return frechetDistanceOfFeatures(x.f, x.n, y.f, y.n, f.dim);
  };
  const pixels = new Map([...real, ...gen].map((p) => [p.key, pixelFeatures(p.data, channels, size)]));
  const pixelFd = (a: string, b: string) => {
    const x = pixels.get(a)!, y = pixels.get(b)!;
    return frechetDistanceOfFeatures(x.f, x.f.length / x.dim, y.f, y.f.length / y.dim, x.dim);
  };
  const rows = new Map<string, Record<string, SetScores>>();
  for (const g of generators) {
    const scores: Record<string, SetScores> = {};
    for (const s of sets) {
      const key = `${g.name}/${s.name}`, r = `real/${s.name}`;
      const pool = jf.get(s.retrieval ? poolKeys.get(s.retrieval.images)! : r).f;
      const [top1, top5] = textFidelity(jf.get(key).f, s.captions, pool, s.retrieval?.captions ?? s.captions, jf.dim);
      scores[s.name] = {
        fid: fd(jf, key, r),
        discFid: df ? fd(df, key, r) : null,
        pixelFd: pixelFd(key, r),
        top1,
        top5,
        images: s.captions.length,
        nonFinite: 0,
      };
    }
    rows.set(g.name, scores);
  }
  const [a, b] = sets.map((s) => `real/${s.name}`);
  const floor = sets.length >= 2
    ? { a: sets[0].name, b: sets[1].name, fid: fd(jf, a, b), discFid: df ? fd(df, a, b) : null, pixelFd: pixelFd(a, b) }
    : null;
  const info = (n: JudgeName, size: number, dim: number): NetInfo => ({ net: n, label: JUDGE_LABELS[n], size, dim });
  return { rows, floor, judge: info(j.judge, j.size, jf.dim), discNet: df && d ? info(d.judge, d.size, df.dim) : null };
}
