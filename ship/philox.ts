/**
 * The noise of a shipped generator: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC11, 2011) keyed by the seed, named
 * streams derived by `fold`, and standard normals by Box-Muller, drawn exactly as the project's `Rng`
 * (engine/rng.ts) draws them, so an exported folder reproduces the project's samples for a seed. This module imports
 * nothing: a browser page uses it as it is.
 *
 * The one place where JavaScript engines may disagree is Box-Muller's logarithm, sine and cosine: `Math.log`,
 * `Math.sin` and `Math.cos` are not required to be correctly rounded, and V8, SpiderMonkey and JavaScriptCore differ
 * in the last bit for some arguments. So they are computed here from +, −, ×, ÷ and √ alone, which IEEE 754 rounds
 * the same everywhere: every engine gets the same float32 bits. They agree with V8's (Deno's, Chrome's) to a float64
 * ulp or two, so after rounding to float32 a value differs from the project's `Rng` in about one draw in 10^7, and then
 * by one float32 ulp.
 *
 * @module
 */

const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;
const M0L = M0 & 0xffff, M0H = M0 >>> 16, M1L = M1 & 0xffff, M1H = M1 >>> 16;
const TWO32 = 2 ** 32;

// High 32 bits of a*b, in 16-bit halves: doubles hold integers exactly only up to 2^53.
function mulhi(aL: number, aH: number, b: number): number {
  const bL = b & 0xffff, bH = b >>> 16;
  const ll = aL * bL, lh = aL * bH, hl = aH * bL;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aH * bH + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

/** One Philox4x32-10 block of the counter (c0…c3) under the key (k0, k1), into `out`. */
function block(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array): void {
  for (let r = 0; r < 10; r++) {
    if (r > 0) k0 = (k0 + W0) >>> 0, k1 = (k1 + W1) >>> 0;
    const hi0 = mulhi(M0L, M0H, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1L, M1H, c2), lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0, c1 = lo1, c2 = (hi0 ^ c3 ^ k1) >>> 0, c3 = lo0;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// ln 2 and π/2 in two parts (fdlibm's): the high parts have trailing zero bits, so small multiples of them are exact.
const LN2_HI = 6.93147180369123816490e-1, LN2_LO = 1.90821492927058770002e-10;
const PIO2_HI = 1.57079632673412561417, PIO2_LO = 6.07710050650619224932e-11;

/** ln((v + 1)/2^32) for a 32-bit word v, by 2·atanh((m − 1)/(m + 1)) on the mantissa m ∈ [√½, √2]. */
export function logUnit(v: number): number {
  const n = v + 1; // 1 … 2^32, exact
  if (n === TWO32) return 0;
  let e = 31 - Math.clz32(n), m = n / 2 ** e; // m ∈ [1, 2), exact
  if (m > Math.SQRT2) m /= 2, e += 1;
  const k = e - 32, s = (m - 1) / (m + 1), s2 = s * s;
  // |s| ≤ 0.1716, so s^2 ≤ 0.0295 and 13 terms of the odd series leave less than 1e-19.
  let p = 0;
  for (let j = 25; j >= 3; j -= 2) p = p * s2 + 1 / j;
  const lnM = 2 * s + 2 * s * s2 * p;
  return k * LN2_HI + (lnM + k * LN2_LO);
}

// (−1)^k/(2k+1)! and (−1)^k/(2k)! for k = 1…9, by divisions only, so that every engine gets the same constants.
const INV_FACT = Array.from({ length: 20 }, (_, n) => n).reduce(
  (a, n) => [...a, n === 0 ? 1 : a[n - 1] / n],
  [] as number[],
);
const SIN_C = Array.from({ length: 9 }, (_, i) => (i % 2 ? 1 : -1) * INV_FACT[2 * i + 3]);
const COS_C = Array.from({ length: 9 }, (_, i) => (i % 2 ? 1 : -1) * INV_FACT[2 * i + 2]);

/** sin and cos of θ ∈ [0, 2π + ε), by reduction to |a| ≤ π/4 around the nearest multiple of π/2 and Taylor series. */
export function sinCos(theta: number): [number, number] {
  const q = Math.round(theta / PIO2_HI);
  const a = (theta - q * PIO2_HI) - q * PIO2_LO, a2 = a * a;
  // |a| ≤ π/4 + ε: terms up to a^19/19! and a^18/18! leave less than 1e-18.
  let s = 0, c = 0;
  for (let k = 8; k >= 0; k--) s = SIN_C[k] + a2 * s, c = COS_C[k] + a2 * c;
  const sa = a + a * a2 * s, ca = 1 + a2 * c;
  switch (((q % 4) + 4) % 4) {
    case 0:
      return [sa, ca];
    case 1:
      return [ca, -sa];
    case 2:
      return [-sa, -ca];
    default:
      return [-ca, sa];
  }
}

/**
 * A Philox4x32-10 stream: a 64-bit key and a 64-bit block counter. Every draw takes whole 128-bit blocks and drops
 * the unused words of the last one, as the project's `Rng` does.
 */
export class Philox {
  #lo = 0;
  #hi = 0;
  readonly #buf = new Uint32Array(4);

  private constructor(private readonly k0: number, private readonly k1: number) {}

  /** The root stream of a seed (a safe non-negative integer). */
  static seeded(seed: number): Philox {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be an integer ≥ 0, got ${seed}`);
    return new Philox(seed % TWO32, Math.floor(seed / TWO32));
  }

  /** The stream named `name` under this key (independent of what this one has drawn). */
  fold(name: string): Philox {
    const bytes = new TextEncoder().encode(name);
    const padded = new Uint8Array(Math.max(8, Math.ceil(bytes.length / 8) * 8));
    padded.set(bytes);
    const dv = new DataView(padded.buffer);
    const words = Array.from({ length: padded.length / 4 }, (_, i) => dv.getUint32(4 * i, true));
    const tag = (bytes.length * 2 + 1) >>> 0;
    let k0 = this.k0, k1 = this.k1;
    const out = new Uint32Array(4);
    for (let i = 0; i < words.length; i += 2) {
      block(words[i], words[i + 1], i / 2, tag, k0, k1, out);
      k0 = out[0], k1 = out[1];
    }
    return new Philox(k0, k1);
  }

  /** `n` uniform 32-bit words. */
  uint32(n: number): Uint32Array {
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i += 4) {
      block(this.#lo, this.#hi, 0, 0, this.k0, this.k1, this.#buf);
      this.#lo = (this.#lo + 1) >>> 0;
      if (this.#lo === 0) this.#hi = (this.#hi + 1) >>> 0;
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = this.#buf[j];
    }
    return out;
  }

  /** `n` standard normals: Box-Muller on word pairs in float64, rounded to float32. */
  normal(n: number): Float32Array {
    const w = this.uint32(n + (n & 1)), out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const r = Math.sqrt(-2 * logUnit(w[i]));
      const [s, c] = sinCos(2 * Math.PI * (w[i + 1] / TWO32));
      out[i] = r * c;
      if (i + 1 < n) out[i + 1] = r * s;
    }
    return out;
  }
}
