/**
 * The repo's functions by length: `deno run --allow-read bench/function_sizes.ts [root] [--top N] [--over 80]`.
 *
 * Reads every .ts file under `root` (default: the working directory; node_modules, a top-level out and dot folders
 * skipped) and finds function declarations and expressions, class and object methods (constructors and accessors
 * too), arrow functions assigned to a name or given as an object property (`host: async (ctx, p) => {…}`) and
 * callbacks after a string argument (`Deno.test("name", () => {…})`; the `fn` of `Deno.test({ name, fn })` takes the
 * test's name). A function's length runs from its signature's (its name's) line to its closing brace's. Prints the
 * top N (default 15) as `file:line name lines`, how many are over the threshold (default 80) outside tests/ and in
 * tests/, and the files over 600 lines. Nested functions are listed as well as the functions that hold them.
 *
 * A small tokenizer rather than the TypeScript parser, so that the script needs no dependency: it skips strings,
 * template literals (nested `${}` included), comments and regex literals (a `/` after an operand divides), which is
 * what matching braces takes.
 *
 * @module
 */

/** One token: an identifier or keyword, a punctuator, or a literal (strings and template pieces keep their quotes). */
export type Token = { kind: "id" | "punct" | "str" | "regex" | "num"; text: string; line: number };

/** A function found in a source: its name, the lines of its signature and closing brace, and its length. */
export type FunctionSize = { name: string; line: number; end: number; lines: number };

const PUNCTS = ["===", "!==", "...", "==", "!=", "<=", ">=", "=>", "&&", "||", "??", "?.", "+=", "-="];
const REGEX_AFTER = new Set("return typeof instanceof in of new delete void throw case do else yield await".split(" "));
const NOT_METHODS = new Set(["if", "for", "while", "switch", "catch", "with", "function", "return", "await", "async"]);
const DECLARES = new Set(["const", "let", "var", "readonly", "private", "protected", "public", "static"]);
const TYPE_BEFORE = new Set([":", "|", "&", ",", "(", "<", "=>", "?", "keyof", "typeof", "extends", "readonly"]);

/** Splits TypeScript source into tokens, dropping comments and the `${`/`}` around template substitutions. */
export function tokenize(src: string): Token[] {
  const out: Token[] = [];
  const braces: ("block" | "template")[] = [];
  let i = 0, line = 1;
  const push = (kind: Token["kind"], start: number, at: number) =>
    out.push({ kind, text: src.slice(start, i), line: at });
  const template = (start: number, at: number) => { // from a backtick or a substitution's `}` to a backtick or `${`
    for (; i < src.length && src[i] !== "`" && !src.startsWith("${", i); i++) {
      if (src[i] === "\\") i++;
      if (src[i] === "\n") line++;
    }
    if (src.startsWith("${", i)) (i += 2, braces.push("template"));
    else i++;
    push("str", start, at);
  };
  while (i < src.length) {
    const c = src[i], start = i;
    if (c === "\n") (line++, i++);
    else if (/\s/.test(c)) i++;
    else if (src.startsWith("//", i)) { while (i < src.length && src[i] !== "\n") i++; }
    else if (src.startsWith("/*", i)) {
      const stop = src.indexOf("*/", i + 2) < 0 ? src.length : src.indexOf("*/", i + 2) + 2;
      for (; i < stop; i++) if (src[i] === "\n") line++;
    } else if (c === '"' || c === "'") {
      for (i++; i < src.length && src[i] !== c && src[i] !== "\n"; i++) if (src[i] === "\\") i++;
      i++;
      push("str", start, line);
    } else if (c === "`") (i++, template(start, line));
    else if (/[\w$]/.test(c) || c.charCodeAt(0) > 127) {
      while (i < src.length && (/[\w$]/.test(src[i]) || src.charCodeAt(i) > 127)) i++;
      push(/\d/.test(c) ? "num" : "id", start, line);
    } else if (c === "/" && regexAllowed(out[out.length - 1]) && regexEnd(src, i) > 0) {
      i = regexEnd(src, i);
      push("regex", start, line);
    } else if (c === "}" && braces[braces.length - 1] === "template") (braces.pop(), i++, template(start, line));
    else {
      i += PUNCTS.find((p) => src.startsWith(p, i))?.length ?? 1;
      if (c === "{") braces.push("block");
      if (c === "}") braces.pop();
      push("punct", start, line);
    }
  }
  return out;
}

/** Whether a `/` after this token starts a regex literal rather than dividing. */
function regexAllowed(prev: Token | undefined): boolean {
  if (prev === undefined) return true;
  if (prev.kind === "id") return REGEX_AFTER.has(prev.text);
  return prev.kind === "punct" && ![")", "]", "}"].includes(prev.text);
}

