/**
 * Config problems and how they read: each is one `file:line:col: message` line, zod's issues reworded as what was
 * expected and what was written, with a did-you-mean on misspelt keys and names.
 *
 * @module
 */
import type { z } from "zod";

/** One config problem: where it is and what was expected. */
export interface ConfigIssue {
  path: (string | number)[];
  message: string;
  /** Point at the key at `path` rather than its value (unknown keys, invalid names). */
  key?: boolean;
}

/** All the problems found in a config, each formatted as one `file:line:col: message` line. */
export class ConfigError extends Error {
  /** Names the class where the error is printed uncaught. */
  override name = "ConfigError";
  /** `lines`: the problems, one `file:line:col: message` each (the message joins them). */
  constructor(readonly lines: string[]) {
    super(lines.join("\n"));
  }
}

/**
 * Edit distance with adjacent transpositions (optimal string alignment), for did-you-mean: "stesp" is one edit
 * from "steps", as a typist would count it.
 */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** The closest known word within a third of `word`'s length (at least 1 edit), or undefined. */
function closest(word: string, known: Iterable<string>): string | undefined {
  let best: string | undefined, bestD = Infinity;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

/** ` (did you mean "x"?)` when a known word is close, else "". */
export function didYouMean(word: string, known: Iterable<string>): string {
  const best = closest(word, known);
  return best === undefined ? "" : ` (did you mean "${best}"?)`;
}

/**
 * ` (did you mean "x"?)` when a known word is close, else `; <label>: a, b, c` listing them all — the list only when
 * there is no suggestion, so a line stays short where the fix is obvious.
 */
export function suggest(word: string, known: Iterable<string>, label: string): string {
  const all = [...known];
  const best = closest(word, all);
  return best !== undefined ? ` (did you mean "${best}"?)` : `; ${label}: ${all.join(", ") || "(none)"}`;
}

/** Keys a zod schema accepts at `path` (through defaults, optionals and records), for did-you-mean. */
export function keysAt(schema: z.ZodType, path: (string | number)[]): string[] {
  const s = schemaAt(schema, path);
  return s?._zod?.def?.type === "object" ? Object.keys(s._zod.def.shape) : [];
}

/** Whether a zod schema wants a mapping (an object or a record) at `path`. */
export function wantsMapping(schema: z.ZodType, path: (string | number)[]): boolean {
  return ["object", "record"].includes(schemaAt(schema, path)?._zod?.def?.type);
}

// deno-lint-ignore no-explicit-any
function schemaAt(schema: z.ZodType, path: (string | number)[]): any {
  // deno-lint-ignore no-explicit-any
  let s: any = schema;
  const unwrap = () => {
    while (s?._zod?.def && ["default", "optional", "prefault", "nullable", "pipe"].includes(s._zod.def.type)) {
      const d = s._zod.def;
      // A preprocessed schema (z.preprocess: a transform piped into a schema) has its keys on the schema side.
      s = d.innerType ?? (d.in?._zod?.def?.type === "transform" ? d.out : d.in);
    }
  };
  unwrap();
  for (const k of path) {
    const def = s?._zod?.def;
    if (!def) return undefined;
    if (def.type === "object") s = def.shape[k];
    else if (def.type === "record") s = def.valueType;
    else return undefined;
    unwrap();
  }
  return s;
}

/** A path of keys and indices into a config. */
export type Path = (string | number)[];

/** The value at `path` inside `root`, and whether its last key exists. */
function lookup(root: unknown, path: Path): { found: boolean; value: unknown } {
  let v = root;
  for (const k of path) {
    if (v === null || typeof v !== "object" || !Object.hasOwn(v, k)) return { found: false, value: undefined };
    v = (v as Record<string | number, unknown>)[k];
  }
  return { found: true, value: v };
}

/** A path as errors quote it: `"run.steps"`, or `config` for the whole. */
export const quote = (path: Path): string => (path.length ? `"${path.join(".")}"` : "config");

/**
 * Formats zod issues as config issues, with did-you-mean on unknown keys. `input` is the value that was parsed (at
 * `base`): with it, a wrong value is told from a missing one and shown as it was written.
 */
export function zodIssues(error: z.ZodError, schema: z.ZodType, base: Path = [], input?: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  // A misspelt key also leaves the key it meant missing; the did-you-mean says it all.
  const meant = new Set<string>();
  // Keys missing from one mapping are one issue (a deleted `params` is one mistake, not one per key it held).
  const missing = new Map<
    string,
    { parent: Path; keys: { key: string | number; want: string }[]; issue: ConfigIssue }
  >();
  // One value, one issue: "≤ 1" and "< 1", or "> 0" and "a multiple of 32", say the same thing twice.
  const valued = new Set<string>();
  for (const issue of error.issues) {
    const rel = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
    const path = [...base, ...rel];
    if (issue.code === "unrecognized_keys") {
      const known = keysAt(schema, rel);
      for (const key of issue.keys) {
        const best = closest(key, known);
        if (best !== undefined) meant.add(JSON.stringify([...path, best]));
        out.push({
          path: [...path, key],
          key: true,
          message: `${quote(path)}: unknown key "${key}"${suggest(key, known, "expected one of")}`,
        });
      }
      continue;
    }
    if (issue.code === "invalid_key") {
      const name = String(rel[rel.length - 1]);
      const why = issue.issues[0]?.code === "invalid_format" ? issue.issues[0].message : "a valid name";
      out.push({ path, key: true, message: `${quote(path.slice(0, -1))}: invalid name "${name}"; expected ${why}` });
      continue;
    }
    const at = input === undefined ? { found: issue.input !== undefined, value: issue.input } : lookup(input, rel);
    if (!at.found && path.length > 0 && (issue.code === "invalid_type" || issue.code === "invalid_value")) {
      const parent = path.slice(0, -1), id = JSON.stringify(parent);
      let group = missing.get(id);
      if (!group) {
        group = { parent, keys: [], issue: { path: parent, message: "" } };
        missing.set(id, group);
        out.push(group.issue);
      }
      group.keys.push({ key: path[path.length - 1], want: expectation(issue) });
      continue;
    }
    if (valued.has(JSON.stringify(path))) continue;
    valued.add(JSON.stringify(path));
    out.push({ path, message: `${quote(path)}: ${describe(issue, at.value)}` });
  }
  const dropped = new Set<ConfigIssue>();
  for (const { parent, keys, issue } of missing.values()) {
    const left = keys.filter((k) => !meant.has(JSON.stringify([...parent, k.key])));
    if (!left.length) dropped.add(issue);
    else if (left.length === 1) {
      issue.message = `${quote(parent)}: missing key "${left[0].key}"; expected ${left[0].want}`;
    } else {
      const same = left.every((k) => k.want === left[0].want);
      const list = left.map((k) => `"${k.key}"${same ? "" : ` (${k.want})`}`).join(", ");
      issue.message = `${quote(parent)}: missing keys ${list}${same ? `; expected ${left[0].want} each` : ""}`;
    }
  }
  return out.filter((i) => !dropped.has(i));
}

/**
 * Issues as `file:line:col: message` lines, each cause said once: a repeated line is dropped, and issues about one
 * written value reached by several paths (a YAML anchor used through aliases, `params: *unet`) are one line that
 * names every path.
 */
export function formatIssues(issues: readonly ConfigIssue[], where: (path: Path, atKey?: boolean) => string): string[] {
  const lines: { at: string; head?: string; also: string[]; rest: string }[] = [];
  for (const i of issues) {
    const at = where(i.path, i.key);
    const m = /^("[^"]*"): (.*)$/.exec(i.message);
    const [head, rest] = m ? [m[1], m[2]] : [undefined, i.message];
    const same = lines.find((l) => l.at === at && l.rest === rest);
    if (!same) lines.push({ at, head, also: [], rest });
    else if (head !== undefined && head !== same.head && !same.also.includes(head)) same.also.push(head);
  }
  return lines.map((l) => {
    const also = l.also.length ? ` (and ${l.also.join(", ")}: the same value)` : "";
    return `${l.at}: ${l.head === undefined ? "" : `${l.head}${also}: `}${l.rest}`;
  });
}

const TYPE_NAMES: Record<string, string> = {
  number: "a number",
  int: "an integer",
  string: "a string",
  boolean: "true or false",
  array: "a list",
  record: "a mapping",
  object: "a mapping",
  map: "a mapping",
};
const typeName = (t: string) => TYPE_NAMES[t] ?? `a ${t}`;

/** A value as the user wrote it, briefly. */
export function show(v: unknown): string {
  if (v === null) return "an empty value";
  if (Array.isArray(v)) return v.length ? "a list" : "an empty list";
  if (typeof v === "object") return "a mapping";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v);
  return String(v);
}

