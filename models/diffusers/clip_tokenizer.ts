/**
 * A diffusers `tokenizer/` folder (transformers' slow `CLIPTokenizer`: vocab.json, merges.txt, tokenizer_config.json,
 * special_tokens_map.json; often no tokenizer.json) as the tokenizer.json that transformers.js reads, with the same ids
 * as the slow tokenizer: CLIP's normaliser (NFC, whitespace runs to one space, lower case), its split pattern,
 * byte-level pieces with `</w>` on each piece's last symbol, `<|startoftext|>` … `<|endoftext|>` around the text, and
 * the special tokens (a pad token such as SD 2.x's `!` included) matched as whole tokens before anything else, as
 * the slow tokenizer's added-token trie does.
 *
 * Stable Diffusion's pipelines pad and truncate to 77 keeping `<|endoftext|>` last; transformers.js truncates after
 * adding it, so `sdIds` does that step on the unpadded ids.
 *
 * @module
 */
import { join } from "node:path";
import { clipTokenizerSpec } from "../bpe_tokenizer.ts";

/** One line naming the file and what is wrong with it. */
export class ClipFolderError extends Error {
  /** An error about `source` (a path). */
  constructor(source: string, problem: string) {
    super(`${source}: ${problem}`);
    this.name = "ClipFolderError";
  }
}

/** The slow tokenizer keeps at most this many merges (`[1 : 49152 - 256 - 2 + 1]` of the file's lines). */
const MAX_MERGES = 49152 - 256 - 2;
const SPECIAL_KEYS = ["bos_token", "eos_token", "unk_token", "pad_token"] as const;
const DEFAULTS = {
  bos_token: "<|startoftext|>",
  eos_token: "<|endoftext|>",
  unk_token: "<|endoftext|>",
  pad_token: "<|endoftext|>",
};

interface AddedToken {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** What a tokenizer folder says, as read. */
export interface ClipTokenizerFiles {
  vocab: Record<string, number>;
  merges: string[];
  /** bos/eos/unk/pad token contents. */
  specials: Record<(typeof SPECIAL_KEYS)[number], string>;
  added: AddedToken[];
  /** tokenizer_config.json's model_max_length, if any. */
  maxLength: number | null;
}

function readJson(file: string, optional: boolean): Record<string, unknown> | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    if (optional && e instanceof Deno.errors.NotFound) return null;
    throw new ClipFolderError(file, e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message);
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw new ClipFolderError(file, `cannot parse (${(e as Error).message.split("\n")[0]})`);
  }
}

/** A special token's content and flags: a string, or `{content, lstrip, …}` as special_tokens_map.json writes it. */
function tokenSpec(v: unknown): { content: string; flags: Partial<AddedToken> } | null {
  if (typeof v === "string") return { content: v, flags: {} };
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    const o = v as Record<string, unknown>;
    const flags: Partial<AddedToken> = {};
    for (const k of ["single_word", "lstrip", "rstrip", "normalized"] as const) {
      if (typeof o[k] === "boolean") flags[k] = o[k] as boolean;
    }
    return { content: o.content as string, flags };
  }
  return null;
}

/** tokenizer_config.json's `added_tokens_decoder` (written by newer transformers) by content. */
function decoderTokens(config: Record<string, unknown>): Map<string, AddedToken> {
  const added = new Map<string, AddedToken>();
  const decoder = (config.added_tokens_decoder ?? {}) as Record<string, unknown>;
  for (const [id, v] of Object.entries(decoder)) {
    const t = tokenSpec(v);
    if (!t) continue;
    const o = v as Record<string, unknown>;
    added.set(t.content, {
      id: Number(id),
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      ...t.flags,
      special: o.special !== false,
    });
  }
  return added;
}

