/**
 * Reading a YAML config into typed objects with documented defaults, keeping source positions so every error names
 * file:line:col. Unknown keys are errors (with a did-you-mean). `--set path=value` overrides are applied to the YAML
 * document before validation, so they are checked like everything else. A config may `extends` another, merged under
 * it.
 *
 * The schema (config_schema.ts), the wording of problems (config_issues.ts), source positions (config_positions.ts)
 * and overrides (config_overrides.ts) are modules of their own; what callers import is re-exported here.
 *
 * @module
 */
import { dirname, isAbsolute, relative, resolve } from "node:path";
import { isMap, LineCounter, parseDocument } from "yaml";
import { ConfigError, formatIssues, type Path, show, zodIssues } from "./config_issues.ts";
import { applyOverrides } from "./config_overrides.ts";
import { positions, type Where, yamlError } from "./config_positions.ts";
import { type Config, ConfigSchema } from "./config_schema.ts";

export {
  ConfigError,
  type ConfigIssue,
  didYouMean,
  editDistance,
  formatIssues,
  keysAt,
  suggest,
  zodIssues,
} from "./config_issues.ts";
export {
  type Config,
  ConfigSchema,
  type DatasetConfig,
  DatasetSchema,
  type LoraConfig,
  type ModelConfig,
  ModelSchema,
  type RunConfig,
  RunSchema,
  SIZE_LIMITS,
  sizeSchema,
  type StageConfig,
  StageSchema,
} from "./config_schema.ts";

/** A parsed config with its source, for positions. */
export interface LoadedConfig {
  /** The config file's path, as errors name it. */
  file: string;
  /** The validated config, defaults applied and any `extends` merged. */
  config: Config;
  /**
   * Maps a config path to `file:line:col`: the value when the path exists (its key when `atKey`, or when the value
   * is a mapping), else the key of its nearest existing ancestor; `--set …` when an override put it there.
   */
  where(path: (string | number)[], atKey?: boolean): string;
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
