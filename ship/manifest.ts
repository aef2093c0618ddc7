/**
 * `manifest.json` of an exported student: everything a generator needs besides the two networks — image size, the
 * UNet's file and inputs, the text encoder's folder and sizes, the sampler (ADD's few-step sampler, its timesteps per
 * step count, the prediction type, no guidance), the noise schedule as its ᾱ table, and how the noise is drawn.
 * This module imports nothing, so a browser page can read a manifest with it.
 *
 * @module
 */

/** The format tag; a reader refuses any other. */
export const MANIFEST_FORMAT = "add-student/1";

/** What a model predicts: ε, the velocity v = α ε − σ x0 (Salimans & Ho 2022), or x0. */
export type ShipPrediction = "eps" | "v" | "x0";

/** The parsed manifest. */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  /** The export's name (its folder's). */
  name: string;
  /** Images: `channels` × `size` × `size`, CHW floats in [-1, 1]. */
  image: { channels: number; size: number };
  /** The UNet's ONNX file, its weight storage, and its inputs: x [1,C,S,S], t [1] (a float timestep), text. */
  unet: {
    file: string;
    weights: "fp32" | "fp16";
    parameters: number;
    inputs: { x: number[]; t: number[]; tokens?: number[]; pooled?: number[] };
  };
  /**
   * The text encoder's folder (transformers.js layout: `clip` loads as CLIPTextModelWithProjection, else AutoModel),
   * its sizes, and its fixed batch (null: any): a short batch is filled with empty captions.
   */
  text_encoder: {
    folder: string;
    /** Its ONNX file, relative to `folder`: inputs `input_ids` (and `attention_mask`) int64 [batch, length]. */
    onnx: string;
    class: "clip" | "auto";
    length: number;
    width: number;
    projection: number;
    batch: number | null;
  };
  /** ADD's sampler: strictly decreasing timesteps per step count, the first T−1 (pure noise); no guidance. */
  sampler: {
    kind: "add";
    prediction: ShipPrediction;
    guidance: "none";
    default_steps: number;
    timesteps: Record<string, number[]>;
  };
  /** The schedule it was trained on, as ᾱ_t for t = 0…T−1 (α = √ᾱ, σ = √(1 − ᾱ)). */
  schedule: { kind: string; T: number; zero_terminal_snr: boolean; alphas_cumprod: number[] };
  /** How noise is drawn (documentation; the generator implements it). */
  noise: Record<string, string>;
  /** Where the weights came from (free-form, for people). */
  source: Record<string, unknown>;
}

/** The noise section every export writes: what ship/philox.ts and the generator do. */
export const NOISE_DOC: Record<string, string> = {
  generator: "Philox4x32-10 (Random123), key = seed as a 64-bit integer, counter = blocks drawn",
  streams: 'fold(name): a named stream keyed by absorbing the UTF-8 name, as the project\'s Rng ("xT", "sampler")',
  normal: "Box-Muller on consecutive 32-bit word pairs (u1 = (w0+1)/2^32, u2 = w1/2^32) in float64, rounded to float32",
  x_T: 'seed.fold("xT").normal(C·S·S): the start, pure noise at the first timestep',
  renoise: 'seed.fold("sampler").normal(C·S·S) before every step after the first: x = α x̂0 + σ ε',
  portability: "log, sin and cos are computed from + − × ÷ √ only (ship/philox.ts), so every JavaScript engine " +
    "draws the same bits",
};

function fail(file: string, key: string, what: string): never {
  throw new Error(`${file}: "${key}" ${what}`);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const posInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;
const shape = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every(posInt);

function section(file: string, m: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = m[key];
  if (!isObj(v)) fail(file, key, "must be an object");
  return v;
}

function checkTimesteps(file: string, s: Record<string, unknown>, T: number): Record<string, number[]> {
  const ts = s.timesteps;
  if (!isObj(ts) || Object.keys(ts).length === 0) fail(file, "sampler.timesteps", "must map step counts to lists");
  for (const [k, list] of Object.entries(ts)) {
    const ok = Array.isArray(list) && list.length === Number(k) && list[0] === T - 1 &&
      list.every((t, i) => Number.isInteger(t) && t >= 0 && t < T && (i === 0 || t < list[i - 1]));
    if (!ok) fail(file, `sampler.timesteps.${k}`, `must be ${k} strictly decreasing timesteps starting at ${T - 1}`);
  }
  if (!(String(s.default_steps) in ts)) fail(file, "sampler.default_steps", "must be one of sampler.timesteps' keys");
  return ts as Record<string, number[]>;
}

/** Checks a parsed manifest.json (`file` names it in errors); throws one line naming the bad key. */
export function checkManifest(raw: unknown, file = "manifest.json"): Manifest {
  if (!isObj(raw)) throw new Error(`${file}: expected a JSON object`);
  if (raw.format !== MANIFEST_FORMAT) {
    fail(file, "format", `must be "${MANIFEST_FORMAT}", got ${JSON.stringify(raw.format)}`);
  }
  const image = section(file, raw, "image"), unet = section(file, raw, "unet");
  const text = section(file, raw, "text_encoder"), sampler = section(file, raw, "sampler");
  const schedule = section(file, raw, "schedule");
  if (!posInt(image.channels) || !posInt(image.size)) fail(file, "image", "must give positive channels and size");
  if (typeof unet.file !== "string" || unet.file === "") fail(file, "unet.file", "must name the ONNX file");
  const inputs = unet.inputs;
  if (!isObj(inputs) || !shape(inputs.x) || !shape(inputs.t)) fail(file, "unet.inputs", "must give x and t shapes");
  for (const k of ["tokens", "pooled"]) {
    if (inputs[k] !== undefined && !shape(inputs[k])) fail(file, `unet.inputs.${k}`, "must be a shape");
  }
  if (
    typeof text.folder !== "string" || typeof text.onnx !== "string" || !["clip", "auto"].includes(text.class as string)
  ) {
    fail(file, "text_encoder", 'must give a folder, its onnx file and a class "clip" or "auto"');
  }
  for (const k of ["length", "width", "projection"]) {
    if (!posInt(text[k])) fail(file, `text_encoder.${k}`, "must be > 0");
  }
  if (text.batch !== null && !posInt(text.batch)) {
    fail(file, "text_encoder.batch", "must be a positive integer or null");
  }
  if (sampler.kind !== "add") fail(file, "sampler.kind", 'must be "add"');
  if (!["eps", "v", "x0"].includes(sampler.prediction as string)) {
    fail(file, "sampler.prediction", "must be eps, v or x0");
  }
  const ab = schedule.alphas_cumprod;
  if (!posInt(schedule.T) || !Array.isArray(ab) || ab.length !== schedule.T) {
    fail(file, "schedule.alphas_cumprod", "must hold schedule.T values");
  }
  if (!ab.every((a, i) => typeof a === "number" && a >= 0 && a < 1 && (i === 0 || a < ab[i - 1]))) {
    fail(file, "schedule.alphas_cumprod", "must decrease strictly within [0, 1)");
  }
  checkTimesteps(file, sampler, schedule.T);
  return raw as unknown as Manifest;
}
