/**
 * A diffusers `scheduler_config.json` (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler) as the project's
 * schedule: the ᾱ table that training noises with and samplers step on, the model's parameterisation, and the
 * sampling timesteps `set_timesteps(N)` would pick, so a student is trained and sampled at the teacher's own noise
 * levels.
 *
 * Every key of the config is either understood or refused: a value that would change what diffusers computes in a
 * way the project does not reproduce (thresholding, Karras sigmas, learned variances, …) is one error line naming
 * the key and the value, rather than a schedule that silently differs.
 *
 * ᾱ is computed in float64 as the rest of schedules.ts; diffusers computes it in float32, which the tests bound.
 *
 * @module
 */
import {
  cosineBetas,
  linearBetas,
  rescaleZeroTerminalSnr,
  scaledLinearBetas,
  type Schedule,
  scheduleFromBetas,
  spacedTimesteps,
  type Spacing,
} from "../diffusion/schedules.ts";
import type { Prediction } from "../diffusion/samplers.ts";

/** The scheduler classes understood. */
export type DiffusersSchedulerClass = "DDPMScheduler" | "DDIMScheduler" | "EulerDiscreteScheduler";

/** A diffusers scheduler config as the project's schedule. */
export interface DiffusersSchedule extends Schedule {
  /** The config's `_class_name`. */
  readonly className: DiffusersSchedulerClass;
  /** `prediction_type`: epsilon → "eps", v_prediction → "v", sample → "x0". */
  readonly prediction: Prediction;
  /** `timestep_spacing`. */
  readonly spacing: Spacing;
  /** `steps_offset` (added to "leading" timesteps only, as diffusers does). */
  readonly stepsOffset: number;
  /**
   * ᾱ after the last sampling step: DDIM's `final_alpha_cumprod` (1 with `set_alpha_to_one`, else ᾱ_0); 1 for the
   * others, whose last step returns the clean estimate.
   */
  readonly finalAlphaCumprod: number;
  /** DDPM/DDIM's `clip_sample_range` when `clip_sample` is on (x̂0 is clamped to ±it each step), else null. */
  readonly clipSample: number | null;
  /** The timesteps `set_timesteps(steps)` picks, in sampling order (fractional for Euler's "linspace"). */
  timesteps(steps: number): Float64Array;
}

type Json = Record<string, unknown>;
type Check = (v: unknown) => boolean;

const isNum: Check = (v) => typeof v === "number" && Number.isFinite(v);
const isInt: Check = (v) => Number.isInteger(v);
const isBool: Check = (v) => typeof v === "boolean";
const oneOf = (...xs: unknown[]): Check => (v) => xs.includes(v);

// Per key: the values accepted, and a description for the error line. Keys every scheduler shares come first.
const COMMON: Record<string, [Check, string]> = {
  num_train_timesteps: [(v) => isInt(v) && (v as number) >= 2 && (v as number) <= 100_000, "an integer in [2, 100000]"],
  beta_start: [(v) => isNum(v) && (v as number) > 0 && (v as number) <= 1, "a number in (0, 1]"],
  beta_end: [(v) => isNum(v) && (v as number) > 0 && (v as number) <= 1, "a number in (0, 1]"],
  beta_schedule: [oneOf("linear", "scaled_linear", "squaredcos_cap_v2"), "linear, scaled_linear or squaredcos_cap_v2"],
  trained_betas: [(v) => v === null || (Array.isArray(v) && v.every(isNum)), "null or a list of numbers"],
  prediction_type: [oneOf("epsilon", "v_prediction", "sample"), "epsilon, v_prediction or sample"],
  timestep_spacing: [oneOf("leading", "trailing", "linspace"), "leading, trailing or linspace"],
  steps_offset: [(v) => isInt(v) && (v as number) >= 0, "a non-negative integer"],
  rescale_betas_zero_snr: [isBool, "true or false"],
};
const CLIPPING: Record<string, [Check, string]> = {
  clip_sample: [isBool, "true or false"],
  clip_sample_range: [(v) => isNum(v) && (v as number) > 0, "a positive number"],
  // Dynamic thresholding (Imagen) is not implemented; its two knobs only matter when it is on.
  thresholding: [oneOf(false), "false (dynamic thresholding is not supported)"],
  dynamic_thresholding_ratio: [isNum, "a number"],
  sample_max_value: [isNum, "a number"],
};
const KEYS: Record<DiffusersSchedulerClass, Record<string, [Check, string]>> = {
  DDPMScheduler: {
    ...COMMON,
    ...CLIPPING,
    variance_type: [oneOf("fixed_small"), "fixed_small (the posterior variance the project's DDPM sampler uses)"],
  },
  DDIMScheduler: { ...COMMON, ...CLIPPING, set_alpha_to_one: [isBool, "true or false"] },
  EulerDiscreteScheduler: {
    ...COMMON,
    interpolation_type: [oneOf("linear"), "linear"],
    use_karras_sigmas: [oneOf(false, null), "false"],
    use_exponential_sigmas: [oneOf(false, null), "false"],
    use_beta_sigmas: [oneOf(false, null), "false"],
    sigma_min: [oneOf(null), "null"],
    sigma_max: [oneOf(null), "null"],
    timestep_type: [oneOf("discrete"), "discrete"],
    final_sigmas_type: [oneOf("zero"), "zero"],
  },
};
// diffusers' own defaults, where they differ between the classes.
const DEFAULTS: Record<DiffusersSchedulerClass, Json> = {
  DDPMScheduler: { timestep_spacing: "leading", clip_sample: true },
  DDIMScheduler: { timestep_spacing: "leading", clip_sample: true, set_alpha_to_one: true },
  EulerDiscreteScheduler: { timestep_spacing: "linspace" },
};

