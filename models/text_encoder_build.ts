/**
 * Builds the project's default text encoder, `models/text_encoder/`: a small CLIP text model in transformers.js's
 * folder layout, made entirely here. The tokenizer is byte-level BPE learned from the captions the project trains on
 * (emoji names, their short names and skin-tone variants from `emoji-datasource-google`, the Fashion-MNIST classes,
 * and the empty caption for classifier-free guidance); the ONNX is the engine's own trace lowered by
 * `lowerToOnnx`; the weights are CLIP's initialisation drawn from a fixed seed (random, not trained: they give
 * every caption a fixed, distinct embedding, nothing more).
 *
 * Run `deno task build:text-encoder` (or `deno run --allow-read=. --allow-write=models/text_encoder
 * models/text_encoder_build.ts [folder]`). The output is byte-for-byte the same on every run.
 *
 * @module
 */
import { FASHION_MNIST_CLASSES } from "../datasets/fashion_mnist.ts";
import emoji from "emoji-datasource-google/emoji.json" with { type: "json" };
import { lowerToOnnx } from "../engine/onnx/lower.ts";
import { Rng } from "../engine/rng.ts";
import { encodeSafetensors } from "../engine/safetensors.ts";
import { BpeTokenizer, learnBpe } from "./bpe_tokenizer.ts";
import { type ClipTextConfig, clipTextShapes, DEFAULT_CLIP_TEXT, initClipText, traceClipText } from "./clip_text.ts";

/** Unicode's names of the skin-tone modifiers U+1F3FB–U+1F3FF, as CLDR spells them in emoji names. */
export const SKIN_TONES: Record<string, string> = {
  "1F3FB": "light skin tone",
  "1F3FC": "medium-light skin tone",
  "1F3FD": "medium skin tone",
  "1F3FE": "medium-dark skin tone",
  "1F3FF": "dark skin tone",
};

interface EmojiEntry {
  name: string;
  short_names: string[];
  skin_variations?: Record<string, unknown>;
}

/**
 * A skin-tone variant's name in CLDR's style: "thumbs up sign: light skin tone"; two tones join with a comma
 * ("kiss: woman, man, light skin tone, dark skin tone") and a repeated tone is named once.
 */
export function skinToneCaption(name: string, key: string): string {
  const tones = [...new Set(key.split("-"))].map((k) => {
    const t = SKIN_TONES[k.toUpperCase()];
    if (!t) throw new Error(`skinToneCaption: "${key}" is not a skin-tone key (1F3FB–1F3FF, joined by "-")`);
    return t;
  });
  return `${name}${name.includes(":") ? ", " : ": "}${tones.join(", ")}`;
}

/**
 * The captions the tokenizer is learned from, without duplicates: the empty caption, the Fashion-MNIST classes, then
 * per emoji (in emoji.json's order) its lower-cased name, its skin-tone variants, and its short names.
 */
export function textEncoderCaptions(): string[] {
  const out = new Set<string>(["", ...FASHION_MNIST_CLASSES]);
  for (const e of emoji as EmojiEntry[]) {
    const name = e.name.toLowerCase();
    out.add(name);
    for (const key of Object.keys(e.skin_variations ?? {})) out.add(skinToneCaption(name, key));
    for (const s of e.short_names) out.add(s.toLowerCase());
  }
  return [...out];
}

/** Settings of the build; the defaults make the committed folder. */
export interface TextEncoderBuildOptions {
  /** Tokens in the vocabulary, bytes and specials included. */
  vocabSize?: number;
  /** Model sizes other than the vocabulary. */
  model?: Partial<Omit<ClipTextConfig, "vocabSize">>;
  /** Seed of the weights. */
  seed?: number;
}

/** The committed build's settings. */
export const TEXT_ENCODER_BUILD: Required<Omit<TextEncoderBuildOptions, "model">> = { vocabSize: 1536, seed: 0 };

/** The config.json transformers.js (and Hugging Face's `CLIPTextConfig`) reads. */
function hfConfig(cfg: ClipTextConfig, tok: BpeTokenizer): Record<string, unknown> {
  return {
    architectures: ["CLIPTextModelWithProjection"],
    model_type: "clip_text_model",
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.width,
    intermediate_size: cfg.intermediate,
    projection_dim: cfg.projectionDim,
    num_hidden_layers: cfg.layers,
    num_attention_heads: cfg.heads,
    max_position_embeddings: cfg.maxLength,
    hidden_act: "quick_gelu",
    layer_norm_eps: cfg.layerNormEps,
    attention_dropout: 0,
    initializer_range: 0.02,
    initializer_factor: 1,
    bos_token_id: tok.bosId,
    eos_token_id: tok.eosId,
    pad_token_id: tok.padId,
    torch_dtype: "float32",
  };
}

/**
 * Markdown as `deno fmt` leaves it: paragraphs and list items (`- `) wrapped greedily at 120 columns, never inside a
 * code span, list continuations indented by two spaces, a blank line between blocks except between list items.
 */