/** The end of a regex literal starting at i (flags included), or -1 when the line ends first (then it divides). */
function regexEnd(src: string, i: number): number {
  let inClass = false;
  for (i++; i < src.length && src[i] !== "\n"; i++) {
    if (src[i] === "\\") i++;
    else if (src[i] === "[" || src[i] === "]") inClass = src[i] === "[";
    else if (src[i] === "/" && !inClass) {
      for (i++; i < src.length && /[a-z]/.test(src[i]); i++);
      return i;
    }
  }
  return -1;
}

/** A module's tokens with each bracket's partner and each token's innermost open `{`, and the shapes read off them. */
class Tokens {
  readonly match: number[];
  readonly parent: number[];
  constructor(readonly t: Token[]) {
    this.match = new Array<number>(t.length).fill(-1);
    this.parent = new Array<number>(t.length).fill(-1);
    const stack: number[] = [];
    for (let i = 0; i < t.length; i++) {
      this.parent[i] = stack.findLast((j) => t[j].text === "{") ?? -1;
      if (t[i].kind !== "punct") continue;
      if (["{", "(", "["].includes(t[i].text)) stack.push(i);
      else if (["}", ")", "]"].includes(t[i].text) && stack.length > 0) {
        const j = stack.pop()!;
        [this.match[i], this.match[j]] = [j, i];
      }
    }
  }
  is(i: number, text: string): boolean {
    return i >= 0 && i < this.t.length && this.t[i].kind === "punct" && this.t[i].text === text;
  }
  kind = (i: number): Token["kind"] | undefined => this.t[i]?.kind;
  text = (from: number, to: number): string => this.t.slice(from, to).map((x) => x.text).join("");
  /** From a `<`, the token after its matching `>`. */
  skipAngles(i: number): number {
    for (let depth = 0; i < this.t.length && !this.is(i, ";"); i++) {
      if (this.is(i, "<")) depth++;
      else if (this.is(i, ">") && --depth === 0) return i + 1;
      else if (["(", "[", "{"].some((b) => this.is(i, b)) && (i = this.match[i]) < 0) return this.t.length;
    }
    return i;
  }
  /** From the token after a parameter list (past a return type; an arrow's `=>`): the body's `{`, or -1. */
  bodyAfter(i: number, arrow: boolean): number {
    if (!this.is(i, ":")) return arrow ? (this.is(i, "=>") ? this.body(i + 1) : -1) : this.body(i);
    for (i++; i < this.t.length; i++) {
      const prev = this.t[i - 1];
      if (this.is(i, "<")) i = this.skipAngles(i) - 1;
      else if (this.is(i, "{") && !arrow && (!TYPE_BEFORE.has(prev.text) || prev.kind === "str")) return this.body(i);
      else if (this.is(i, "(") || this.is(i, "[") || this.is(i, "{")) i = this.match[i];
      else if (this.is(i, "=>") && arrow) return this.body(i + 1);
      else if (this.kind(i) === "punct" && [";", "=", ")", "]", "}", ","].includes(this.t[i].text)) return -1;
      if (i < 0) return -1;
    }
    return -1;
  }
  /** i when it opens a block; not a type literal (`() => { a: T }`), whose first token is a member's name. */
  body(i: number): number {
    if (!this.is(i, "{") || this.match[i] < 0) return -1;
    const named = this.kind(i + 1) === "id" || this.kind(i + 1) === "str";
    const member = named && (this.is(i + 2, ":") || this.is(i + 2, "?")) ||
      this.is(i + 1, "[") && this.kind(i + 2) === "id" && this.is(i + 3, ":");
    return member ? -1 : i;
  }
  /** From a function expression's first token (`async`, `function`, `<`, `(` or a lone parameter): its body's `{`. */
  exprBody(i: number): number {
    if (this.t[i]?.text === "async" && !this.is(i + 1, "=>")) i++;
    const fn = this.t[i]?.text === "function";
    if (fn && this.is(++i, "*")) i++;
    if (fn && this.kind(i) === "id") i++;
    if (this.is(i, "<")) i = this.skipAngles(i);
    if (this.is(i, "(") && this.match[i] > 0) return this.bodyAfter(this.match[i] + 1, !fn);
    return !fn && this.kind(i) === "id" && this.is(i + 1, "=>") ? this.body(i + 2) : -1;
  }
  /** `Deno.test` before the `(` at paren, and where it starts. */
  callee(paren: number): { at: number; text: string } {
    let c = paren - 1;
    while (this.is(c - 1, ".") && this.kind(c - 2) === "id") c -= 2;
    return { at: c, text: this.text(c, paren) };
  }
  /** The name before a `:` (`fn` in `Deno.test({ name: "…", fn })` takes the test's); null in ternaries and cases. */
  nameBeforeColon(i: number): string | null {
    const prev = this.t[i - 1], open = this.parent[i];
    if (prev?.kind === "str") return short(prev.text);
    if (prev?.kind !== "id" || this.is(i - 2, "?") || this.t[i - 2]?.text === "case") return null;
    for (let j = open + 1; prev.text === "fn" && open >= 0 && j < i; j++) {
      if (this.t[j].text === "name" && this.is(j + 1, ":") && this.kind(j + 2) === "str" && this.parent[j] === open) {
        return `${this.is(open - 1, "(") ? this.callee(open - 1).text : "fn"} ${short(this.t[j + 2].text)}`;
      }
    }
    return prev.text;
  }
  /** The name a `=` assigns: `x = …`, `this.x = …`, `const x: T = …`; null for `type X = …` and non-names. */
  nameBeforeEquals(i: number): string | null {
    const t = this.t;
    if (t[i - 1]?.kind === "id") return t[i - 2]?.text === "type" ? null : t[i - 1].text;
    for (let j = i - 1; j > 0 && t[j].line === t[i].line; j--) {
      if (t[j].kind === "id" && DECLARES.has(t[j].text) && t[j + 1]?.kind === "id" && t[j + 2]?.text === ":") {
        return t[j + 1].text;
      }
    }
    return null;
  }
}

