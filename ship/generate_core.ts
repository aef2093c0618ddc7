/**
 * Generation from an exported student folder alone (`deno task export` writes one): the tokenizer through
 * transformers.js, the text encoder's and the UNet's ONNX graphs on onnxruntime (onnxruntime-node for `cpu`,
 * onnxruntime-web for `wasm` and `webgpu`), and ADD's few-step sampler with the noise of ship/philox.ts, as the
 * project samples (models/diffusion/samplers.ts `sampleAdd` after generate.ts's noise): x̂0 = student(xT, τ1), then
 * for each further τn, x = α x̂0 + σ ε and x̂0 = student(x, τn), the state in float64, the networks in float32.
 *
 * It imports only onnxruntime, transformers.js, fast-png and the other two dependency-free modules of ship/, so a
 * browser page can use it as it is (with an import map for the bare names). `base` is the folder as a URL: a file:
 * URL in Deno, an http(s) one in a page; its files are read with `fetch`.
 *
 * @module
 */
import { encode } from "fast-png";
import { checkManifest, type Manifest, type ShipPrediction } from "./manifest.ts";
import { Philox } from "./philox.ts";

/** Where the UNet runs: onnxruntime-node (`cpu`), or onnxruntime-web on WASM or WebGPU. */
export type ShipExecutor = "cpu" | "wasm" | "webgpu";

/** What `generate` draws. */
export interface GenerateRequest {
  prompt: string;
  /** Sampler steps, a key of the manifest's `sampler.timesteps` (default `sampler.default_steps`). */
  steps?: number;
  /** Fixes the noise: the same prompt, seed and steps give the same image (default 0). */
  seed?: number;
}

/** Text conditioning of one image: hidden states [L·D] and the pooled embedding [P]. */
export interface TextCondition {
  tokens: Float32Array;
  pooled: Float32Array;
}

interface OrtTensor {
  readonly data: unknown;
  readonly dims: readonly number[];
}
interface OrtSession {
  readonly inputNames: readonly string[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface Ort {
  Tensor: new (type: "float32" | "int64", data: Float32Array | BigInt64Array, dims: readonly number[]) => OrtTensor;
  InferenceSession: { create(model: Uint8Array, options: Record<string, unknown>): Promise<OrtSession> };
  env: { wasm: { numThreads?: number; wasmPaths?: unknown } };
}

type Tokenizer = (texts: string[], opts: Record<string, unknown>) => Record<string, { data: BigInt64Array }>;

/** Loads onnxruntime for an executor; wasm files come from the package's own folder when it is on disk. */
async function loadOrt(executor: ShipExecutor): Promise<Ort> {
  if (executor === "cpu") return (await import("onnxruntime-node")) as unknown as Ort;
  const entry = executor === "wasm" ? "onnxruntime-web" : "onnxruntime-web/webgpu";
  const ort =
    (executor === "wasm" ? await import("onnxruntime-web") : await import("onnxruntime-web/webgpu")) as unknown as Ort;
  // Multi-threaded wasm failed or hung in Deno (engine/executors/ort_web.ts); one thread everywhere.
  ort.env.wasm.numThreads = 1;
  try {
    const resolved = import.meta.resolve(entry);
    if (resolved.startsWith("file:")) ort.env.wasm.wasmPaths = new URL("./", resolved).href;
  } catch {
    // Unresolvable here (a page without an import map entry): ort's default location.
  }
  return ort;
}

async function fetchBytes(url: URL): Promise<Uint8Array> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url.href}: ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** A URL as messages show it: a path for a file: URL. */
function modelLocation(url: URL): string {
  return url.protocol === "file:" ? decodeURIComponent(url.pathname).replace(/\/$/, "") : url.href.replace(/\/$/, "");
}

/**
 * The export's tokenizer, built by transformers.js from the folder's tokenizer.json and tokenizer_config.json (as its
 * AutoTokenizer picks the class), read with `fetch` like every other file: its own loader reads file paths but not
 * http URLs, and a page would have to change its global settings.
 */
async function loadTokenizer(dir: URL): Promise<Tokenizer> {
  const tf = await import("@huggingface/transformers");
  const json = async (name: string) => JSON.parse(new TextDecoder().decode(await fetchBytes(new URL(name, dir))));
  const [tokenizerJson, config] = [await json("tokenizer.json"), await json("tokenizer_config.json")];
  const name = String(config.tokenizer_class ?? "PreTrainedTokenizer").replace(/Fast$/, "");
  const classes = tf as unknown as Record<string, new (j: unknown, c: unknown) => unknown>;
  return new (classes[name] ?? tf.PreTrainedTokenizer)(tokenizerJson, config) as unknown as Tokenizer;
}

/** x0 from a model output at noise level (α, σ), in float64 (samplers.ts `convert`). */
function toX0(p: ShipPrediction, out: Float32Array, x: Float64Array, alpha: number, sigma: number): Float64Array {
  if (p === "eps" && alpha === 0) throw new Error("an ε-prediction model gives no x0 at ᾱ = 0 (zero terminal SNR)");
  const r = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    r[i] = p === "x0" ? out[i] : p === "v" ? alpha * x[i] - sigma * out[i] : (x[i] - sigma * out[i]) / alpha;
  }
  return r;
}

