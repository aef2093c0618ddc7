/**
 * The evaluation of text-to-image generators on caption sets: for each real image of a set, one image is generated
 * from its caption (seed = the image's index in the set); then, in pooled MobileNetV2 feature space (`fid.ts`):
 *
 * - FID proxy: the Fréchet distance between the generated and the real images of the set;
 * - text fidelity: the share of generated images whose k nearest real images (L2, among all real images of the set)
 *   include one with the prompt's caption, for k = 1 and 5. Several real images may share a caption, so a hit is
 *   counted by caption, and the chance level (a random k-subset of the real images) is reported beside it;
 * - wall time per image of generation alone (UNet compilation, text encoding and feature extraction excluded).
 *
 * The FID proxy comes from `frechetDistanceOfFeatures`, which works on the n×n cross-Gram matrix whenever a set has
 * fewer images than the 1,280 feature dimensions (the emoji held-out split has 351), exact and much cheaper than the
 * 1280×1280 covariance route.
 *
 * Generated images are clamped to [-1, 1] and rounded to 8 bits before their features are taken: what a viewer (or a
 * PNG) shows, and the same grid of values the real images lie on. An untrained UNet's outputs far outside [-1, 1]
 * would otherwise dominate the distances.
 *
 * @module
 */
import type { Executor } from "../engine/executors/executor.ts";
import { generate, type SampleSettings, type TextBatch, UNetRunner } from "./diffusion/generate.ts";
import type { Schedule } from "./diffusion/schedules.ts";
import { type FidOptions, frechetDistanceOfFeatures, pooledFeatures } from "./fid.ts";
import type { UNetParams } from "./unet.ts";

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
}

