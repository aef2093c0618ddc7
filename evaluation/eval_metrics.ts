/**
 * The pure measures of the evaluation report (`evaluate.ts`): 8-bit display rounding, top-k text fidelity by nearest
 * real images and its chance level, and the pixel features of the pixel FD.
 *
 * @module
 */

/**
 * Clamps to [-1, 1] and rounds to the 8-bit grid v/127.5 − 1 (as the image datasets store and `gridToPng` writes), in
 * place. NaN stays NaN, so a diverged model shows as a NaN FID rather than as grey images. Returns `x`.
 */
export function toDisplayed(x: Float32Array): Float32Array {
  for (let i = 0; i < x.length; i++) x[i] = Math.max(0, Math.min(255, Math.round((x[i] + 1) * 127.5))) / 127.5 - 1;
  return x;
}

/** Number of images (`per` values each) holding a NaN or an infinity. */
export function countNonFinite(x: Float32Array, per: number): number {
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

/** Side of the pooled images whose pixels `pixelFeatures` returns. */
export const PIXEL_POOL = 8;

/**
 * Colour-and-layout features of images [N, C, S, S] in [-1, 1]: each channel averaged over (S/P)×(S/P) blocks to
 * P×P (P = `PIXEL_POOL`, or S if smaller; S must be a multiple), C·P² values per image. Their Fréchet distance, the
 * pixel FD, checks what the feature networks miss: ImageNet networks are trained to be nearly blind to colour, and
 * MobileNetV2 is also ADD's discriminator, which a student can satisfy without the right colours.
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

/** The feature networks take RGB: grey images [N, 1, S, S] are replicated to [N, 3, S, S]; RGB passes as is. */
export function asRgb(x: Float32Array, channels: number, size: number): Float32Array {
  if (channels === 3) return x;
  const per = size * size, n = x.length / per, out = new Float32Array(n * 3 * per);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) out.set(x.subarray(i * per, (i + 1) * per), (i * 3 + c) * per);
  }
  return out;
}
