/**
 * The shape of an evaluation report (what `evaluateGenerators` returns and `reportMarkdown` writes), on its own so
 * that the writer and the evaluation need not import each other.
 *
 * @module
 */
import type { JudgeName } from "./fid.ts";

/** One generator on one set. */
export interface SetScores {
  /** FID proxy on the judge (`EvalReport.judge`). */
  fid: number;
  /** The same on the discriminator's network (`EvalReport.discNet`); null when not computed. */
  discFid: number | null;
  /** Fréchet distance of `pixelFeatures` (colour and layout; independent of the feature networks). */
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
  /** Real images text fidelity retrieves among (the set's own, or its `retrieval` pool). */
  retrieval: number;
  /** Expected top-1 / top-5 of a generator whose nearest real images were a uniformly random subset. */
  chanceTop1: number;
  chanceTop5: number;
}

/** A feature network as the report names it. */
export interface NetInfo {
  net: JudgeName;
  label: string;
  /** Square input size the 32×32 images are upsampled to (bilinear, align corners). */
  size: number;
  dim: number;
}

/** What `evaluateGenerators` returns. */
export interface EvalReport {
  executor: string;
  /** ISO 8601 time the evaluation finished. */
  date: string;
  /** Width of the judge's pooled features. */
  featureDim: number;
  /** The network of `fid` and of text fidelity. */
  judge: NetInfo;
  /** The network of `discFid`, the discriminator's; null when not computed. */
  discNet: NetInfo | null;
  sets: SetInfo[];
  /** FID proxy between the real images of the first two sets: the floor a perfect generator would show. */
  floor: { a: string; b: string; fid: number; discFid: number | null; pixelFd: number } | null;
  rows: GeneratorRow[];
}
