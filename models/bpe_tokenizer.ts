/**
 * A CLIP-style byte-level BPE tokenizer (Radford et al. 2021; Sennrich et al. 2016), learned from a list of captions,
 * written in the Hugging Face `tokenizers` JSON format that transformers.js's `CLIPTokenizer` reads, and encoded on
 * the host with exactly the steps transformers.js takes, so both give the same ids.
 *
 * As in CLIP: text is NFC-normalised, whitespace runs become one space, and it is lower-cased; it is split into
 * letter runs, single digits and punctuation runs; each piece becomes its UTF-8 bytes, each byte a printable
 * character (`bytesToUnicode`), and the last character of a piece carries `</w>`. The vocabulary is the 256 byte
 * characters, the same with `</w>`, one token per learned merge, then `<|startoftext|>` and `<|endoftext|>`, so
 * `<|endoftext|>` has the highest id (CLIP pools at the argmax of the ids). Padding uses `<|endoftext|>` too.
 *
 * @module
 */

/** The start-of-text token. */
export const BOS_TOKEN = "<|startoftext|>";
/** The end-of-text token, also used for padding and unknown tokens. */
export const EOS_TOKEN = "<|endoftext|>";
const EOW = "</w>";

/** CLIP's pre-tokenizer pattern (from `openai/clip-vit-base-patch32`'s tokenizer.json). */
export const CLIP_SPLIT_PATTERN =
  "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";
const WHITESPACE_PATTERN = "\\s+";

/**
 * GPT-2/CLIP's map from bytes to printable characters: printable Latin-1 bytes map to themselves, the other 68 to
 * U+0100 onwards. Index by byte. The order of first appearance here is also the order of the base vocabulary.
 */
export function bytesToUnicode(): { byteChar: string[]; order: number[] } {
  const bs: number[] = [];
  for (let c = 0x21; c <= 0x7e; c++) bs.push(c);
  for (let c = 0xa1; c <= 0xac; c++) bs.push(c);
  for (let c = 0xae; c <= 0xff; c++) bs.push(c);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const byteChar = new Array<string>(256);
  bs.forEach((b, i) => byteChar[b] = String.fromCodePoint(cs[i]));
  return { byteChar, order: bs };
}

const { byteChar: BYTE_CHAR, order: BYTE_ORDER } = bytesToUnicode();
const utf8 = new TextEncoder();

/** CLIP's normaliser: NFC, whitespace runs → one space, lower case (the same JS regex transformers.js compiles). */
export function normalizeText(text: string): string {
  return text.normalize("NFC").replaceAll(new RegExp(WHITESPACE_PATTERN, "gu"), " ").toLowerCase();
}

/** The pre-tokenizer: normalised text → byte-level pieces (one per word, digit or punctuation run). */
export function preTokenize(text: string): string[] {
  const pieces = normalizeText(text).match(new RegExp(CLIP_SPLIT_PATTERN, "gu")) ?? [];
  return pieces.filter((p) => p.length > 0).map((p) => Array.from(utf8.encode(p), (b) => BYTE_CHAR[b]).join(""));
}

/** The symbols BPE starts from: one per character, the last with `</w>`. */
function initialSymbols(piece: string): string[] {
  const w = Array.from(piece);
  w[w.length - 1] += EOW;
  return w;
}

/** A learned vocabulary: `vocab[id]` is the token string; `merges` in rank order. */
export interface BpeModel {
  vocab: string[];
  merges: [string, string][];
}

/**
 * Learns BPE merges from `captions` until the vocabulary (bytes, bytes with `</w>`, merges, the two specials) has
 * `vocabSize` tokens or no pair occurs twice. Each step merges the most frequent adjacent pair over all words
 * weighted by their counts; ties go to the lexicographically smallest pair, so the result depends only on the
 * captions and `vocabSize`.
 */