/** A loaded export: its manifest, text encoder and UNet session. */
export class ShippedGenerator {
  private constructor(
    readonly manifest: Manifest,
    readonly executor: ShipExecutor,
    private readonly ort: Ort,
    private readonly session: OrtSession,
    private readonly textModel: OrtSession,
    private readonly tokenizer: Tokenizer,
  ) {}

  /** Loads the folder at `base` (a URL; a trailing slash is added when missing) to run on `executor`. */
  static async load(base: URL, executor: ShipExecutor = "cpu"): Promise<ShippedGenerator> {
    const root = new URL(base.href.endsWith("/") ? base.href : `${base.href}/`);
    const file = new URL("manifest.json", root);
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder().decode(await fetchBytes(file)));
    } catch (e) {
      throw new Error(`${modelLocation(file)}: cannot read the manifest (${(e as Error).message.split("\n")[0]})`);
    }
    const m = checkManifest(raw, modelLocation(file));
    const ort = await loadOrt(executor);
    const create = (bytes: Uint8Array) =>
      ort.InferenceSession.create(bytes, { executionProviders: [executor], graphOptimizationLevel: "all" });
    const session = await create(await fetchBytes(new URL(m.unet.file, root)));
    const enc = new URL(`${m.text_encoder.folder}/`, root);
    const text = await create(await fetchBytes(new URL(m.text_encoder.onnx, enc)));
    return new ShippedGenerator(m, executor, ort, session, text, await loadTokenizer(enc));
  }

  /**
   * The text encoder's output for one prompt (a fixed-batch encoder gets empty captions as filler), fed what the
   * session declares of the tokenizer's outputs, as transformers.js's models do.
   */
  async encode(prompt: string): Promise<TextCondition> {
    const { length: l, width: d, projection: p, batch } = this.manifest.text_encoder;
    const fed = [prompt, ...new Array(Math.max(0, (batch ?? 1) - 1)).fill("")];
    const ids = this.tokenizer(fed, { padding: "max_length", truncation: true, max_length: l });
    const feeds: Record<string, OrtTensor> = {};
    for (const name of this.textModel.inputNames) {
      if (!ids[name]) throw new Error(`text encoder: the model wants "${name}", which the tokenizer does not give`);
      feeds[name] = new this.ort.Tensor("int64", ids[name].data, [fed.length, l]);
    }
    const out = await this.textModel.run(feeds);
    const h = out.last_hidden_state, e = out.text_embeds;
    const want = (t: OrtTensor | undefined, shape: number[]) => t?.dims.join() === shape.join();
    if (!want(h, [fed.length, l, d]) || !want(e, [fed.length, p])) {
      throw new Error(
        `text encoder: expected last_hidden_state [${fed.length},${l},${d}] and text_embeds [${fed.length},${p}]`,
      );
    }
    const rows = (t: OrtTensor, n: number) => Float32Array.from((t.data as Float32Array).subarray(0, n));
    return { tokens: rows(h, l * d), pooled: rows(e, p) };
  }

  /** One UNet evaluation at integer timestep `t`. */
  async unet(x: Float32Array, t: number, text: TextCondition): Promise<Float32Array> {
    const { inputs } = this.manifest.unet, T = this.ort.Tensor;
    const feeds: Record<string, OrtTensor> = {
      x: new T("float32", x, inputs.x),
      t: new T("float32", Float32Array.of(t), inputs.t),
    };
    if (inputs.tokens) feeds.tokens = new T("float32", text.tokens, inputs.tokens);
    if (inputs.pooled) feeds.pooled = new T("float32", text.pooled, inputs.pooled);
    const out = (await this.session.run(feeds)).out;
    return Float32Array.from(out.data as Float32Array);
  }

  /** The timesteps of `steps` sampler steps; a clear error for a count the export has none for. */
  timesteps(steps: number = this.manifest.sampler.default_steps): number[] {
    const ts = this.manifest.sampler.timesteps[String(steps)];
    if (!ts) {
      const have = Object.keys(this.manifest.sampler.timesteps).join(", ");
      throw new Error(`steps ${steps}: this export samples in ${have} steps`);
    }
    return ts;
  }

  /** Draws one image, CHW floats in [-1, 1] (unclipped). */
  async generate(req: GenerateRequest): Promise<Float32Array> {
    const ts = this.timesteps(req.steps), seed = req.seed ?? 0;
    const { channels, size } = this.manifest.image, n = channels * size * size;
    const ab = this.manifest.schedule.alphas_cumprod, pred = this.manifest.sampler.prediction;
    const text = await this.encode(req.prompt);
    const root = Philox.seeded(seed), renoise = root.fold("sampler");
    let x0: Float64Array | null = null;
    for (const t of ts) {
      const alpha = Math.sqrt(ab[t]), sigma = Math.sqrt(1 - ab[t]);
      let x: Float64Array;
      if (x0 === null) x = Float64Array.from(root.fold("xT").normal(n));
      else {
        const eps = renoise.normal(n), prev: Float64Array = x0;
        x = prev.map((v, j) => alpha * v + sigma * eps[j]);
      }
      x0 = toX0(pred, await this.unet(Float32Array.from(x), t, text), x, alpha, sigma);
    }
    return Float32Array.from(x0!);
  }

  /** Frees the UNet's and the text encoder's sessions. */
  async dispose(): Promise<void> {
    await this.session.release();
    await this.textModel.release();
  }
}