/** Thrown for a config the project cannot take; the message is one line naming the file, the key and the value. */
export class DiffusersConfigError extends Error {
  constructor(source: string, problem: string) {
    super(`${source}: ${problem}`);
    this.name = "DiffusersConfigError";
  }
}

const show = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v);

function validate(cfg: Json, source: string): DiffusersSchedulerClass {
  const cls = cfg._class_name;
  if (!(typeof cls === "string" && Object.hasOwn(KEYS, cls))) {
    throw new DiffusersConfigError(
      source,
      `_class_name ${show(cls)} is not supported (DDPMScheduler, DDIMScheduler or EulerDiscreteScheduler)`,
    );
  }
  const keys = KEYS[cls as DiffusersSchedulerClass];
  for (const [k, v] of Object.entries(cfg)) {
    if (k.startsWith("_")) continue; // _class_name, _diffusers_version: bookkeeping
    if (!Object.hasOwn(keys, k)) {
      throw new DiffusersConfigError(source, `${k}: unknown key for ${cls} (value ${show(v)})`);
    }
    const [ok, want] = keys[k];
    if (!ok(v)) throw new DiffusersConfigError(source, `${k} ${show(v)} is not supported (expected ${want})`);
  }
  return cls as DiffusersSchedulerClass;
}

function betasOf(p: Json, source: string): Float64Array {
  const T = p.num_train_timesteps as number;
  if (Array.isArray(p.trained_betas)) {
    if (p.trained_betas.length !== T) {
      throw new DiffusersConfigError(
        source,
        `trained_betas has ${p.trained_betas.length} values but num_train_timesteps is ${T}`,
      );
    }
    return Float64Array.from(p.trained_betas as number[]);
  }
  const b0 = p.beta_start as number, b1 = p.beta_end as number;
  return p.beta_schedule === "linear"
    ? linearBetas(T, b0, b1)
    : p.beta_schedule === "scaled_linear"
    ? scaledLinearBetas(T, b0, b1)
    : cosineBetas(T);
}

/**
 * The schedule of a parsed `scheduler_config.json`. `source` names it in errors. Throws `DiffusersConfigError` for
 * any key or value the project does not reproduce.
 */
