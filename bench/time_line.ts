/**
 * Reads the closing `time:` line of `deno task run` (pipeline/run.ts writes it): the benchmarks that time whole runs
 * (bench/add_step.ts, bench/gpu/main.ts) take their per-phase figures from it.
 *
 * @module
 */

/** A run's time per step in all and per phase (ms), and its steps. */
export interface RunTime {
  total: number;
  steps: number;
  phases: Record<string, number>;
}

/**
 * Parses "time: 41.1 s for 30 steps — opt_g 78%, opt_d 17%, …" (or "time: 8m 31s for …") into ms per step; null when
 * `line` is no such line.
 */
export function parseTimeLine(line: string): RunTime | null {
  const m = /^time: (?:(\d+)m (\d+)s|([\d.]+) s) for (\d+) steps?(?: — (.*))?$/.exec(line.trim());
  if (!m) return null;
  const ms = (m[1] ? Number(m[1]) * 60 + Number(m[2]) : Number(m[3])) * 1000, steps = Number(m[4]);
  const phases: Record<string, number> = {};
  for (const part of (m[5] ?? "").split(", ")) {
    const p = /^(\S+) (\d+)%$/.exec(part);
    if (p) phases[p[1]] = (Number(p[2]) / 100) * ms / steps;
  }
  return { total: ms / steps, steps, phases };
}

/** The `time:` line of a run's stdout, parsed; null when there is none. */
export function findTimeLine(stdout: string): RunTime | null {
  const line = stdout.split("\n").find((l) => l.startsWith("time: "));
  return line ? parseTimeLine(line) : null;
}