/** One CHW image in [-1, 1] (1 or 3 channels) as 8-bit pixels, RGB or RGBA (opaque), each repeated `scale` times. */
export function imageToPixels(img: Float32Array, channels: number, size: number, bands: 3 | 4, scale = 1): Uint8Array {
  if (img.length !== channels * size * size) {
    throw new Error(`image: ${img.length} values, expected ${channels}×${size}×${size}`);
  }
  const side = size * scale, px = new Uint8Array(side * side * bands).fill(255);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const at = Math.floor(y / scale) * size + Math.floor(x / scale);
      for (let c = 0; c < 3; c++) {
        const v = img[(channels === 1 ? 0 : c) * size * size + at];
        px[(y * side + x) * bands + c] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
      }
    }
  }
  return px;
}

/** One CHW image in [-1, 1] as a canvas's RGBA pixels (a page draws them with `putImageData`). */
export function imageToRgba(img: Float32Array, channels: number, size: number): Uint8ClampedArray<ArrayBuffer> {
  const px = imageToPixels(img, channels, size, 4);
  return new Uint8ClampedArray(px.buffer as ArrayBuffer, px.byteOffset, px.length);
}

/** One CHW image in [-1, 1] (1 or 3 channels) as RGB PNG bytes, each pixel repeated `scale` times each way. */
export function imageToPng(img: Float32Array, channels: number, size: number, scale = 1): Uint8Array {
  const side = size * scale;
  return encode({
    width: side,
    height: side,
    data: imageToPixels(img, channels, size, 3, scale),
    channels: 3,
    depth: 8,
  });
}