/** zod's own messages; anything else is a schema's noun phrase ("a file name ending in .svg"). */
const isZodDefault = (m: string) => /^(Invalid|Too (big|small)|Unrecognized)/.test(m);

/** What a type or value issue wanted, as a noun phrase. */
function expectation(issue: z.core.$ZodIssue): string {
  if (!isZodDefault(issue.message)) return issue.message;
  if (issue.code === "invalid_type") return typeName(issue.expected);
  if (issue.code === "invalid_value") {
    const vs = issue.values.map((v) => JSON.stringify(v));
    return vs.length === 1 ? vs[0] : `one of ${vs.join(", ")}`;
  }
  return "a value";
}

function describe(issue: z.core.$ZodIssue, value: unknown): string {
  const got = `, got ${show(value)}`;
  if (issue.code === "custom") return issue.message;
  if (issue.code === "invalid_type" || issue.code === "invalid_value" || !isZodDefault(issue.message)) {
    return `expected ${expectation(issue)}${got}`;
  }
  if (issue.code === "too_small" || issue.code === "too_big") {
    const small = issue.code === "too_small";
    const bound = Number(small ? (issue as { minimum: unknown }).minimum : (issue as { maximum: unknown }).maximum);
    if (issue.origin === "array" || issue.origin === "set") {
      const n = `${bound} item${bound === 1 ? "" : "s"}`;
      return `expected ${small ? "at least" : "at most"} ${n}, got ${
        Array.isArray(value) ? value.length : show(value)
      }`;
    }
    if (issue.origin === "string") {
      return small && bound === 1
        ? "must not be empty"
        : `must be ${small ? "at least" : "at most"} ${bound} characters`;
    }
    const op = small ? (issue.inclusive === false ? ">" : "≥") : (issue.inclusive === false ? "<" : "≤");
    return `must be ${op} ${bound}${got}`;
  }
  if (issue.code === "invalid_format") {
    const what = issue.format === "regex" ? `a string matching ${issue.pattern}` : `a valid ${issue.format}`;
    return `expected ${what}${got}`;
  }
  return issue.message.replace(/^Invalid input: /, "");
}