export function learnBpe(captions: readonly string[], vocabSize: number): BpeModel {
  const base = BYTE_ORDER.map((b) => BYTE_CHAR[b]);
  const vocab = [...base, ...base.map((c) => c + EOW)];
  if (!Number.isInteger(vocabSize) || vocabSize < vocab.length + 2) {
    throw new RangeError(`learnBpe: vocabSize must be an integer ≥ ${vocab.length + 2}, got ${vocabSize}`);
  }
  const known = new Set(vocab);
  const counts = new Map<string, number>();
  for (const c of captions) for (const p of preTokenize(c)) counts.set(p, (counts.get(p) ?? 0) + 1);
  const words = [...counts.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([p, n]) => ({ syms: initialSymbols(p), n }));
  const merges: [string, string][] = [];
  while (vocab.length + 2 < vocabSize) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        // Symbols never contain a space: byte-level maps the space byte to "Ġ".
        const k = syms[i] + " " + syms[i + 1];
        pairs.set(k, (pairs.get(k) ?? 0) + n);
      }
    }
    let best = "", bestN = 1;
    for (const [k, n] of pairs) if (n > bestN || (n === bestN && n > 1 && k < best)) [best, bestN] = [k, n];
    if (bestN < 2) break;
    const [a, b] = best.split(" ") as [string, string];
    merges.push([a, b]);
    const ab = a + b;
    if (!known.has(ab)) {
      known.add(ab);
      vocab.push(ab);
    }
    for (const w of words) {
      const s = w.syms;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(ab);
          i++;
        } else out.push(s[i]);
      }
      w.syms = out;
    }
  }
  vocab.push(BOS_TOKEN, EOS_TOKEN);
  return { vocab, merges };
}

/** The files of a tokenizer folder, as transformers.js reads them. */
export interface TokenizerFiles {
  "tokenizer.json": string;
  "tokenizer_config.json": string;
  "special_tokens_map.json": string;
}

/** A byte-level BPE tokenizer over a learned vocabulary, padding and truncating to `maxLength` ids. */
export class BpeTokenizer {
  readonly ids: Map<string, number>;
  readonly ranks: Map<string, number>;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  private readonly cache = new Map<string, number[]>();

  constructor(readonly model: BpeModel, readonly maxLength: number) {
    this.ids = new Map(model.vocab.map((t, i) => [t, i]));
    if (this.ids.size !== model.vocab.length) throw new Error("BpeTokenizer: the vocabulary has duplicate tokens");
    this.ranks = new Map(model.merges.map(([a, b], i) => [a + " " + b, i]));
    const id = (t: string) => {
      const i = this.ids.get(t);
      if (i === undefined) throw new Error(`BpeTokenizer: the vocabulary lacks ${t}`);
      return i;
    };
    this.bosId = id(BOS_TOKEN);
    this.eosId = this.padId = id(EOS_TOKEN);
    if (this.eosId !== model.vocab.length - 1) throw new Error(`BpeTokenizer: ${EOS_TOKEN} must have the highest id`);
    if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError(`BpeTokenizer: bad maxLength ${maxLength}`);
  }

  /** The vocabulary size. */
  get vocabSize(): number {
    return this.model.vocab.length;
  }

  /** BPE of one byte-level piece, as transformers.js does it: repeatedly merge the lowest-ranked, leftmost pair. */
  bpe(piece: string): number[] {
    const hit = this.cache.get(piece);
    if (hit) return hit;
    const s = initialSymbols(piece);
    for (;;) {
      let at = -1, best = Infinity;
      for (let i = 0; i + 1 < s.length; i++) {
        const r = this.ranks.get(s[i] + " " + s[i + 1]);
        if (r !== undefined && r < best) [at, best] = [i, r];
      }
      if (at < 0) break;
      s.splice(at, 2, s[at] + s[at + 1]);
    }
    // Every merge result is in the vocabulary and so is every byte, so nothing falls back to the unknown token.
    const out = s.map((t) => this.ids.get(t) ?? this.eosId);
    this.cache.set(piece, out);
    return out;
  }

  /** Token ids of `text` with `<|startoftext|>` and `<|endoftext|>`, unpadded and untruncated. */
  tokenize(text: string): number[] {
    return [this.bosId, ...preTokenize(text).flatMap((p) => this.bpe(p)), this.eosId];
  }

  /**
   * `maxLength` ids as transformers.js gives them with `padding: "max_length", truncation: true`: cut to `maxLength`
   * (which drops `<|endoftext|>` from overlong text, as transformers.js does) and padded with `<|endoftext|>`.
   */
  encode(text: string): Int32Array {
    const ids = this.tokenize(text).slice(0, this.maxLength);
    const out = new Int32Array(this.maxLength).fill(this.padId);
    out.set(ids);
    return out;
  }

