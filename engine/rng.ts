/**
 * Seeded counter-based random numbers on the host: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC11, 2011).
 *
 * Random inputs (noise, timesteps, shuffles) are drawn here rather than on an executor, so a run gives the same
 * numbers whatever executor it trains on. A counter-based generator makes the whole state two 64-bit integers (key,
 * counter), so checkpoints save and resume it exactly, and `fold` derives independent named streams without
 * threading one mutable generator through the program.
 *
 * @module
 */

// Multipliers and Weyl key increments from the paper / Random123's philox.h.
const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;
const M0L = M0 & 0xffff, M0H = M0 >>> 16, M1L = M1 & 0xffff, M1H = M1 >>> 16;
const TWO32 = 2 ** 32;

// High 32 bits of the 64-bit product a*b. Doubles are exact only to 2^53, so multiply in 16-bit halves; every
// partial product is below 2^32 and every sum below 2^53.
function mulhi(aL: number, aH: number, b: number): number {
  const bL = b & 0xffff, bH = b >>> 16;
  const ll = aL * bL, lh = aL * bH, hl = aH * bL;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aH * bH + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

// One Philox4x32 block into `out`; scalar arguments keep the hot loop free of allocation.
function block(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
  rounds = 10,
): void {
  for (let r = 0; r < rounds; r++) {
    if (r > 0) k0 = (k0 + W0) >>> 0, k1 = (k1 + W1) >>> 0;
    const hi0 = mulhi(M0L, M0H, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1L, M1H, c2), lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0, c1 = lo1, c2 = (hi0 ^ c3 ^ k1) >>> 0, c3 = lo0;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/** The Philox4x32 bijection of a 4-word counter under a 2-word key, as in Random123 (`rounds` 10 is the standard). */
export function philox4x32(counter: ArrayLike<number>, key: ArrayLike<number>, rounds = 10): Uint32Array {
  const out = new Uint32Array(4);
  block(
    counter[0] >>> 0,
    counter[1] >>> 0,
    counter[2] >>> 0,
    counter[3] >>> 0,
    key[0] >>> 0,
    key[1] >>> 0,
    out,
    rounds,
  );
  return out;
}

/**
 * Serializable generator state: `seed` is the 64-bit Philox key (equal to the constructor seed for a root generator,
 * derived for a folded one) and `counter` the number of 128-bit blocks consumed, both as decimal strings because
 * JSON numbers cannot hold 64 bits.
 */
export interface RngState {
  /** The Philox key, a decimal u64. */
  seed: string;
  /** Blocks consumed so far, a decimal u64. */
  counter: string;
}

function toU64(v: bigint | number | string, what: string): bigint {
  const ok = typeof v === "bigint" || (typeof v === "number" && Number.isSafeInteger(v)) ||
    (typeof v === "string" && /^[0-9]+$/.test(v));
  const b = ok ? BigInt(v) : -1n;
  if (b < 0n || b >= 1n << 64n) throw new RangeError(`Rng: ${what} must be an integer in [0, 2^64), got ${String(v)}`);
  return b;
}

function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`Rng: count must be a non-negative integer, got ${n}`);
}

/**
 * A Philox4x32-10 stream. The key is fixed at construction; each draw consumes whole 128-bit blocks (4 words) and
 * advances a 64-bit block counter, discarding unused words of the last block so that the state stays one integer.
 */
export class Rng {
  readonly #k0: number;
  readonly #k1: number;
  #lo = 0;
  #hi = 0;
  readonly #buf = new Uint32Array(4);

  /**
   * A root generator at the start of the stream of `seed`.
   *
   * @param seed 64-bit key: a non-negative safe integer or a bigint below 2^64.
   */
  constructor(seed: number | bigint) {
    const s = toU64(seed, "seed");
    this.#k0 = Number(s & 0xffffffffn);
    this.#k1 = Number(s >> 32n);
  }

  /** Restores a generator saved with `state()`; it continues exactly where the saved one stopped. */
  static fromState(s: RngState): Rng {
    const rng = new Rng(toU64(s.seed, "state.seed"));
    const c = toU64(s.counter, "state.counter");
    rng.#lo = Number(c & 0xffffffffn);
    rng.#hi = Number(c >> 32n);
    return rng;
  }

  /** The state to save in a checkpoint. */
  state(): RngState {
    const key = (BigInt(this.#k1) << 32n) | BigInt(this.#k0);
    return { seed: key.toString(), counter: ((BigInt(this.#hi) << 32n) | BigInt(this.#lo)).toString() };
  }

  /** An independent copy at the same position. */
  clone(): Rng {
    return Rng.fromState(this.state());
  }

  /**
   * Derives an independent stream named by `streamId` (a non-negative safe integer or a string, e.g. a stage name or
   * step number). It depends on this key only, not on the counter, so a name gives the same stream however much the
   * parent has drawn; `fold(1)` and `fold("1")` differ.
   */
  fold(streamId: number | string): Rng {
    let words: number[], tag: number;
    if (typeof streamId === "number") {
      const id = toU64(streamId, "streamId");
      words = [Number(id & 0xffffffffn), Number(id >> 32n)];
      tag = 0;
    } else {
      const bytes = new TextEncoder().encode(streamId);
      const padded = new Uint8Array(Math.max(8, Math.ceil(bytes.length / 8) * 8));
      padded.set(bytes);
      const dv = new DataView(padded.buffer);
      words = Array.from({ length: padded.length / 4 }, (_, i) => dv.getUint32(4 * i, true));
      tag = (bytes.length * 2 + 1) >>> 0; // odd tags for strings, and the length separates "a" from "a\0"
    }
    // Absorb two words per Philox call, chaining the output into the next key: a small keyed sponge whose
    // collisions are as unlikely as those of a 64-bit random function.
    let k0 = this.#k0, k1 = this.#k1;
    const out = new Uint32Array(4);
    for (let i = 0; i < words.length; i += 2) {
      block(words[i], words[i + 1], i / 2, tag, k0, k1, out);
      k0 = out[0], k1 = out[1];
    }
    return new Rng((BigInt(k1) << 32n) | BigInt(k0));
  }

  // Fills `buf` with the next block and advances the counter.
  #next(): Uint32Array {
    block(this.#lo, this.#hi, 0, 0, this.#k0, this.#k1, this.#buf);
    this.#lo = (this.#lo + 1) >>> 0;
    if (this.#lo === 0) {
      this.#hi = (this.#hi + 1) >>> 0;
      if (this.#hi === 0) throw new RangeError("Rng: 64-bit counter exhausted");
    }
    return this.#buf;
  }

  /** `n` raw uniform 32-bit words. */
  uint32(n: number): Uint32Array {
    checkCount(n);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i += 4) {
      const b = this.#next();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = b[j];
    }
    return out;
  }

  /** `n` uniforms in [0, 1), on the 2^-24 grid so every value is exact in float32 and 1 is never produced. */
  uniform(n: number): Float32Array {
    const w = this.uint32(n), out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (w[i] >>> 8) * 2 ** -24;
    return out;
  }

  /** `n` standard normals by Box-Muller, computed in float64 and rounded to float32. */
  normal(n: number): Float32Array {
    checkCount(n);
    const w = this.uint32(n + (n & 1)), out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const r = Math.sqrt(-2 * Math.log((w[i] + 1) / TWO32)); // u1 in (0, 1], so the log is finite
      const theta = 2 * Math.PI * (w[i + 1] / TWO32);
      out[i] = r * Math.cos(theta);
      if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  }

  // Returns a drawer of unbiased integers in [0, range) for range <= 2^32, by rejection. Words are taken in order from
  // whole blocks; what is left of the last block when the caller is done is discarded, as in `uint32`.
  #drawer(): (range: number) => number {
    let j = 4;
    return (range) => {
      const limit = TWO32 - (TWO32 % range);
      let w: number;
      do {
        if (j === 4) this.#next(), j = 0;
        w = this.#buf[j++];
      } while (w >= limit);
      return w % range;
    };
  }

  /** `n` integers uniform in [lo, hi), without modulo bias; needs -2^31 <= lo < hi <= 2^31. */
  randint(n: number, lo: number, hi: number): Int32Array {
    checkCount(n);
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo >= hi || lo < -(2 ** 31) || hi > 2 ** 31) {
      throw new RangeError(`Rng.randint: need integers -2^31 <= lo < hi <= 2^31, got [${lo}, ${hi})`);
    }
    const out = new Int32Array(n), draw = this.#drawer(), range = hi - lo;
    for (let i = 0; i < n; i++) out[i] = lo + draw(range);
    return out;
  }

  /** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): Int32Array {
    checkCount(n);
    if (n > 2 ** 31) throw new RangeError(`Rng.permutation: n must be at most 2^31, got ${n}`);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    const draw = this.#drawer();
    for (let i = n - 1; i > 0; i--) {
      const j = draw(i + 1), t = out[i];
      out[i] = out[j], out[j] = t;
    }
    return out;
  }
}