/** A UNet sampled with a sampler: the weights are compiled once per batch size and shared by generators using them. */
export interface UNetGenerator {
  name: string;
  u: UNetParams;
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
  /** Feature network options (network, input size, batch), as for `fidProxy`. */
  fid?: FidOptions;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** One generator on one set. */
export interface SetScores {
  fid: number;
  /** Fréchet distance of `pixelFeatures` (colour and layout; independent of the feature network). */
  pixelFd: number;
  top1: number;
  top5: number;
  images: number;
  /** Generated images with a NaN or infinite value (before clamping). */
  nonFinite: number;
}

/** One generator's row of the report. */
export interface GeneratorRow {
  name: string;
  /** Sampler and steps, or "custom". */
  sampler: string;
  steps: number | null;
  guidance: number | null;
  sets: Record<string, SetScores>;
  /** Generation wall time per image over all sets, in ms. */
  msPerImage: number;
}

/** One caption set's description in the report. */
export interface SetInfo {
  name: string;
  label: string;
  images: number;
  /** Distinct captions. */
  captions: number;
  /** Expected top-1 / top-5 of a generator whose nearest real images were a uniformly random subset. */
  chanceTop1: number;
  chanceTop5: number;
}

/** What `evaluateGenerators` returns. */
export interface EvalReport {
  executor: string;
  /** ISO 8601 time the evaluation finished. */
  date: string;
  /** Width of the pooled features. */
  featureDim: number;
  sets: SetInfo[];
  /** FID proxy between the real images of the first two sets: the floor a perfect generator would show. */
  floor: { a: string; b: string; fid: number; pixelFd: number } | null;
  rows: GeneratorRow[];
}

const isUNet = (g: Generator): g is UNetGenerator => "weights" in g;

/**
 * Clamps to [-1, 1] and rounds to the 8-bit grid v/127.5 − 1 (as the image datasets store and `gridToPng` writes), in
 * place. NaN stays NaN, so a diverged model shows as a NaN FID rather than as grey images. Returns `x`.
 */
export function toDisplayed(x: Float32Array): Float32Array {
  for (let i = 0; i < x.length; i++) x[i] = Math.max(0, Math.min(255, Math.round((x[i] + 1) * 127.5))) / 127.5 - 1;
  return x;
}

/** Number of images (`per` values each) holding a NaN or an infinity. */
function countNonFinite(x: Float32Array, per: number): number {
  let bad = 0;
  for (let s = 0; s < x.length; s += per) {
    for (let i = s; i < s + per; i++) {
      if (!Number.isFinite(x[i])) {
        bad++;
        break;
      }
    }
  }
  return bad;
}

/**
 * Top-k text fidelity: for each generated feature row i (width d), the k nearest real rows by squared L2 distance
 * (float64, ties to the lower index); a hit when one of them has `prompts[i]` as caption. Returns the hit rate per k.
 */
export function textFidelity(
  gen: ArrayLike<number>,
  prompts: readonly string[],
  real: ArrayLike<number>,
  realCaptions: readonly string[],
  d: number,
  ks: readonly number[] = [1, 5],
): number[] {
  const n = prompts.length, m = realCaptions.length;
  if (gen.length !== n * d || real.length !== m * d) {
    throw new Error(`textFidelity: ${gen.length} and ${real.length} values for ${n} and ${m} rows of width ${d}`);
  }
  if (m === 0) throw new Error("textFidelity: no real images");
  const kMax = Math.min(m, Math.max(...ks));
  const hits = ks.map(() => 0);
  const best = new Int32Array(kMax), bestD = new Float64Array(kMax);
  for (let i = 0; i < n; i++) {
    let have = 0;
    for (let j = 0; j < m; j++) {
      let s = 0;
      for (let t = 0, a = i * d, b = j * d; t < d; t++) {
        const diff = gen[a + t] - real[b + t];
        s += diff * diff;
      }
      // Insertion into the sorted k best; strict < keeps the earlier index first on ties.
      if (have < kMax || s < bestD[have - 1]) {
        let p = have < kMax ? have++ : kMax - 1;
        while (p > 0 && s < bestD[p - 1]) {
          bestD[p] = bestD[p - 1];
          best[p] = best[p - 1];
          p--;
        }
        bestD[p] = s;
        best[p] = j;
      }
    }
    ks.forEach((k, q) => {
      for (let r = 0; r < Math.min(k, have); r++) {
        if (realCaptions[best[r]] === prompts[i]) {
          hits[q]++;
          break;
        }
      }
    });
  }
  return hits.map((h) => h / n);
}

/**
 * The chance level of `textFidelity` when every prompt is one of the real images' captions: the mean over prompts of
 * P(a uniformly random k-subset of the m real images holds one of the c with the prompt's caption)
 * = 1 − C(m−c, k)/C(m, k).
 */
export function chanceFidelity(prompts: readonly string[], realCaptions: readonly string[], k: number): number {
  const m = realCaptions.length, kk = Math.min(k, m);
  const count = new Map<string, number>();
  for (const c of realCaptions) count.set(c, (count.get(c) ?? 0) + 1);
  let sum = 0;
  for (const p of prompts) {
    const c = count.get(p) ?? 0;
    let miss = 1; // C(m−c, k)/C(m, k) = Π_{t<k} (m−c−t)/(m−t)
    for (let t = 0; t < kk; t++) miss *= Math.max(0, m - c - t) / (m - t);
    sum += 1 - miss;
  }
  return prompts.length ? sum / prompts.length : 0;
}

function checkSet(s: CaptionSet): number {
  const per = s.channels * s.size * s.size, n = s.captions.length;
  if (s.channels !== 1 && s.channels !== 3) throw new Error(`evaluate: set "${s.name}" has ${s.channels} channels`);
  if (s.images.length !== n * per) {
    throw new Error(`evaluate: set "${s.name}" has ${s.images.length} values for ${n} images of ${per}`);
  }
  if (n < 2) throw new Error(`evaluate: set "${s.name}" needs at least 2 images for the FID proxy, got ${n}`);
  return n;
}

/** Side of the pooled images whose pixels `pixelFeatures` returns. */
export const PIXEL_POOL = 8;

/**
 * Colour-and-layout features of images [N, C, S, S] in [-1, 1]: each channel averaged over (S/P)×(S/P) blocks to
 * P×P (P = `PIXEL_POOL`, or S if smaller; S must be a multiple), C·P² values per image. Their Fréchet distance, the
 * pixel FD, checks what MobileNetV2 features miss: an ImageNet network is trained to be nearly blind to colour, and
 * the same network is ADD's discriminator, which a student can satisfy without the right colours.
 */
export function pixelFeatures(x: Float32Array, channels: number, size: number): { f: Float64Array; dim: number } {
  const p = Math.min(PIXEL_POOL, size), k = size / p;
  if (!Number.isInteger(k)) throw new Error(`pixelFeatures: image size ${size} is not a multiple of ${p}`);
  const n = x.length / (channels * size * size), dim = channels * p * p, f = new Float64Array(n * dim);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < channels; c++) {
      const src = (i * channels + c) * size * size;
      for (let y = 0; y < size; y++) {
        for (let xx = 0; xx < size; xx++) {
          f[i * dim + c * p * p + Math.floor(y / k) * p + Math.floor(xx / k)] += x[src + y * size + xx] / (k * k);
        }
      }
    }
  }
  return { f, dim };
}