  /** tokenizer.json, tokenizer_config.json and special_tokens_map.json as transformers.js and `tokenizers` read them. */
  files(): TokenizerFiles {
    const special = (content: string) => ({
      id: this.ids.get(content)!,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    });
    const tokenizer = clipTokenizerSpec({
      addedTokens: [special(BOS_TOKEN), special(EOS_TOKEN)],
      bos: [BOS_TOKEN, this.bosId],
      eos: [EOS_TOKEN, this.eosId],
      unk: EOS_TOKEN,
      vocab: Object.fromEntries(this.model.vocab.map((t, i) => [t, i])),
      merges: this.model.merges.map(([a, b]) => `${a} ${b}`),
    });
    const config = {
      add_prefix_space: false,
      bos_token: BOS_TOKEN,
      clean_up_tokenization_spaces: true,
      do_lower_case: true,
      eos_token: EOS_TOKEN,
      errors: "replace",
      model_max_length: this.maxLength,
      pad_token: EOS_TOKEN,
      tokenizer_class: "CLIPTokenizer",
      unk_token: EOS_TOKEN,
    };
    const tok = (content: string) => ({ content, lstrip: false, normalized: true, rstrip: false, single_word: false });
    const map = {
      bos_token: tok(BOS_TOKEN),
      eos_token: tok(EOS_TOKEN),
      pad_token: tok(EOS_TOKEN),
      unk_token: tok(EOS_TOKEN),
    };
    const json = (o: unknown) => JSON.stringify(o, null, 2) + "\n";
    return {
      "tokenizer.json": json(tokenizer),
      "tokenizer_config.json": json(config),
      "special_tokens_map.json": json(map),
    };
  }

  /** Reads a tokenizer back from the tokenizer.json and tokenizer_config.json this class writes. */
  static fromFiles(tokenizerJson: string, configJson: string, source = "<tokenizer>"): BpeTokenizer {
    const t = JSON.parse(tokenizerJson), c = JSON.parse(configJson);
    const m = t?.model;
    if (m?.type !== "BPE" || m.end_of_word_suffix !== EOW || typeof m.vocab !== "object" || !Array.isArray(m.merges)) {
      throw new Error(`${source}: expected a byte-level BPE model with end_of_word_suffix "${EOW}"`);
    }
    const vocab: string[] = [];
    for (const [tok, id] of Object.entries(m.vocab as Record<string, number>)) vocab[id] = tok;
    if (vocab.length !== Object.keys(m.vocab).length || vocab.some((v) => v === undefined)) {
      throw new Error(`${source}: model.vocab ids must be 0..n-1 without gaps`);
    }
    const merges = (m.merges as (string | [string, string])[]).map((x) =>
      (typeof x === "string" ? x.split(" ", 2) : x) as [string, string]
    );
    if (!Number.isInteger(c?.model_max_length)) throw new Error(`${source}: model_max_length must be an integer`);
    return new BpeTokenizer({ vocab, merges }, c.model_max_length);
  }
}

/**
 * CLIP's byte-level BPE as a `tokenizers` tokenizer.json (NFC, whitespace runs to one space, lower case; CLIP's split
 * pattern; `</w>` word ends; BOS … EOS around every text): the project's own tokenizer and a converted diffusers
 * CLIPTokenizer folder write the same layout.
 */
export function clipTokenizerSpec(o: {
  addedTokens: unknown[];
  bos: [string, number];
  eos: [string, number];
  unk: string;
  vocab: Record<string, number>;
  merges: string[];
}): Record<string, unknown> {
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: o.addedTokens,
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "NFC" },
        { type: "Replace", pattern: { Regex: WHITESPACE_PATTERN }, content: " " },
        { type: "Lowercase" },
      ],
    },
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: CLIP_SPLIT_PATTERN }, behavior: "Removed", invert: true },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: "RobertaProcessing",
      sep: o.eos,
      cls: o.bos,
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: o.unk,
      continuing_subword_prefix: "",
      end_of_word_suffix: EOW,
      fuse_unk: false,
      byte_fallback: false,
      vocab: o.vocab,
      merges: o.merges,
    },
  };
}
