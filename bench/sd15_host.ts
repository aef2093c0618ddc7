/**
 * What bench/sd15.ts and bench/sd15_add.ts share: a process's resident memory from /proc, and seeded random weights
 * for a model's shapes.
 *
 * @module
 */
import { Rng } from "../engine/rng.ts";

/** VmRSS and VmHWM of a process (this one by default), in bytes. */
export function memory(pid: number | "self" = "self"): { rss: number; hwm: number } {
  const s = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/**
 * Seeded weights under `shapes`' keys: norm scales 1, biases 0, the rest uniform with variance 1/fan-in. Uniform
 * rather than normal: it draws 859.5 M values in half the time, and timings do not depend on the values.
 */
export function randomWeights(shapes: Record<string, number[]>, seed: number): Record<string, Float32Array> {
  const rng = new Rng(seed), out: Record<string, Float32Array> = {};
  for (const [k, s] of Object.entries(shapes)) {
    const n = s.reduce((a, b) => a * b, 1), fanIn = s.slice(1).reduce((a, b) => a * b, 1);
    if (s.length === 1) {
      out[k] = new Float32Array(n).fill(/norm.*\.weight$/.test(k) ? 1 : 0);
      continue;
    }
    const u = rng.fold(k).uniform(n), bound = Math.sqrt(3 / fanIn);
    for (let i = 0; i < n; i++) u[i] = (2 * u[i] - 1) * bound;
    out[k] = u;
  }
  return out;
}