// The feature network takes RGB: grey is replicated.
function asRgb(x: Float32Array, channels: number, size: number): Float32Array {
  if (channels === 3) return x;
  const per = size * size, n = x.length / per, out = new Float32Array(n * 3 * per);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) out.set(x.subarray(i * per, (i + 1) * per), (i * 3 + c) * per);
  }
  return out;
}

/** Generates one image per real image of `set` with a UNet, in batches; returns the images and the sampling time. */
async function generateSet(
  g: UNetGenerator,
  set: CaptionSet,
  text: TextBatch,
  empty: TextBatch | undefined,
  batch: number,
  runner: (size: number) => Promise<UNetRunner>,
): Promise<{ images: Float32Array; ms: number }> {
  const n = set.captions.length, per = set.channels * set.size * set.size, L = text.length;
  const tokW = text.tokens.length / n, poolW = text.pooled.length / n;
  const slice = (t: TextBatch, s: number, e: number): TextBatch => ({
    tokens: t.tokens.subarray(s * tokW, e * tokW),
    pooled: t.pooled.subarray(s * poolW, e * poolW),
    length: L,
  });
  const images = new Float32Array(n * per);
  let ms = 0;
  for (let s = 0; s < n; s += batch) {
    const e = Math.min(n, s + batch), r = await runner(e - s);
    const seeds = Array.from({ length: e - s }, (_, i) => s + i);
    const t0 = performance.now();
    const out = await generate(r, g.schedule, g.settings, seeds, slice(text, s, e), empty && slice(empty, s, e));
    ms += performance.now() - t0;
    images.set(out, s * per);
  }
  return { images, ms };
}

/**
 * Evaluates every generator on every set (see the module doc). UNet runners are compiled once per (weights, batch
 * size) and kept while consecutive generators share the weights; the feature network is compiled once, for all real
 * and generated images together.
 */
