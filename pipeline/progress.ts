/**
 * Progress: a redrawn bar on a terminal (step, it/s, ETA, latest losses), plain lines every N steps otherwise.
 *
 * @module
 */

/** Formats seconds as h:mm:ss or m:ss. */
export function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return `${h ? `${h}:` : ""}${mm}:${String(sec).padStart(2, "0")}`;
}

/** Formats a metric value compactly. */
export const fmtValue = (v: number): string =>
  Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toPrecision(4);

/** The terminal's width, 120 when unknown. */
function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns || 120; // 0 on a pseudo-terminal that was given no size
  } catch {
    return 120;
  }
}

/** Prints training progress. */
export class Progress {
  private readonly enc = new TextEncoder();
  private t0 = performance.now();
  private startStep = 0;
  private drawn = false;
  private lastDraw = -Infinity;
  private bar = "";

  constructor(
    private readonly total: number,
    private readonly every: number,
    private readonly tty = Deno.stdout.isTerminal(),
    private readonly write: (s: string) => void = (s) => Deno.stdout.writeSync(this.enc.encode(s)),
    private readonly columns: () => number = terminalColumns,
  ) {}

  /** Marks the step the run (re)starts from, so it/s counts only this session's steps. */
  start(step: number): void {
    this.startStep = step;
    this.t0 = performance.now();
  }

  /**
   * Reports a finished step and its metrics. On a terminal the bar is redrawn at most 10 times a second, unless
   * `force` (the last step before the run stops).
   */
  update(step: number, metrics: Record<string, number>, force = false): void {
    const now = performance.now();
    if (this.tty && !force && step !== this.total && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const elapsed = (now - this.t0) / 1000;
    const done = step - this.startStep;
    const rate = done / Math.max(elapsed, 1e-9);
    const eta = (this.total - step) / rate;
    const losses = Object.entries(metrics).map(([k, v]) => `${k}=${fmtValue(v)}`).join(" ");
    const head = `step ${step}/${this.total} | ${rate.toFixed(2)} it/s | ETA ${fmtDuration(eta)}`;
    if (this.tty) {
      const width = 24, filled = Math.round((step / this.total) * width);
      const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
      const cols = this.columns();
      // On a narrow terminal the bar goes first: the numbers matter more.
      const line = `${head} | ${losses}`;
      this.bar = (line.length + bar.length + 1 < cols ? `${bar} ${line}` : line).slice(0, cols - 1);
      this.write(`\r\x1b[2K${this.bar}`);
      this.drawn = true;
    } else if (step % this.every === 0 || step === this.total) {
      this.write(`${head} | ${losses}\n`);
    }
  }

  /** Prints a line above the bar, and the bar again below it. */
  log(line: string): void {
    if (this.tty && this.drawn) this.write(`\r\x1b[2K${line}\n${this.bar}`);
    else this.write(`${line}\n`);
  }

  /** Ends the bar's line. */
  finish(): void {
    if (this.tty && this.drawn) this.write("\n");
    this.drawn = false;
  }
}
