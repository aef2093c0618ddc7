/**
 * `metrics`: plots every logged scalar of `metrics.jsonl` against the step into `metrics.svg` (one panel per
 * metric, log scale for positive series spanning more than a decade), at its cadence and at the end.
 *
 * @module
 */
import { z } from "zod";
import type { StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** File name under the output folder. */
  file: z.string().regex(/^[\w.-]+\.svg$/, "a file name ending in .svg").default("metrics.svg"),
  /** Metrics to plot (all when empty). */
  keys: z.array(z.string()).default([]),
});

/** Renders series as a small-multiples SVG. Pure, for tests. */
export function plotSvg(rows: Record<string, number>[], keys: string[]): string {
  const W = 360, H = 160, pad = 36, cols = Math.min(2, Math.max(1, keys.length));
  const rowsN = Math.ceil(keys.length / cols);
  const parts: string[] = [];
  keys.forEach((key, i) => {
    const pts = thin(rows.filter((r) => Number.isFinite(r[key])).map((r) => [r.step, r[key]] as const));
    const ox = (i % cols) * W, oy = Math.floor(i / cols) * H;
    parts.push(`<g transform="translate(${ox},${oy})"><text x="${pad}" y="14" font-size="12">${esc(key)}</text>`);
    if (pts.length) {
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      const logY = min(ys) > 0 && max(ys) / min(ys) > 10;
      const f = (v: number) => (logY ? Math.log10(v) : v);
      const [x0, x1] = [min(xs), max(xs)], [y0, y1] = [f(min(ys)), f(max(ys))];
      const sx = (x: number) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - pad - 8);
      const sy = (y: number) => H - 20 - ((f(y) - y0) / (y1 - y0 || 1)) * (H - 44);
      const d = pts.map((p, k) => `${k ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      parts.push(`<path d="${d}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
      const lab = (v: number) => (logY ? `1e${v.toFixed(1)}` : v.toPrecision(3));
      parts.push(
        `<text x="2" y="30" font-size="10">${lab(y1)}</text><text x="2" y="${H - 20}" font-size="10">${lab(y0)}</text>`,
      );
      parts.push(`<text x="${pad}" y="${H - 6}" font-size="10">step ${x0}</text>`);
      parts.push(`<text x="${W - 60}" y="${H - 6}" font-size="10">${x1}</text>`);
    }
    parts.push(`</g>`);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${cols * W}" height="${rowsN * H}" font-family="sans-serif">` +
    `<rect width="100%" height="100%" fill="white"/>${parts.join("")}</svg>\n`;
}

// Loops, not Math.min(...xs): spreading a long run's rows overflows the call stack.
const min = (xs: readonly number[]) => xs.reduce((a, b) => (b < a ? b : a), Infinity);
const max = (xs: readonly number[]) => xs.reduce((a, b) => (b > a ? b : a), -Infinity);

/** At most `MAX_POINTS` per series (every k-th row, and the last), so a long run's plot stays small. */
const MAX_POINTS = 2000;
function thin<T>(pts: readonly T[]): T[] {
  if (pts.length <= MAX_POINTS) return [...pts];
  const k = Math.ceil(pts.length / MAX_POINTS);
  const out = pts.filter((_, i) => i % k === 0);
  if ((pts.length - 1) % k !== 0) out.push(pts[pts.length - 1]);
  return out;
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** The metrics stage. */
export const metrics: StageDef<z.output<typeof Params>> = {
  kind: "metrics",
  doc: "plots the logged scalars of metrics.jsonl to an SVG",
  role: "effect",
  params: Params,
  inputs: [],
  cadence: { always: ["end"] },
  types: () => ({}),
  effect: async (ctx, p) => {
    let text = "";
    try {
      text = await Deno.readTextFile(`${ctx.out}/metrics.jsonl`);
    } catch {
      return;
    }
    const rows = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, number>);
    const keys = p.keys.length ? p.keys : [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => k !== "step");
    const file = `${ctx.out}/${p.file}`, tmp = `${file}.tmp`;
    await Deno.writeTextFile(tmp, plotSvg(rows, keys));
    await Deno.rename(tmp, file);
  },
};
