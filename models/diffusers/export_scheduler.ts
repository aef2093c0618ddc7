/**
 * The run's schedule as a diffusers `scheduler_config.json`: the inverse of `scheduleFromDiffusers`, so reading the
 * written file back gives the same ᾱ table (the same β functions on the same values, in float64) and the sampling
 * timesteps the student was trained at.
 *
 * The class written is DDIMScheduler: it takes every schedule the project trains with (linear, scaled-linear, cosine,
 * zero terminal SNR) and, with `set_alpha_to_one`, its last step returns the model's clean estimate, which is what a
 * 1-step ADD sample is.
 *
 * @module
 */
import { type ScheduleOptions, ScheduleParams, spacedTimesteps, type Spacing } from "../diffusion/schedules.ts";

// The project's β endpoints where a config leaves them out (schedules.ts's makeSchedule).
const BETA_DEFAULTS = { linear: [1e-4, 0.02], scaled_linear: [0.00085, 0.012], cosine: [1e-4, 0.02] } as const;
const BETA_SCHEDULE = { linear: "linear", scaled_linear: "scaled_linear", cosine: "squaredcos_cap_v2" } as const;
const PREDICTION = { eps: "epsilon", v: "v_prediction", x0: "sample" } as const;

/**
 * The spacing whose N-step timesteps are the ones the student was trained at: "trailing" (999, 749, 499, 249, ADD's
 * default and SDXL-Turbo's), "linspace" when the trained set is linspace's (999, 666, 333, 0), else "trailing".
 * A teacher-style run (no student timesteps) gets "trailing" too, the spacing that starts at T−1.
 */
export function studentSpacing(T: number, trained: readonly number[] | null): Spacing {
  if (!trained?.length) return "trailing";
  const want = [...trained].sort((a, b) => b - a).join();
  for (const s of ["trailing", "linspace"] as const) {
    if (trained.length <= T && Array.from(spacedTimesteps(T, trained.length, s)).join() === want) return s;
  }
  return "trailing";
}

/** The DDIMScheduler config of a schedule, parameterisation and spacing, as diffusers' `save_config` lays it out. */
export function schedulerConfig(
  options: ScheduleOptions,
  prediction: keyof typeof PREDICTION,
  spacing: Spacing,
): Record<string, unknown> {
  const s = ScheduleParams.parse(options);
  const [b0, b1] = BETA_DEFAULTS[s.kind];
  return {
    _class_name: "DDIMScheduler",
    _diffusers_version: "0.31.0",
    // The cosine schedule does not read them; they are diffusers' defaults, written so the file is complete.
    beta_end: s.kind === "cosine" ? b1 : s.betaEnd ?? b1,
    beta_schedule: BETA_SCHEDULE[s.kind],
    beta_start: s.kind === "cosine" ? b0 : s.betaStart ?? b0,
    // The project's samplers never clamp x̂0 (and with zero terminal SNR a clamp would change the 1-step sample).
    clip_sample: false,
    clip_sample_range: 1.0,
    dynamic_thresholding_ratio: 0.995,
    num_train_timesteps: s.T,
    prediction_type: PREDICTION[prediction],
    rescale_betas_zero_snr: s.zeroTerminalSnr,
    sample_max_value: 1.0,
    set_alpha_to_one: true,
    // diffusers' Stable Diffusion pipelines warn at load about any value but SD's own 1, and rewrite it to 1. It is
    // added to "leading" timesteps only, so with the other spacings 1 changes nothing; studentSpacing never picks
    // leading, and if it did, 0 would keep the project's own timesteps (the pipeline's rewrite would then shift them).
    steps_offset: spacing === "leading" ? 0 : 1,
    thresholding: false,
    timestep_spacing: spacing,
    trained_betas: null,
  };
}
