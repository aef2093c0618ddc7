/**
 * A stage's `schedule` param: either the hand-written form (`{ kind, T, betaStart, betaEnd, zeroTerminalSnr }`,
 * schedules.ts's `ScheduleParams`) or `{ diffusers: <path> }`, a diffusers model's own schedule read from its
 * `scheduler_config.json` (a pipeline folder, whose `scheduler/` is read, a scheduler folder, the JSON file itself, or
 * a hub id's download folder) through `scheduler_config.ts`. The second form is turned into the first while the config is
 * validated, so everything downstream (stages, cache keys, reports, export) sees one form, and a config trained on a
 * diffusers model does not copy its schedule by hand.
 *
 * Only what the project's ᾱ table is made of is read: the scheduler's `prediction_type` and `timestep_spacing` stay
 * the stages' own `prediction` and sampler settings. A scheduler whose ᾱ the hand-written form cannot say
 * (`trained_betas`) is one error line at `schedule.diffusers`, as is a missing or refused scheduler_config.json.
 *
 * @module
 */
import { z } from "zod";
import { makeSchedule, type ScheduleOptions, ScheduleParams } from "../diffusion/schedules.ts";
import { hubCacheDir, isHubId } from "./folder.ts";
import { DiffusersConfigError, scheduleFromDiffusers } from "./scheduler_config.ts";

/** The hand-written schedule, as `ScheduleParams` parses it. */
export type ScheduleSettings = z.output<typeof ScheduleParams>;

const KIND = { linear: "linear", scaled_linear: "scaled_linear", squaredcos_cap_v2: "cosine" } as const;
// makeSchedule's β endpoints where a config leaves them out: left out here too when equal, so a diffusers schedule
// that is the hand-written one reads back as exactly that (the same cache keys).
const DEFAULT_BETAS = { linear: [1e-4, 0.02], scaled_linear: [0.00085, 0.012] } as const;

function readJson(path: string): { json: unknown; file: string } {
  const root = path.replace(/\/+$/, "");
  const local = (() => {
    try {
      Deno.statSync(root);
      return true;
    } catch {
      return false;
    }
  })();
  const base = !local && isHubId(root) ? hubCacheDir(root) : root;
  const candidates = base.endsWith(".json")
    ? [base]
    : [`${base}/scheduler_config.json`, `${base}/scheduler/scheduler_config.json`];
  for (const file of candidates) {
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new DiffusersConfigError(file, `cannot read it (${(e as Error).message.split("\n")[0]})`);
    }
    try {
      return { json: JSON.parse(text), file };
    } catch (e) {
      throw new DiffusersConfigError(file, `not valid JSON: ${(e as Error).message}`);
    }
  }
  // `deno task diffusers fetch` downloads model folders (config.json and weights), not a scheduler's.
  const hub = !local && isHubId(root) ? "; a hub id's must be put into its download folder by hand" : "";
  throw new DiffusersConfigError(path, `no scheduler_config.json (looked for ${candidates.join(", ")})${hub}`);
}

/**
 * The hand-written schedule of the diffusers scheduler config at `path`; throws `DiffusersConfigError` (one line
 * naming the file) for a missing, unreadable or refused config, or one whose ᾱ the hand-written form cannot say.
 */
export function scheduleSettingsFromDiffusers(path: string): ScheduleSettings {
  const { json, file } = readJson(path);
  const read = scheduleFromDiffusers(json, file);
  const cfg = json as Record<string, unknown>;
  if (Array.isArray(cfg.trained_betas)) {
    throw new DiffusersConfigError(file, "trained_betas cannot be a stage's schedule (kind, T, betaStart, betaEnd)");
  }
  const kind = KIND[(cfg.beta_schedule ?? "linear") as keyof typeof KIND];
  const options: ScheduleOptions = { kind, T: read.alphasCumprod.length };
  if (kind !== "cosine") {
    const [b0, b1] = DEFAULT_BETAS[kind];
    const start = (cfg.beta_start ?? 1e-4) as number, end = (cfg.beta_end ?? 0.02) as number;
    if (start !== b0) options.betaStart = start;
    if (end !== b1) options.betaEnd = end;
  }
  options.zeroTerminalSnr = cfg.rescale_betas_zero_snr === true;
  const settings = ScheduleParams.parse(options);
  // Both sides build ᾱ from the same functions; this is what keeps the two forms the same schedule.
  const ac = makeSchedule(settings).alphasCumprod;
  const at = ac.findIndex((v, i) => v !== read.alphasCumprod[i]);
  if (at >= 0) {
    throw new DiffusersConfigError(file, `ᾱ_${at} read as ${read.alphasCumprod[at]}, rebuilt as ${ac[at]}`);
  }
  return settings;
}

/**
 * The `schedule` param schema: the hand-written form, or `{ diffusers: <path> }` read into it (errors at
 * `schedule.diffusers`). Use it as `ScheduleSpec.default({...})` where a stage used `ScheduleParams`.
 */
export const ScheduleSpec = z.preprocess((v, ctx) => {
  if (typeof v !== "object" || v === null || Array.isArray(v) || !Object.hasOwn(v, "diffusers")) return v;
  const { diffusers, ...rest } = v as Record<string, unknown>;
  const fail = (message: string, path: string[]) => {
    ctx.addIssue({ code: "custom", message, path, input: v });
    return v;
  };
  if (Object.keys(rest).length) {
    return fail(`schedule.diffusers takes no other keys (got ${Object.keys(rest).join(", ")})`, [Object.keys(rest)[0]]);
  }
  if (typeof diffusers !== "string" || !diffusers) {
    return fail("expected a diffusers folder, scheduler_config.json or hub id", ["diffusers"]);
  }
  try {
    return scheduleSettingsFromDiffusers(diffusers);
  } catch (e) {
    return fail((e as Error).message, ["diffusers"]);
  }
}, ScheduleParams);