const short = (s: string) => s.length > 60 ? `${s.slice(0, 57)}…${s[0]}` : s;

/** Every function in one module's source, in the order of their bodies. */
export function functionSizes(src: string): FunctionSize[] {
  const k = new Tokens(tokenize(src)), t = k.t;
  const found = new Map<number, { name: string; line: number }>(); // by the body's `{`
  const add = (body: number, name: string | null, line: number) => {
    if (body >= 0 && name !== null && !found.has(body)) found.set(body, { name, line });
  };
  for (let i = 0; i < t.length; i++) {
    const { kind, text, line } = t[i];
    if (kind === "id" && text === "function") {
      const name = t[k.is(i + 1, "*") ? i + 2 : i + 1];
      if (name?.kind === "id") add(k.exprBody(i), name.text, line);
    } else if (k.is(i, "=") || k.is(i, ":")) {
      add(k.exprBody(i + 1), k.is(i, ":") ? k.nameBeforeColon(i) : k.nameBeforeEquals(i), t[i - 1].line);
    } else if (k.is(i, "(") && k.kind(i + 1) === "str" && k.is(i + 2, ",")) {
      const c = k.callee(i);
      add(k.exprBody(i + 3), `${c.text} ${short(t[i + 1].text)}`, t[c.at]?.line ?? line);
    } else if ((kind === "id" && !NOT_METHODS.has(text) || k.is(i, "]")) && !k.is(i - 1, ".")) {
      const p = k.is(i + 1, "<") ? k.skipAngles(i + 1) : i + 1;
      if (!k.is(p, "(") || k.match[p] < 0) continue;
      const accessor = ["get", "set"].includes(t[i - 1]?.text) && t[i - 1].kind === "id" ? `${t[i - 1].text} ` : "";
      const computed = text === "]" && kind === "punct";
      const name = computed ? k.text(k.match[i], i + 1) : text;
      add(k.bodyAfter(k.match[p] + 1, false), accessor + name, computed ? t[k.match[i]].line : line);
    }
  }
  return [...found].sort((a, b) => a[0] - b[0]).map(([body, { name, line }]) => {
    const end = t[k.match[body]].line;
    return { name, line, end, lines: end - line + 1 };
  });
}

async function* walk(dir: string, rel = ""): AsyncGenerator<string> {
  const entries = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    if (e.name.startsWith(".") || e.name === "node_modules" || (rel === "" && e.name === "out")) continue;
    const path = rel === "" ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory) yield* walk(`${dir}/${e.name}`, path);
    else if (e.isFile && e.name.endsWith(".ts")) yield path;
  }
}

if (import.meta.main) {
  const args = [...Deno.args];
  const option = (flag: string, fallback: number) => {
    const at = args.indexOf(flag);
    const n = at < 0 ? fallback : Number(args.splice(at, 2)[1]);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} takes a whole number`);
    return n;
  };
  const top = option("--top", 15), over = option("--over", 80), root = args[0] ?? ".";
  const all: (FunctionSize & { file: string })[] = [];
  const bigFiles: [string, number][] = [];
  for await (const file of walk(root)) {
    const src = await Deno.readTextFile(`${root}/${file}`);
    const lines = src.split("\n").length - (src.endsWith("\n") ? 1 : 0);
    if (lines > 600) bigFiles.push([file, lines]);
    for (const f of functionSizes(src)) all.push({ ...f, file });
  }
  all.sort((a, b) => b.lines - a.lines || a.file.localeCompare(b.file) || a.line - b.line);
  console.log(`${all.length} functions; top ${Math.min(top, all.length)} by lines:`);
  for (const f of all.slice(0, top)) console.log(`  ${f.file}:${f.line} ${f.name} ${f.lines}`);
  const long = all.filter((f) => f.lines > over), inTests = long.filter((f) => f.file.startsWith("tests/")).length;
  console.log(`over ${over} lines: ${long.length - inTests} outside tests/, ${inTests} in tests/`);
  console.log(`files over 600 lines: ${bigFiles.length}`);
  for (const [file, lines] of bigFiles.sort((a, b) => b[1] - a[1])) console.log(`  ${file} ${lines}`);
}
