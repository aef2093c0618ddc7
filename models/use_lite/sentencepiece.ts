/**
 * A plain SentencePiece Unigram tokenizer (Kudo 2018, "Subword Regularization"): the highest-scoring segmentation of
 * the normalised text into vocabulary pieces, by Viterbi over the lattice of every piece that matches at every
 * position. It follows the rules of Universal Sentence Encoder lite's own tokenizer (tfjs-models' USE tokenizer, as
 * `@energetic-ai/embeddings` ships it), so the build can measure captions in USE's ids without loading a library:
 *
 * - normalisation: NFKC, then every " " becomes "▁" and a non-empty text gets a leading "▁" (so "" has no ids);
 * - the first 6 entries (`�` = unk, `<s>`, `</s>`, `extra_token_id_1..3`) are reserved and never matched;
 * - a piece listed twice matches as its last entry; a score of `null` in vocab.json counts as 0 (it is added);
 * - a position where no piece starts becomes one unk (id 0) of one code point, scored 0; consecutive unks merge.
 *
 * One deliberate difference: USE's own loop treats a running score of exactly 0 as "not set yet", which only
 * matters when a text's first pieces all score 0 (the null-scored "▁:", "▁:)", "▁:(", "▁:-)" at its start); this
 * module takes the true maximum there, as transformers.js's Unigram does.
 *
 * @module
 */

/** One vocabulary entry of USE's vocab.json: the piece and its log-probability (null for a few broken entries). */
export type VocabEntry = [string, number | null];

/** The reserved entries at the start of USE's vocabulary, which its tokenizer never matches. */
export const RESERVED_PIECES = 6;
/** USE's unknown-piece id. */
export const UNK_ID = 0;
/** SentencePiece's word-boundary mark. */
export const SPACE_MARK = "\u2581";

/** USE's normalisation: NFKC, spaces as "▁", a leading "▁" on a non-empty text. */
export function normalizeUse(text: string): string {
  const t = text.normalize("NFKC");
  return t.length > 0 ? SPACE_MARK + t.replaceAll(" ", SPACE_MARK) : t;
}

interface TrieNode {
  next: Map<string, TrieNode>;
  /** The vocabulary id ending here, or -1. */
  id: number;
}

/** A Unigram tokenizer over a USE vocabulary. */
export class UnigramTokenizer {
  readonly #root: TrieNode = { next: new Map(), id: -1 };
  readonly #scores: Float64Array;

  constructor(readonly vocab: readonly VocabEntry[]) {
    if (vocab.length <= RESERVED_PIECES) {
      throw new Error(`UnigramTokenizer: vocabulary has only ${vocab.length} entries`);
    }
    this.#scores = Float64Array.from(vocab, ([, s]) => s ?? 0);
    for (let id = RESERVED_PIECES; id < vocab.length; id++) {
      const [piece] = vocab[id];
      if (typeof piece !== "string" || piece.length === 0) {
        throw new Error(`UnigramTokenizer: vocabulary entry ${id} should be a [piece, score] pair, got ${piece}`);
      }
      let node = this.#root;
      for (const ch of piece) {
        let n = node.next.get(ch);
        if (!n) node.next.set(ch, n = { next: new Map(), id: -1 });
        node = n;
      }
      node.id = id;
    }
  }

  /** The ids of `text`, as USE's tokenizer gives them (see the module comment for its one exception). */
  encode(text: string): number[] {
    const sym = Array.from(normalizeUse(text));
    const n = sym.length;
    // best[e]: the best score of a segmentation of sym[0, e); from[e]: its last piece's start and id.
    const best = new Float64Array(n + 1).fill(-Infinity);
    const start = new Int32Array(n + 1), last = new Int32Array(n + 1);
    best[0] = 0;
    for (let s = 0; s < n; s++) {
      let node: TrieNode | undefined = this.#root, matched = false;
      for (let e = s; e < n && node; e++) {
        node = node.next.get(sym[e]);
        if (node && node.id >= 0) {
          matched = true;
          this.#relax(best, start, last, s, e + 1, this.#scores[node.id], node.id);
        }
      }
      if (!matched) this.#relax(best, start, last, s, s + 1, 0, UNK_ID);
    }
    const ids: number[] = [];
    for (let e = n; e > 0; e = start[e]) ids.push(last[e]);
    ids.reverse();
    return ids.filter((id, i) => !(id === UNK_ID && i > 0 && ids[i - 1] === UNK_ID));
  }

  // Starts arrive in increasing order, so `>=` gives a tie to the later start (the shorter last piece), as USE does.
  #relax(best: Float64Array, start: Int32Array, last: Int32Array, s: number, e: number, score: number, id: number) {
    const v = best[s] + score;
    if (v >= best[e]) {
      best[e] = v;
      start[e] = s;
      last[e] = id;
    }
  }
}
