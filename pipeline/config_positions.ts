/**
 * Where a config path is written: `file:line:col` in the YAML source (through aliases to their anchors), or the
 * `--set` words that put it there; and YAML syntax errors as one such line.
 *
 * @module
 */
import { type Document, isAlias, isMap, isScalar, isSeq, type LineCounter } from "yaml";
import type { Path } from "./config_issues.ts";

/** Maps a config path to where it is written (see `LoadedConfig.where`). */
export type Where = (path: Path, atKey?: boolean) => string;

/** The first YAML error as one line: yaml's message without its "at line L, column C:" and source excerpt. */
export function yamlError(
  file: string,
  text: string,
  lc: LineCounter,
  e: { code: string; pos: [number, number]; message: string },
): string {
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
export function positions(file: string, doc: Document, lc: LineCounter, setAt: Map<string, string>): Where {
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
