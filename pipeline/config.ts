/**
 * Reading a YAML config into typed objects with documented defaults, keeping source positions so every error names
 * file:line:col. Unknown keys are errors (with a did-you-mean). `--set path=value` overrides are applied to the YAML
 * document before validation, so they are checked like everything else.
 *
 * @module
 */
import { dirname, isAbsolute, relative, resolve } from "node:path";
import { type Document, isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import { z } from "zod";

/** One config problem: where it is and what was expected. */
export interface ConfigIssue {
  path: (string | number)[];
  message: string;
  /** Point at the key at `path` rather than its value (unknown keys, invalid names). */
  key?: boolean;
}

/** All the problems found in a config, each formatted as one `file:line:col: message` line. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly lines: string[]) {
    super(lines.join("\n"));
  }
}

const NAME = z.string().regex(
  /^[A-Za-z_][A-Za-z0-9_-]*$/,
  "a name of letters, digits, _ and - that starts with a letter or _",
);
const REF = z.string().regex(
  /^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_-]*$/,
  "a reference stage.port (like batch.x)",
);

/**
 * Upper bounds for the sizes in model kinds' param schemas. They sit far above anything that fits a machine; what
 * they stop is a value like 1e12 reaching a model's `shapes`, where a loop over 1e12 blocks never ends and products of
 * such widths lose integer precision (above 2^53). Sizes within them are judged by planning's memory estimate.
 */
export const SIZE_LIMITS = {
  /** Channels or features of one layer. */
  width: 65_536,
  /** Width of a dense layer, whose input may be a flattened image. */
  dense: 1_048_576,
  /** Repeats of a block, or entries of a list of layers. */
  count: 64,
  /** Side of a square image, in pixels. */
  side: 4_096,
} as const;

/** A positive integer size at most `max`. */
export const sizeSchema = (max: number): z.ZodNumber => z.number().int().positive().max(max);

/** The run section: name, seed, executor, steps, output folder, log cadence. */
export const RunSchema = z.strictObject({
  /** Name of the run; defaults to the config file's stem. */
  name: NAME.optional(),
  /** Seed of every random stream of the run. */
  seed: z.number().int().min(0).default(0),
  /** Which executor runs the compiled graphs. */
  executor: z.enum(["cpu", "wasm", "webgpu", "auto", "reference"]).default("auto"),
  /** Number of training steps. */
  steps: z.number().int().positive().default(1000),
  /** Output folder; defaults to `out/<name>`. */
  out: z.string().min(1).optional(),
  /** Print a progress line (off a terminal) and append to metrics.jsonl every N steps. */
  log_every: z.number().int().positive().default(10),
  /**
   * Folder of caches that outlive a run (teacher pairs, evaluation rows), relative to the working directory; stages
   * never write into the source tree at run time.
   */
  cache: z.string().min(1).default(".cache"),
});

/** A moment a stage fires at. */
const AT = z.union([z.enum(["start", "end"]), z.number().int().positive()]);

/** A model declaration: a registered kind, its params, and optionally a safetensors file to start from. */
export const ModelSchema = z.strictObject({
  kind: z.string(),
  params: z.record(z.string(), z.unknown()).default({}),
  /** A safetensors file (relative to the config) with initial parameters. */
  init: z.string().optional(),
});

/** A dataset declaration. */
export const DatasetSchema = z.strictObject({
  kind: z.string(),
  params: z.record(z.string(), z.unknown()).default({}),
});

/** A stage: its kind, input wiring, params and cadence. */
export const StageSchema = z.strictObject({
  kind: z.string(),
  /** Input port → "stage.port". */
  inputs: z.record(z.string(), REF).default({}),
  params: z.record(z.string(), z.unknown()).default({}),
  /** Effects: fire every N steps (with neither `every` nor `at`: the kind's default, usually every step). */
  every: z.number().int().positive().optional(),
  /**
   * Effects: fire at these moments — `start` (the first step an invocation runs), `end` (the run's last step), or step
   * numbers; one or a list, beside `every` when both are given (pipeline/cadence.ts).
   */
  at: z.union([AT, z.array(AT).min(1)], { error: '"start", "end", a step number or a list of them' }).optional(),
});

/** The whole config. */
export const ConfigSchema = z.strictObject({
  version: z.literal(1, { error: "1 (the only config version)" }),
  run: RunSchema.default({ seed: 0, executor: "auto", steps: 1000, log_every: 10, cache: ".cache" }),
  models: z.record(NAME, ModelSchema).default({}),
  data: z.record(NAME, DatasetSchema).default({}),
  stages: z.record(NAME, StageSchema).refine((s) => Object.keys(s).length > 0, "expected at least one stage"),
});

/** A config after the first validation pass (stage/model/dataset params are checked against their kinds later). */
export type Config = z.output<typeof ConfigSchema>;

/** A parsed config with its source, for positions. */
export interface LoadedConfig {
  file: string;
  config: Config;
  /**
   * Maps a config path to `file:line:col`: the value when the path exists (its key when `atKey`, or when the value
   * is a mapping), else the key of its nearest existing ancestor; `--set …` when an override put it there.
   */
  where(path: (string | number)[], atKey?: boolean): string;
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
function wantsMapping(schema: z.ZodType, path: (string | number)[]): boolean {
  return ["object", "record"].includes(schemaAt(schema, path)?._zod?.def?.type);
}

// deno-lint-ignore no-explicit-any
function schemaAt(schema: z.ZodType, path: (string | number)[]): any {
  // deno-lint-ignore no-explicit-any
  let s: any = schema;
  const unwrap = () => {
    while (s?._zod?.def && ["default", "optional", "prefault", "nullable", "pipe"].includes(s._zod.def.type)) {
      s = s._zod.def.innerType ?? s._zod.def.in;
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

type Path = (string | number)[];

/** The value at `path` inside `root`, and whether its last key exists. */
function lookup(root: unknown, path: Path): { found: boolean; value: unknown } {
  let v = root;
  for (const k of path) {
    if (v === null || typeof v !== "object" || !Object.hasOwn(v, k)) return { found: false, value: undefined };
    v = (v as Record<string | number, unknown>)[k];
  }
  return { found: true, value: v };
}

const quote = (path: Path) => (path.length ? `"${path.join(".")}"` : "config");

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
function show(v: unknown): string {
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

/** Parses a `--set` value as YAML (so numbers, booleans and lists work). */
function parseSetValue(raw: string): unknown {
  const d = parseDocument(raw);
  return d.errors.length ? raw : d.toJSON();
}

/** The first YAML error as one line: yaml's message without its "at line L, column C:" and source excerpt. */
function yamlError(
  file: string,
  text: string,
  lc: LineCounter,
  e: { code: string; pos: [number, number]; message: string },
) {
  let at = e.pos[0];
  let message = `YAML syntax: ${e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`;
  if (e.code === "DUPLICATE_KEY") {
    const key = /^("[^"]*"|'[^']*'|[^:\s,}]+)/.exec(text.slice(at))?.[1] ?? "?";
    message = `duplicate key ${
      key.startsWith('"') ? key : `"${key.replace(/^'|'$/g, "")}"`
    } (a key may appear once per mapping)`;
  }
  // yaml notices an unclosed { or [ only at the next key, lines later; the opener is where the fix goes.
  const flow = /^Flow (map|sequence) .* end with an? ([}\]])/.exec(e.message);
  if (flow) {
    const open = unclosedOpener(text, at, flow[2] === "}" ? "{" : "[");
    if (open >= 0) {
      at = open;
      message = `YAML syntax: this "${text[open]}" is never closed; expected "${flow[2]}" before the next key`;
    }
  }
  const p = lc.linePos(at);
  return `${file}:${p.line}:${p.col}: ${message}`;
}

/** Offset of the last `{` or `[` (as `want`) before `end` left open, skipping quotes and comments; -1 if none. */
function unclosedOpener(text: string, end: number, want: string): number {
  const stack: number[] = [];
  for (let i = 0; i < end; i++) {
    const c = text[i];
    if (c === "#" && (i === 0 || /\s/.test(text[i - 1]))) {
      while (i < end && text[i] !== "\n") i++;
    } else if (c === '"' || c === "'") {
      for (i++; i < end && text[i] !== c; i++) if (c === '"' && text[i] === "\\") i++;
    } else if (c === "{" || c === "[") {
      stack.push(i);
    } else if ((c === "}" || c === "]") && stack.length) {
      stack.pop();
    }
  }
  const top = stack.length ? stack[stack.length - 1] : -1;
  return top >= 0 && text[top] === want ? top : -1;
}

/**
 * Maps config paths to `file:line:col` in `doc` (see `LoadedConfig.where`); paths an override set map to its words.
 */
function positions(file: string, doc: Document, lc: LineCounter, setAt: Map<string, string>): Where {
  const pos = (offset: number) => {
    const p = lc.linePos(offset);
    return `${file}:${p.line}:${p.col}`;
  };
  return (path: Path, atKey = false): string => {
    // The nodes along `path`, through aliases to their anchors: a value written once and used twice is at one place.
    const trail: { key?: { range?: number[] }; value: { range?: number[] } | null }[] = [];
    let node: unknown = doc.contents;
    for (const k of path) {
      if (isAlias(node)) node = node.resolve(doc);
      const pair = isMap(node) ? node.items.find((it) => isScalar(it.key) && String(it.key.value) === String(k)) : null;
      const item = isSeq(node) && typeof k === "number" ? node.items[k] : undefined;
      if (pair) trail.push({ key: pair.key as { range?: number[] }, value: pair.value as { range?: number[] } | null });
      else if (item) trail.push({ value: item as { range?: number[] } });
      else break;
      node = pair ? pair.value : item;
    }
    for (let n = path.length; n > 0; n--) {
      const key = path.slice(0, n).join(".");
      if (setAt.has(key)) return setAt.get(key)!;
      if (n > trail.length) continue;
      const { key: k, value } = trail[n - 1];
      // The value itself when asked for it, unless it is a mapping: its key line reads better.
      if ((!k || (n === path.length && !atKey && !isMap(value))) && value?.range) return pos(value.range[0]);
      if (k?.range) return pos(k.range[0]);
    }
    const range = (doc.contents as { range?: number[] } | null)?.range;
    return range ? pos(range[0]) : `${file}:1:1`;
  };
}

/** Applies `--set` overrides to the document, noting in `setAt` the words that name each in errors. */
function applyOverrides(
  doc: Document,
  overrides: readonly (string | { set: string; from: string })[],
  setAt: Map<string, string>,
  where: Where,
): void {
  for (const o of overrides) {
    const [set, from] = typeof o === "string" ? [o, `--set ${o}`] : [o.set, o.from];
    const eq = set.indexOf("=");
    if (eq <= 0) throw new ConfigError([`${from}: expected path=value (e.g. run.steps=10)`]);
    const path = set.slice(0, eq).split(".");
    if (path.some((k) => k === "")) {
      throw new ConfigError([`${from}: "${set.slice(0, eq)}" is not a dotted path of keys`]);
    }
    try {
      const value = parseSetValue(set.slice(eq + 1));
      // `null` removes the key, as in an `extends` layer (e.g. --set stages.preview=null drops a stage). Where the
      // file extends another, the key may come from the base: an explicit null makes the merge remove it there.
      if (value === null && !doc.has("extends")) doc.deleteIn(path);
      else doc.setIn(path, doc.createNode(value));
    } catch {
      const above = path.findIndex((_, i) => !isMap(doc.getIn(path.slice(0, i + 1), true)) && i < path.length - 1);
      const prefix = path.slice(0, above + 1);
      // Where the file has a non-mapping that should be one (`run: 42`), the file is what is wrong; the override
      // only found it. Where it should not (`--set run.steps.x=1`), the override's path is.
      const fileWrong = prefix.length && !setAt.has(prefix.join(".")) && wantsMapping(ConfigSchema, prefix);
      const node = fileWrong ? doc.getIn(prefix, true) : undefined;
      if (node !== undefined) {
        const written = isScalar(node) ? node.value : (node as { toJSON(): unknown }).toJSON();
        throw new ConfigError([
          `${where(prefix)}: ${quote(prefix)}: expected a mapping, got ${show(written)} (${from} sets "${
            path.join(".")
          }" in it)`,
        ]);
      }
      throw new ConfigError([
        `${from}: "${prefix.join(".")}" is not a mapping, so "${path.join(".")}" cannot be set`,
      ]);
    }
    setAt.set(path.join("."), from);
  }
}

/**
 * Reads and validates a config file. `overrides` are `path=value` strings (`--set run.steps=10`); each may instead
 * come with the words to name it by in errors (`{ set: "run.steps=10", from: "--steps 10" }`).
 * Throws `ConfigError` with one line per problem.
 */
export function loadConfig(
  file: string,
  text: string,
  overrides: readonly (string | { set: string; from: string })[] = [],
  chain: readonly string[] = [],
): LoadedConfig {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, keepSourceTokens: true, uniqueKeys: true });
  if (doc.errors.length) throw new ConfigError([yamlError(file, text, lc, doc.errors[0])]);
  if (!isMap(doc.contents)) {
    const got = doc.contents === null ? "an empty file" : show(doc.toJSON());
    const at = doc.contents?.range ? lc.linePos(doc.contents.range[0]) : { line: 1, col: 1 };
    throw new ConfigError([
      `${file}:${at.line}:${at.col}: the config must be a mapping with version, run, models, data and stages; got ${got}`,
    ]);
  }
  const setAt = new Map<string, string>();
  const where = positions(file, doc, lc, setAt);
  applyOverrides(doc, overrides, setAt, where);
  let raw = doc.toJSON();
  let whereAll = where;
  if (raw && typeof raw === "object" && "extends" in raw) {
    ({ raw, where: whereAll } = extendBase(file, raw, where, chain));
  }
  const parsed = ConfigSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(formatIssues(zodIssues(parsed.error, ConfigSchema, [], raw), whereAll));
  const config = parsed.data;
  config.run.name ??= file.replace(/^.*\//, "").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]/g, "_");
  config.run.out ??= `out/${config.run.name}`;
  return {
    file,
    config,
    where: whereAll,
  };
}

type Where = (path: Path, atKey?: boolean) => string;

/**
 * `extends: base.yaml` (relative to the extending file): the base config is loaded (itself possibly extending
 * another) and this file's values are merged over it — mappings key by key, anything else replaced, and `null`
 * removing a key (e.g. a stage). Positions point into whichever file the value came from.
 */
function extendBase(file: string, raw: Record<string, unknown>, where: Where, chain: readonly string[]) {
  const ref = raw.extends;
  if (typeof ref !== "string" || !ref) {
    throw new ConfigError([`${where(["extends"])}: "extends": expected a file name`]);
  }
  const baseFile = ref.startsWith("/") ? ref : `${file.replace(/[^/]*$/, "")}${ref}`;
  if (chain.includes(baseFile) || baseFile === file) {
    throw new ConfigError([
      `${where(["extends"])}: "extends" makes a cycle: ${[...chain, file, baseFile].join(" → ")}`,
    ]);
  }
  let text: string;
  try {
    text = Deno.readTextFileSync(baseFile);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new ConfigError([`${where(["extends"])}: cannot read "${ref}" (${why})`]);
  }
  const base = loadRawLayer(baseFile, text, [...chain, file]);
  const { extends: _e, ...own } = raw;
  const merged = mergeLayers(rebaseInitPaths(base.raw, baseFile, file), own) as Record<string, unknown>;
  // The layer that has more of the path: a key this file adds (a stage's params) is found here even when the
  // problem is a key missing below it.
  const whereMerged: Where = (path, atKey) =>
    (depthIn(own, path) >= depthIn(base.raw, path) ? where : base.where)(path, atKey);
  return { raw: merged, where: whereMerged };
}

/**
 * A base layer's relative `models.*.init` paths, which are relative to the base file, rewritten relative to the file
 * that extends it (the run resolves them against the top file): `extends: ../../configs/add.yaml` from another folder
 * still finds add.yaml's teacher weights.
 */
function rebaseInitPaths(raw: unknown, baseFile: string, file: string): unknown {
  if (!isPlain(raw) || !isPlain(raw.models)) return raw;
  const from = dirname(baseFile), to = dirname(file);
  if (resolve(from) === resolve(to)) return raw;
  const models: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(raw.models)) {
    models[name] = isPlain(m) && typeof m.init === "string" && !isAbsolute(m.init)
      ? { ...m, init: relative(resolve(to), resolve(from, m.init)) }
      : m;
  }
  return { ...raw, models };
}

/**
 * A base layer's raw values and positions, without defaults (so the extending file still gets its own run name and
 * output folder) and without validating it alone: only the merged result must be valid.
 */
function loadRawLayer(file: string, text: string, chain: readonly string[]): { raw: unknown; where: Where } {
  const r = rawOnly(file, text, chain);
  if (r) return r;
  loadConfig(file, text, [], chain); // throws its syntax error, formatted
  throw new ConfigError([`${file}:1:1: the config must be a mapping`]);
}

function rawOnly(file: string, text: string, chain: readonly string[]): { raw: unknown; where: Where } | null {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, keepSourceTokens: true, uniqueKeys: true });
  if (doc.errors.length || !isMap(doc.contents)) return null;
  const where: Where = (path) => {
    for (let n = path.length; n >= 0; n--) {
      const node = (n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true)) as { range?: number[] } | null;
      if (node?.range) {
        const p = lc.linePos(node.range[0]);
        return `${file}:${p.line}:${p.col}`;
      }
    }
    return `${file}:1:1`;
  };
  const raw = doc.toJSON();
  return "extends" in raw ? extendBase(file, raw, where, chain) : { raw, where };
}

const isPlain = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** Deep merge of config layers: mappings merge, other values replace, `null` deletes. */
export function mergeLayers(base: unknown, over: unknown): unknown {
  if (!isPlain(base) || !isPlain(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete out[k];
    else out[k] = k in base ? mergeLayers(base[k], v) : withoutNulls(v);
  }
  return out;
}

/** A layer's own mapping with its `null`s (removals of what no base defines) dropped. */
function withoutNulls(v: unknown): unknown {
  if (!isPlain(v)) return v;
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, withoutNulls(x)]));
}

/** How many of `path`'s keys, from the first, exist in `o`. */
function depthIn(o: unknown, path: Path): number {
  let cur = o;
  for (let n = 0; n < path.length; n++) {
    if (cur === null || typeof cur !== "object" || !(String(path[n]) in (cur as object))) return n;
    cur = (cur as Record<string, unknown>)[String(path[n])];
  }
  return path.length;
}
