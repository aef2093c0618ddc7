/**
 * When an effect stage fires: one mechanism for every kind. A cadence is `every` N steps and/or `at` a list of moments
 * (`start`: the first step an invocation runs, so again after a resume; `end`: the run's last step; or step numbers).
 * A config gives a stage's cadence with its `every` and `at` keys; a kind may give the cadence it has when the config
 * gives neither (`StageDef.cadence.default`: a report runs at the end) and moments it always adds
 * (`StageDef.cadence.always`: a checkpoint and a final sample at the end, whatever the config says).
 *
 * @module
 */

/** A moment of a cadence: the invocation's first step, the run's last, or a step number. */
export type At = "start" | "end" | number;

/** Every `every` steps (absent: never by count) and at each moment of `at`. */
export interface Cadence {
  /** Fire at every multiple of this many steps. */
  every?: number;
  /** Fire at each of these moments too. */
  at?: readonly At[];
}

/** A kind's cadence: the one it has when the config gives neither `every` nor `at`, and moments it always adds. */
export interface KindCadence {
  /** The cadence when the config gives neither `every` nor `at` (absent: every step). */
  default?: Cadence;
  /** Moments added whatever the config says, such as a final checkpoint at the end. */
  always?: readonly At[];
}

/** The cadence a stage runs at: the config's (or the kind's default, or every step), plus the kind's moments. */
export function resolveCadence(config: { every?: number; at?: At | readonly At[] }, kind?: KindCadence): Cadence {
  const given = config.every !== undefined || config.at !== undefined;
  const base: Cadence = given
    ? { every: config.every, at: config.at === undefined ? [] : Array.isArray(config.at) ? config.at : [config.at] }
    : kind?.default ?? { every: 1 };
  const at = [...(base.at ?? [])];
  for (const a of kind?.always ?? []) if (!at.includes(a)) at.push(a);
  return { ...(base.every !== undefined ? { every: base.every } : {}), at };
}

/** Whether a stage of cadence `c` fires at `step`, in an invocation whose first step is `first` of a run of `last`. */
export function isDue(c: Cadence, step: number, first: number, last: number): boolean {
  if (c.every !== undefined && step % c.every === 0) return true;
  return (c.at ?? []).some((a) => (a === "start" ? step === first : a === "end" ? step === last : step === a));
}

/** "every 10 steps and at the end": a cadence in words, for `--dry-run`. */
export function describeCadence(c: Cadence): string {
  const parts: string[] = [];
  if (c.every !== undefined) parts.push(c.every === 1 ? "every step" : `every ${c.every} steps`);
  const at = (c.at ?? []).map((a) => (a === "start" ? "the start" : a === "end" ? "the end" : `step ${a}`));
  if (at.length) parts.push(`at ${at.join(", ")}`);
  return parts.join(" and ") || "never";
}