/** Reads a `tokenizer/` folder; every problem is one line naming the file. */
export function readClipTokenizer(dir: string): ClipTokenizerFiles {
  const vocabFile = join(dir, "vocab.json"), mergesFile = join(dir, "merges.txt");
  const vocab = readJson(vocabFile, false) as Record<string, number>;
  const ids = Object.values(vocab);
  if (!ids.length || !ids.every((i) => Number.isInteger(i) && i >= 0)) {
    throw new ClipFolderError(vocabFile, "must map tokens to non-negative integer ids");
  }
  let mergesText: string;
  try {
    mergesText = Deno.readTextFileSync(mergesFile);
  } catch (e) {
    throw new ClipFolderError(mergesFile, e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message);
  }
  // As the slow tokenizer reads it: the first line is the "#version" header whatever it says.
  const merges = mergesText.trim().split("\n").slice(1, MAX_MERGES + 1).map((m) => m.trim().split(/\s+/).join(" "));
  const bad = merges.findIndex((m) => m.split(" ").length !== 2);
  if (bad >= 0) {
    throw new ClipFolderError(mergesFile, `line ${bad + 2} is not two symbols: ${JSON.stringify(merges[bad])}`);
  }
  const config = readJson(join(dir, "tokenizer_config.json"), true) ?? {};
  const map = readJson(join(dir, "special_tokens_map.json"), true) ?? {};
  if (config.tokenizer_class !== undefined && !/^CLIPTokenizer(Fast)?$/.test(String(config.tokenizer_class))) {
    throw new ClipFolderError(
      join(dir, "tokenizer_config.json"),
      `tokenizer_class ${config.tokenizer_class} is not CLIPTokenizer`,
    );
  }
  const added = decoderTokens(config);
  const specials = { ...DEFAULTS };
  for (const k of SPECIAL_KEYS) {
    const t = tokenSpec(map[k] ?? config[k]);
    if (!t) continue;
    specials[k] = t.content;
    if (added.has(t.content)) continue;
    const id = vocab[t.content];
    if (id === undefined) throw new ClipFolderError(vocabFile, `has no ${k} ${JSON.stringify(t.content)}`);
    // The slow tokenizer wraps bos/eos/unk given as strings in AddedToken (normalized); a pad string stays a plain
    // special token, which transformers marks not normalized.
    const normalized = t.flags.normalized ?? (typeof (map[k] ?? config[k]) !== "string" || k !== "pad_token");
    added.set(t.content, {
      id,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      ...t.flags,
      normalized,
      special: true,
    });
  }
  for (const k of ["bos_token", "eos_token"] as const) {
    if (vocab[specials[k]] === undefined) throw new ClipFolderError(vocabFile, `has no ${k} ${specials[k]}`);
  }
  const max = config.model_max_length;
  return {
    vocab,
    merges,
    specials,
    added: [...added.values()],
    maxLength: Number.isInteger(max) ? max as number : null,
  };
}

/** tokenizer.json (Hugging Face `tokenizers` format) and a tokenizer_config.json for transformers.js. */
export function clipTokenizerJson(t: ClipTokenizerFiles, maxLength: number): Record<string, string> {
  const id = (s: string) => t.vocab[s] ?? t.added.find((a) => a.content === s)!.id;
  const tokenizer = clipTokenizerSpec({
    addedTokens: [...t.added].sort((a, b) => a.id - b.id),
    bos: [t.specials.bos_token, id(t.specials.bos_token)],
    eos: [t.specials.eos_token, id(t.specials.eos_token)],
    unk: t.specials.unk_token,
    vocab: t.vocab,
    merges: t.merges,
  });
  const config = {
    ...t.specials,
    clean_up_tokenization_spaces: true,
    do_lower_case: true,
    errors: "replace",
    model_max_length: maxLength,
    tokenizer_class: "CLIPTokenizer",
  };
  const json = (o: unknown) => JSON.stringify(o, null, 2) + "\n";
  return { "tokenizer.json": json(tokenizer), "tokenizer_config.json": json(config) };
}

/**
 * Stable Diffusion's ids from unpadded ones (`<|startoftext|>` … `<|endoftext|>`): longer than `maxLength`, cut to
 * `maxLength − 1` and end with `eos`; shorter, padded with `pad` to `maxLength`.
 */
export function sdIds(ids: readonly number[], maxLength: number, eos: number, pad: number): number[] {
  if (ids.length >= maxLength) return [...ids.slice(0, maxLength - 1), eos];
  return [...ids, ...new Array(maxLength - ids.length).fill(pad)];
}