function markdown(blocks: string[]): string {
  const lines: string[] = [];
  blocks.forEach((block, i) => {
    const item = block.startsWith("- ");
    if (i > 0 && !(item && blocks[i - 1].startsWith("- "))) lines.push("");
    const words = block.match(/(?:`[^`]*`|[^\s`])+/g) ?? [];
    let line = "";
    for (const w of words) {
      if (line && line.length + 1 + w.length > 120) {
        lines.push(line);
        line = (item ? "  " : "") + w;
      } else line = line ? `${line} ${w}` : w;
    }
    lines.push(line);
  });
  return lines.join("\n") + "\n";
}

/** The model's sizes as they will be built. */
export function textEncoderConfig(vocabSize: number, model: TextEncoderBuildOptions["model"] = {}): ClipTextConfig {
  return { ...DEFAULT_CLIP_TEXT, ...model, vocabSize };
}

/**
 * The folder's files (relative path → bytes): config.json, the tokenizer files, onnx/text_model.onnx (batch 1,
 * `input_ids` int64 [1, maxLength]), model.safetensors, and a README.md saying how they were made.
 */
export function buildTextEncoderFiles(opts: TextEncoderBuildOptions = {}): Record<string, Uint8Array> {
  const vocabSize = opts.vocabSize ?? TEXT_ENCODER_BUILD.vocabSize;
  const seed = opts.seed ?? TEXT_ENCODER_BUILD.seed;
  const captions = textEncoderCaptions();
  const partial = textEncoderConfig(vocabSize, opts.model);
  const tok = new BpeTokenizer(learnBpe(captions, vocabSize), partial.maxLength);
  // Merges stop early when no pair repeats, so the real vocabulary may be smaller than asked for.
  const cfg = { ...partial, vocabSize: tok.vocabSize };
  const weights = initClipText(cfg, new Rng(seed).fold("clip_text"));
  const onnx = lowerToOnnx(traceClipText(cfg, weights, 1), "cpu", { int64Inputs: ["input_ids"] });
  const shapes = clipTextShapes(cfg);
  const st = encodeSafetensors(
    Object.fromEntries(Object.entries(weights).map(([k, data]) => [k, { data, shape: shapes[k] }])),
    { format: "pt", producer: "models/text_encoder_build.ts", seed: String(seed) },
  );
  const enc = new TextEncoder();
  const longest = Math.max(...captions.map((c) => tok.tokenize(c).length));
  const readme = markdown([
    "# text_encoder",
    "A small CLIP text model (Radford et al. 2021) in transformers.js's layout, made by `deno task build:text-encoder` " +
    "(`models/text_encoder_build.ts`); rebuild it with that task rather than editing these files.",
    `- Tokenizer: CLIP-style byte-level BPE learned from ${captions.length} captions (emoji names, short names and ` +
    `skin-tone variants of emoji-datasource-google 16.0.0, the 10 Fashion-MNIST classes, and the empty caption). ` +
    `Vocabulary ${tok.vocabSize} (${tok.model.merges.length} merges); \`<|endoftext|>\` = ${tok.eosId} is the highest ` +
    `id and also pads. The longest caption takes ${longest} of the ${cfg.maxLength} ids.`,
    `- Model: width ${cfg.width}, ${cfg.layers} layers, ${cfg.heads} heads, MLP ${cfg.intermediate}, projection ` +
    `${cfg.projectionDim}, quick-GELU, causal attention, pooled at the first \`<|endoftext|>\`.`,
    `- Weights: random, CLIP's initialisation from seed ${seed}; not trained. They give each caption a fixed, distinct ` +
    "embedding and nothing more.",
    "- `onnx/text_model.onnx`: written by the engine's lowering (`lowerToOnnx`); input `input_ids` int64 " +
    `[1, ${cfg.maxLength}], outputs \`last_hidden_state\` [1, ${cfg.maxLength}, ${cfg.width}] and \`text_embeds\` ` +
    `[1, ${cfg.projectionDim}].`,
    "- `model.safetensors`: the same weights under Hugging Face's `CLIPTextModelWithProjection` names.",
  ]);
  const files: Record<string, Uint8Array> = {
    "config.json": enc.encode(JSON.stringify(hfConfig(cfg, tok), null, 2) + "\n"),
    "onnx/text_model.onnx": onnx,
    "model.safetensors": st,
    "README.md": enc.encode(readme),
  };
  for (const [name, text] of Object.entries(tok.files())) files[name] = enc.encode(text);
  return files;
}

/** Writes the folder (creating it), replacing files of the same names. Returns the files written. */
export async function writeTextEncoder(dir: string, opts: TextEncoderBuildOptions = {}): Promise<string[]> {
  const files = buildTextEncoderFiles(opts);
  for (const [rel, bytes] of Object.entries(files)) {
    const path = `${dir}/${rel}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(path, bytes);
  }
  return Object.keys(files);
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? new URL("./text_encoder", import.meta.url).pathname;
  const written = await writeTextEncoder(dir);
  let total = 0;
  for (const f of written) total += (await Deno.stat(`${dir}/${f}`)).size;
  console.log(`wrote ${dir}/ (${written.length} files, ${(total / 1024).toFixed(0)} KiB)`);
}