export async function evaluateGenerators(o: EvaluateOptions): Promise<EvalReport> {
  const { executor, sets, generators } = o;
  const log = o.log ?? (() => {});
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
    if (g.u.in_channels !== channels || g.u.size !== size) {
      throw new Error(
        `evaluate: generator "${g.name}" makes ${g.u.in_channels}×${g.u.size}² images, the sets hold ` +
          `${channels}×${size}²`,
      );
    }
  }
  const anyUNet = generators.some(isUNet);
  if (anyUNet && !o.encoder) throw new Error("evaluate: UNet generators need options.encoder");

  // Text conditioning once per set (the encoder caches captions; this keeps encoding out of the timings).
  const texts = new Map<string, { text: TextBatch; empty?: TextBatch }>();
  if (anyUNet) {
    const enc = o.encoder!, L = enc.dims.length;
    const guided = generators.some((g) => isUNet(g) && g.settings.guidance > 1);
    for (const s of sets) {
      const text = { ...(await enc.encode(s.captions)), length: L };
      const empty = guided ? { ...(await enc.encode(s.captions.map(() => ""))), length: L } : undefined;
      texts.set(s.name, { text, empty });
    }
  }

  const per = channels * size * size;
  const generated = new Map<string, Float32Array>(); // `${generator}/${set}` → images
  const nonFinite = new Map<string, number>();
  const keep = (key: string, images: Float32Array) => {
    nonFinite.set(key, countNonFinite(images, per));
    generated.set(key, toDisplayed(images));
  };
  const timing = new Map<string, { ms: number; images: number }>();
  // Runners of the current weights by batch size; generators in a row on the same weights reuse them.
  const cache = {
    key: null as [UNetParams, Record<string, Float32Array>] | null,
    runners: new Map<number, UNetRunner>(),
  };
  const release = async () => {
    for (const r of cache.runners.values()) await r.dispose();
    cache.runners.clear();
    cache.key = null;
  };
  try {
    for (const g of generators) {
      let ms = 0, count = 0;
      if (isUNet(g)) {
        if (cache.key?.[0] !== g.u || cache.key[1] !== g.weights) await release();
        cache.key = [g.u, g.weights];
        const runner = async (b: number) => {
          let r = cache.runners.get(b);
          if (!r) {
            r = await UNetRunner.create(executor, g.u, g.weights, b, o.encoder!.dims.length);
            cache.runners.set(b, r);
          }
          return r;
        };
        for (const s of sets) {
          const { text, empty } = texts.get(s.name)!;
          const res = await generateSet(g, s, text, empty, batch, runner);
          keep(`${g.name}/${s.name}`, res.images);
          ms += res.ms, count += s.captions.length;
        }
      } else {
        for (const s of sets) {
          const seeds = s.captions.map((_, i) => i);
          const t0 = performance.now();
          const out = await g.generate(s.captions, seeds, s);
          ms += performance.now() - t0, count += s.captions.length;
          if (out.length !== s.captions.length * per) {
            throw new Error(
              `evaluate: generator "${g.name}" returned ${out.length} values for ${s.captions.length} images`,
            );
          }
          keep(`${g.name}/${s.name}`, Float32Array.from(out));
        }
      }
      timing.set(g.name, { ms, images: count });
      log(`eval: ${g.name}: ${count} images, ${(ms / count).toFixed(1)} ms/image`);
    }
  } finally {
    await release();
  }

  // One feature pass over everything: real sets first, then each generator's sets.
  const parts: { key: string; data: Float32Array }[] = [
    ...sets.map((s) => ({ key: `real/${s.name}`, data: s.images })),
    ...generators.flatMap((g) =>
      sets.map((s) => ({ key: `${g.name}/${s.name}`, data: generated.get(`${g.name}/${s.name}`)! }))
    ),
  ];
  const total = parts.reduce((a, p) => a + p.data.length / per, 0);
  const all = new Float32Array(total * 3 * size * size);
  const offsets = new Map<string, { at: number; n: number }>();
  let at = 0;
  for (const p of parts) {
    const n = p.data.length / per;
    all.set(asRgb(p.data, channels, size), at * 3 * size * size);
    offsets.set(p.key, { at, n });
    at += n;
  }
  const { features, dim } = await pooledFeatures(executor, { data: all, shape: [total, 3, size, size] }, o.fid);
  const feats = (key: string) => {
    const { at, n } = offsets.get(key)!;
    return { f: features.subarray(at * dim, (at + n) * dim), n };
  };

  const pixels = new Map(parts.map((p) => [p.key, pixelFeatures(p.data, channels, size)]));
  const pixelFd = (a: string, b: string) => {
    const x = pixels.get(a)!, y = pixels.get(b)!;
    return frechetDistanceOfFeatures(x.f, x.f.length / x.dim, y.f, y.f.length / y.dim, x.dim);
  };
  const rows: GeneratorRow[] = generators.map((g) => {
    const scores: Record<string, SetScores> = {};
    for (const s of sets) {
      const gen = feats(`${g.name}/${s.name}`), real = feats(`real/${s.name}`);
      const fid = frechetDistanceOfFeatures(gen.f, gen.n, real.f, real.n, dim);
      const [top1, top5] = textFidelity(gen.f, s.captions, real.f, s.captions, dim, [1, 5]);
      scores[s.name] = {
        fid,
        pixelFd: pixelFd(`${g.name}/${s.name}`, `real/${s.name}`),
        top1,
        top5,
        images: gen.n,
        nonFinite: nonFinite.get(`${g.name}/${s.name}`)!,
      };
    }
    const t = timing.get(g.name)!;
    return {
      name: g.name,
      sampler: isUNet(g) ? g.settings.sampler : "custom",
      steps: isUNet(g) ? g.settings.steps : null,
      guidance: isUNet(g) ? g.settings.guidance : null,
      sets: scores,
      msPerImage: t.ms / t.images,
    };
  });
  const floor = sets.length >= 2
    ? (() => {
      const a = feats(`real/${sets[0].name}`), b = feats(`real/${sets[1].name}`);
      return {
        a: sets[0].name,
        b: sets[1].name,
        fid: frechetDistanceOfFeatures(a.f, a.n, b.f, b.n, dim),
        pixelFd: pixelFd(`real/${sets[0].name}`, `real/${sets[1].name}`),
      };
    })()
    : null;
  return {
    executor: executor.name,
    date: new Date().toISOString(),
    featureDim: dim,
    sets: sets.map((s) => ({
      name: s.name,
      label: s.label ?? s.name,
      images: s.captions.length,
      captions: new Set(s.captions).size,
      chanceTop1: chanceFidelity(s.captions, s.captions, 1),
      chanceTop5: chanceFidelity(s.captions, s.captions, 5),
    })),
    floor,
    rows,
  };
}