export function scheduleFromDiffusers(config: unknown, source = "scheduler_config.json"): DiffusersSchedule {
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new DiffusersConfigError(source, `expected a JSON object, got ${show(config)}`);
  }
  const cls = validate(config as Json, source);
  const p: Json = {
    num_train_timesteps: 1000,
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: "linear",
    trained_betas: null,
    prediction_type: "epsilon",
    steps_offset: 0,
    rescale_betas_zero_snr: false,
    clip_sample_range: 1,
    ...DEFAULTS[cls],
    ...(config as Json),
  };
  let betas = betasOf(p, source);
  if (p.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
  let base: Schedule;
  try {
    base = scheduleFromBetas(betas);
  } catch (e) {
    throw new DiffusersConfigError(source, (e as Error).message);
  }
  const T = betas.length, spacing = p.timestep_spacing as Spacing, offset = p.steps_offset as number;
  const ac = base.alphasCumprod;
  const euler = cls === "EulerDiscreteScheduler";
  return {
    alphasCumprod: ac,
    className: cls,
    prediction: p.prediction_type === "epsilon" ? "eps" : p.prediction_type === "v_prediction" ? "v" : "x0",
    spacing,
    stepsOffset: offset,
    finalAlphaCumprod: cls === "DDIMScheduler" && !p.set_alpha_to_one ? ac[0] : 1,
    clipSample: !euler && p.clip_sample ? p.clip_sample_range as number : null,
    timesteps: (steps) => euler ? eulerTimesteps(T, steps, spacing, offset) : spacedFloat(T, steps, spacing, offset),
  };
}

function spacedFloat(T: number, steps: number, spacing: Spacing, offset: number): Float64Array {
  return Float64Array.from(spacedTimesteps(T, steps, spacing, offset));
}

// Euler's "linspace" keeps linspace(0, T−1, N) unrounded, in float32 as diffusers stores its timesteps.
function eulerTimesteps(T: number, steps: number, spacing: Spacing, offset: number): Float64Array {
  if (spacing !== "linspace") return spacedFloat(T, steps, spacing, offset);
  if (!Number.isInteger(steps) || steps < 1 || steps > T) {
    throw new RangeError(`scheduler_config: steps must be an integer in [1, ${T}], got ${steps}`);
  }
  const out = new Float64Array(steps), step = steps === 1 ? 0 : (T - 1) / (steps - 1);
  for (let k = 0; k < steps; k++) out[steps - 1 - k] = Math.fround(k === steps - 1 && steps > 1 ? T - 1 : k * step);
  return out;
}

/**
 * The σ̃ = √((1 − ᾱ)/ᾱ) levels of EulerDiscreteScheduler for `steps` steps, with the final 0, as `set_timesteps`
 * makes them: σ̃ interpolated linearly in t at fractional timesteps (not in log σ̃ as `alphaBarAt`). With
 * `rescale_betas_zero_snr` diffusers' Euler replaces ᾱ_{T−1} = 0 by 2^−24 so its first σ̃ is finite (4096); this
 * does too, while the schedule's own table keeps the exact 0 that training and the other samplers use.
 */
export function eulerSigmas(s: DiffusersSchedule, steps: number): Float64Array {
  if (s.className !== "EulerDiscreteScheduler") {
    throw new Error(`scheduler_config: eulerSigmas needs an EulerDiscreteScheduler, got ${s.className}`);
  }
  const ac = s.alphasCumprod, T = ac.length;
  const sig = (i: number) => {
    const a = i === T - 1 && ac[i] === 0 ? 2 ** -24 : ac[i];
    return Math.sqrt((1 - a) / a);
  };
  const ts = s.timesteps(steps), out = new Float64Array(steps + 1);
  for (let k = 0; k < steps; k++) {
    const t = ts[k], lo = Math.floor(t), hi = Math.min(T - 1, lo + 1), w = t - lo;
    out[k] = Math.fround(w === 0 ? sig(lo) : (1 - w) * sig(lo) + w * sig(hi));
  }
  return out;
}

/** Reads `scheduler_config.json` from a file, a scheduler folder, or a pipeline folder's `scheduler/`. */
export async function readSchedulerConfig(path: string): Promise<DiffusersSchedule> {
  const candidates = path.endsWith(".json")
    ? [path]
    : [`${path}/scheduler_config.json`, `${path}/scheduler/scheduler_config.json`];
  for (const file of candidates) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw e;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new DiffusersConfigError(file, `not valid JSON: ${(e as Error).message}`);
    }
    return scheduleFromDiffusers(json, file);
  }
  throw new DiffusersConfigError(path, `no scheduler_config.json (looked for ${candidates.join(", ")})`);
}
