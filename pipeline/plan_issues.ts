/**
 * How planning collects what is wrong with a config: issues pass by pass, references to missing things one error per
 * name, and thrown values as one line.
 *
 * @module
 */
import type { LoadedConfig } from "./config.ts";
import { ConfigError, type ConfigIssue, formatIssues, type Path } from "./config_issues.ts";

/** Issues found so far; planning stops after a pass with any, since later passes would only repeat their cause. */
export class Issues {
  readonly list: ConfigIssue[] = [];
  constructor(private readonly loaded: LoadedConfig) {}
  add(path: Path, message: string, key = false): void {
    this.list.push({ path, message, key });
  }
  throwIfAny(): void {
    if (this.list.length) throw new ConfigError(formatIssues(this.list, this.loaded.where));
  }
}

/**
 * References to a stage, model or dataset that is not there, grouped by the missing name: one missing thing is one
 * error however often it is named, at its first reference.
 */
export class Missing {
  private readonly refs = new Map<string, { path: Path; from: string[]; one: string }>();
  /** A reference to `name` at `path` by stage `from`; `one` is the error when it is the only one. */
  note(name: string, path: Path, from: string, one: string): void {
    const r = this.refs.get(name);
    if (r) r.from.push(from);
    else this.refs.set(name, { path, from: [from], one });
  }
  /** One error per missing name: `many` words a group, given the stages that refer to it. */
  report(issues: Issues, many: (name: string, from: string) => string): void {
    for (const [name, r] of this.refs) {
      issues.add(r.path, r.from.length === 1 ? r.one : many(name, [...new Set(r.from)].join(", ")));
    }
  }
}

/** A thrown value as one line: its first line, without the engine's "(at file:line:col)" of the throwing code. */
export function oneLine(e: unknown): string {
  const err = e instanceof Error ? e : new Error(String(e));
  const msg = (err.message.split("\n")[0] || "(no message)").replace(/ \(at [^()]*\)$/, "");
  return err.name === "Error" || err.name === "TraceError" || err.name === "StageTypeError"
    ? msg
    : `${err.name}: ${msg}`;
}

/** A list of names as errors quote it: `"a", "b"`. */
export const quoteList = (xs: string[]): string => xs.map((x) => `"${x}"`).join(", ");
