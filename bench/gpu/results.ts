/**
 * The benchmarks' `RESULT <workload> key=value …` lines, read back into data for bench/gpu/main.ts's results file.
 *
 * @module
 */

/** One RESULT line: its workload and its fields (numbers where they read as numbers, else the text). */
export interface ResultLine {
  workload: string;
  fields: Record<string, number | string>;
}

/** Every RESULT line of `text`, in order. */
export function parseResultLines(text: string): ResultLine[] {
  const out: ResultLine[] = [];
  for (const line of text.split("\n")) {
    const m = /^RESULT (\S+)((?: \S+=\S*)*)\s*$/.exec(line.trim());
    if (!m) continue;
    const fields: Record<string, number | string> = {};
    for (const kv of m[2].trim().split(" ").filter(Boolean)) {
      const at = kv.indexOf("=");
      const key = kv.slice(0, at), value = kv.slice(at + 1);
      // "NaN" stays text: a results file should say that a figure is missing, not hold a number that is none.
      fields[key] = value !== "" && Number.isFinite(Number(value)) ? Number(value) : value;
    }
    out.push({ workload: m[1], fields });
  }
  return out;
}