const fmt = (v: number, digits: number) => Number.isFinite(v) ? v.toFixed(digits) : String(v);
const pct = (v: number) => `${(100 * v).toFixed(1)}%`;

/**
 * The report as markdown: one row per generator; FID-proxy columns for every set, then top-1/top-5 per set, then
 * ms/image; below it the real-vs-real floor, the chance levels, the executor, the date and `meta` (e.g. step, models).
 */
export function reportMarkdown(r: EvalReport, meta: Record<string, string | number | null> = {}): string {
  const head = [
    "generator",
    ...r.sets.map((s) => `${s.label} FID-proxy`),
    ...r.sets.map((s) => `${s.label} pixel FD`),
    ...r.sets.flatMap((s) => [`${s.label} top-1`, `${s.label} top-5`]),
    "ms/image",
  ];
  const lines = [
    "# Evaluation report",
    "",
    `| ${head.join(" | ")} |`,
    `| ${head.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...r.rows.map((row) => {
      const cells = [
        row.name,
        ...r.sets.map((s) => fmt(row.sets[s.name].fid, 2)),
        ...r.sets.map((s) => fmt(row.sets[s.name].pixelFd, 2)),
        ...r.sets.flatMap((s) => [pct(row.sets[s.name].top1), pct(row.sets[s.name].top5)]),
        fmt(row.msPerImage, 1),
      ];
      return `| ${cells.join(" | ")} |`;
    }),
    "",
  ];
  for (const row of r.rows) {
    const bad = r.sets.filter((s) => row.sets[s.name].nonFinite > 0);
    if (bad.length) {
      lines.push(
        `**${row.name} produced NaN or infinite values** in ${
          bad.map((s) => `${row.sets[s.name].nonFinite} ${s.label} images`).join(" and ")
        }.`,
        "",
      );
    }
  }
  if (r.floor) {
    const la = r.sets.find((s) => s.name === r.floor!.a)!.label, lb = r.sets.find((s) => s.name === r.floor!.b)!.label;
    lines.push(
      `Real-vs-real floors (${la} real vs ${lb} real): FID-proxy ${fmt(r.floor.fid, 2)}, pixel FD ` +
        `${fmt(r.floor.pixelFd, 2)}`,
      "",
      `Pixel FD: Fréchet distance of the images average-pooled to ${PIXEL_POOL}×${PIXEL_POOL} per channel, a check ` +
        "independent of MobileNetV2 (nearly blind to colour, and also the discriminator's feature network).",
      "",
    );
  }
  lines.push(
    "Text fidelity: share of generated images whose nearest (top-1) or 5 nearest (top-5) real images of the set, in " +
      "pooled MobileNetV2 feature space, include one with the prompt's caption. Chance levels:",
    "",
    ...r.sets.map((s) =>
      `- ${s.label}: ${s.images} images, ${s.captions} distinct captions; chance top-1 ${pct(s.chanceTop1)}, ` +
      `top-5 ${pct(s.chanceTop5)}`
    ),
    "",
    `Generators: ${
      r.rows.map((x) =>
        `${x.name} = ${x.sampler}${x.steps === null ? "" : ` ${x.steps} step${x.steps === 1 ? "" : "s"}`}` +
        (x.guidance !== null && x.guidance > 1 ? `, guidance ${x.guidance}` : "")
      ).join("; ")
    }.`,
    "",
    `- executor: ${r.executor}`,
    `- date: ${r.date}`,
    ...Object.entries(meta).map(([k, v]) => `- ${k}: ${v ?? "—"}`),
    `- ms/image: generation wall time only (no compilation, text encoding or feature extraction)`,
    "",
  );
  return lines.join("\n");
}
