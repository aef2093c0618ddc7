/**
 * `--set path=value` overrides, applied to the YAML document before validation so that they are checked like
 * everything else, and named in errors by the words that set them.
 *
 * @module
 */
import { type Document, isMap, isScalar, parseDocument } from "yaml";
import { ConfigError, quote, show, wantsMapping } from "./config_issues.ts";
import type { Where } from "./config_positions.ts";
import { ConfigSchema } from "./config_schema.ts";

/** Parses a `--set` value as YAML (so numbers, booleans and lists work). */
function parseSetValue(raw: string): unknown {
  const d = parseDocument(raw);
  return d.errors.length ? raw : d.toJSON();
}

/** Applies `--set` overrides to the document, noting in `setAt` the words that name each in errors. */
export function applyOverrides(
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
