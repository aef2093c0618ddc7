/**
 * Reading a YAML config into typed objects with documented defaults, keeping source positions so every error names
 * file:line:col. Unknown keys are errors (with a did-you-mean). `--set path=value` overrides are applied to the YAML
 * document before validation, so they are checked like everything else.
 *
 * @module
 */
import { isMap, isScalar, LineCounter, parseDocument, type YAMLMap } from "yaml";
import { z } from "zod";

/** One config problem: where it is and what was expected. */
export interface ConfigIssue {
  path: (string | number)[];
  message: string;
}

/** All the problems found in a config, each formatted as one `file:line:col: message` line. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly lines: string[]) {
    super(lines.join("\n"));
  }
}

const NAME = z.string().regex(/^[A-Za-z_][A-Za-z0-9_-]*$/, "a name of letters, digits, _ and -");
const REF = z.string().regex(/^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_-]*$/, "a reference 'stage.port'");

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
});

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
  /** Run every N steps (default 1). */
  every: z.number().int().positive().optional(),
  /** Run once, at the start or at the end, instead of every N steps. */
  at: z.enum(["start", "end"]).optional(),
});

/** The whole config. */
export const ConfigSchema = z.strictObject({
  version: z.literal(1, { error: "version: 1 (the only config version)" }),
  run: RunSchema.default({ seed: 0, executor: "auto", steps: 1000, log_every: 10 }),
  models: z.record(NAME, ModelSchema).default({}),
  data: z.record(NAME, DatasetSchema).default({}),
  stages: z.record(NAME, StageSchema).refine((s) => Object.keys(s).length > 0, "at least one stage"),
});

/** A config after the first validation pass (stage/model/dataset params are checked against their kinds later). */
export type Config = z.output<typeof ConfigSchema>;

/** A parsed config with its source, for positions. */
export interface LoadedConfig {
  file: string;
  config: Config;
  /** Maps a config path to `file:line:col`. */
  where(path: (string | number)[]): string;
  /** The resolved config as YAML (defaults filled in), for checkpoints. */
  resolvedYaml(): string;
}

/** Levenshtein distance, for did-you-mean. */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

/** ` (did you mean "x"?)` when a known word is close, else "". */
export function didYouMean(word: string, known: Iterable<string>): string {
  let best = "", bestD = Infinity;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? ` (did you mean "${best}"?)` : "";
}

/** Keys a zod schema accepts at `path` (through defaults, optionals and records), for did-you-mean. */
export function keysAt(schema: z.ZodType, path: (string | number)[]): string[] {
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
    if (!def) return [];
    if (def.type === "object") s = def.shape[k];
    else if (def.type === "record") s = def.valueType;
    else return [];
    unwrap();
  }
  return s?._zod?.def?.type === "object" ? Object.keys(s._zod.def.shape) : [];
}

/** Formats zod issues as config issues, with did-you-mean on unknown keys. */
export function zodIssues(error: z.ZodError, schema: z.ZodType, base: (string | number)[] = []): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    const path = [...base, ...issue.path.map((p) => (typeof p === "symbol" ? String(p) : p))];
    if (issue.code === "unrecognized_keys") {
      const known = keysAt(schema, issue.path as (string | number)[]);
      for (const key of issue.keys) {
        out.push({
          path: [...path, key],
          message: `unknown key "${key}"${didYouMean(key, known)}; expected one of: ${known.join(", ")}`,
        });
      }
      continue;
    }
    const at = path.length ? `"${path.join(".")}"` : "config";
    out.push({ path, message: `${at}: ${describe(issue)}` });
  }
  return out;
}

function describe(issue: z.core.$ZodIssue): string {
  if (issue.code === "invalid_type") {
    if (issue.input === undefined) return `missing; expected ${issue.expected}`;
    return `expected ${issue.expected}, got ${JSON.stringify(issue.input) ?? typeof issue.input}`;
  }
  if (issue.code === "invalid_value") return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
  if (issue.code === "too_small") return `must be ${issue.inclusive === false ? ">" : "≥"} ${issue.minimum}`;
  if (issue.code === "too_big") return `must be ${issue.inclusive === false ? "<" : "≤"} ${issue.maximum}`;
  if (issue.code === "invalid_format") return `expected ${issue.message.replace(/^Invalid string: /, "")}`;
  return issue.message.replace(/^Invalid input: /, "");
}

/** Parses a `--set` value as YAML (so numbers, booleans and lists work). */
function parseSetValue(raw: string): unknown {
  const d = parseDocument(raw);
  return d.errors.length ? raw : d.toJSON();
}

/**
 * Reads and validates a config file. `overrides` are `path=value` strings (`--set run.steps=10`).
 * Throws `ConfigError` with one line per problem.
 */
export function loadConfig(file: string, text: string, overrides: readonly string[] = []): LoadedConfig {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, keepSourceTokens: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(doc.errors.map((e) => {
      const p = lc.linePos(e.pos[0]);
      return `${file}:${p.line}:${p.col}: YAML syntax: ${e.message.split("\n")[0]}`;
    }));
  }
  const setAt = new Map<string, string>();
  for (const o of overrides) {
    const eq = o.indexOf("=");
    if (eq <= 0) throw new ConfigError([`--set ${o}: expected path=value (e.g. run.steps=10)`]);
    const path = o.slice(0, eq).split(".");
    if (!isMap(doc.contents)) throw new ConfigError([`${file}:1:1: the config must be a mapping`]);
    doc.setIn(path, doc.createNode(parseSetValue(o.slice(eq + 1))));
    setAt.set(path.join("."), `--set ${o}`);
  }
  const where = (path: (string | number)[]): string => {
    for (let n = path.length; n >= 0; n--) {
      const key = path.slice(0, n).join(".");
      if (setAt.has(key)) return setAt.get(key)!;
      const node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true);
      // For a key that exists, point at the key itself when asked for it (unknown keys).
      if (n === path.length && n > 0) {
        const parent = n === 1 ? doc.contents : doc.getIn(path.slice(0, n - 1), true);
        if (isMap(parent)) {
          const pair = (parent as YAMLMap).items.find((it) => isScalar(it.key) && it.key.value === path[n - 1]);
          if (pair && isScalar(pair.key) && pair.key.range) {
            if (pair.value && (pair.value as { range?: number[] }).range && !isMap(pair.value)) {
              const p = lc.linePos((pair.value as { range: number[] }).range[0]);
              return `${file}:${p.line}:${p.col}`;
            }
            const p = lc.linePos(pair.key.range[0]);
            return `${file}:${p.line}:${p.col}`;
          }
        }
      }
      const range = (node as { range?: number[] } | null)?.range;
      if (range) {
        const p = lc.linePos(range[0]);
        return `${file}:${p.line}:${p.col}`;
      }
    }
    return `${file}:1:1`;
  };
  const raw = doc.toJSON();
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError([`${file}:1:1: the config must be a mapping with version, run, models, data and stages`]);
  }
  const parsed = ConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ConfigError(zodIssues(parsed.error, ConfigSchema).map((i) => `${where(i.path)}: ${i.message}`));
  }
  const config = parsed.data;
  config.run.name ??= file.replace(/^.*\//, "").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]/g, "_");
  config.run.out ??= `out/${config.run.name}`;
  return {
    file,
    config,
    where,
    resolvedYaml: () => JSON.stringify(config, null, 2),
  };
}
