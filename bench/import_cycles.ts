/**
 * Lists import cycles among the project's own modules: `deno run --allow-read bench/import_cycles.ts [dir] [--json]`.
 *
 * Reads every .ts file under `dir` (default: the working directory; node_modules, out and dot folders skipped), takes
 * each relative specifier of an `import`/`export … from`, a bare `import "…"` and a literal `import("…")`, and prints
 * every strongly connected component of more than one module, with one cycle through it. An edge is marked `type` when
 * only type imports make it (erased at run time, yet still a dependency a reader has to untangle) and `dynamic` when
 * only `import()` makes it (the factory pattern, which still ties the two modules' code together). The exit code is 1
 * when any cycle is found, so the script can guard a directory in CI.
 *
 * A regex reader rather than the TypeScript parser: specifiers in this project are plain string literals, and a
 * dependency-free script runs anywhere Deno does. Comments are blanked first so that examples in docs do not count.
 *
 * @module
 */

/** How one module depends on another: the strongest of its import forms wins (value over dynamic over type). */
export type EdgeKind = "value" | "dynamic" | "type";

/** Dependencies of each module, by path relative to the root. */
export type ImportGraph = Map<string, Map<string, EdgeKind>>;

const RANK: Record<EdgeKind, number> = { type: 0, dynamic: 1, value: 2 };

/** Blanks block and line comments, keeping string literals (a `//` inside a URL must not start a comment). */
export function stripComments(src: string): string {
  return src.replace(
    /("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|\/\*[\s\S]*?\*\/|\/\/[^\n]*/g,
    (m, str) => (str !== undefined ? m : m.replace(/[^\n]/g, " ")),
  );
}

/** The import specifiers of one module's source, each with the kind of import that names it. */
export function importsOf(src: string): { spec: string; kind: EdgeKind }[] {
  const code = stripComments(src);
  const out: { spec: string; kind: EdgeKind }[] = [];
  // `import type {…} from`, `import {…} from`, `export {…} from`, `export * from`, and bare `import "…"`.
  const staticRe = /(?:^|[;\n}])\s*(import|export)\s+(type\s+)?([^;"'`]*?\bfrom\s*)?["']([^"']+)["']/g;
  for (const m of code.matchAll(staticRe)) {
    const [, verb, typeKw, clause, spec] = m;
    if (verb === "export" && clause === undefined) continue; // `export "x"` is not a statement
    out.push({ spec, kind: typeKw || (clause !== undefined && allTypeNames(clause)) ? "type" : "value" });
  }
  for (const m of code.matchAll(/\bimport\s*\(\s*["']([^"']+)["']\s*\)/g)) out.push({ spec: m[1], kind: "dynamic" });
  return out;
}

/** Whether an import clause like `{ type A, type B }` names types only. */
function allTypeNames(clause: string): boolean {
  const braces = clause.match(/\{([^}]*)\}/);
  if (!braces || /^[^{]*\w[^{]*\{/.test(clause.replace(/\bfrom\s*$/, ""))) return false;
  const names = braces[1].split(",").map((s) => s.trim()).filter((s) => s !== "");
  return names.length > 0 && names.every((s) => s.startsWith("type "));
}

async function* walk(dir: string, rel = ""): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".") || e.name === "node_modules" || (rel === "" && e.name === "out")) continue;
    const path = rel === "" ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory) yield* walk(`${dir}/${e.name}`, path);
    else if (e.isFile && e.name.endsWith(".ts")) yield path;
  }
}

/** Resolves a relative specifier against the importing module's path; null for packages and URLs. */
function resolve(from: string, spec: string): string | null {
  if (!spec.startsWith("./") && !spec.startsWith("../")) return null;
  const parts = from.split("/").slice(0, -1);
  for (const p of spec.split("/")) {
    if (p === "..") parts.pop();
    else if (p !== ".") parts.push(p);
  }
  return parts.join("/");
}

/** The import graph of every .ts module under `root`, restricted to modules that exist there. */
export async function importGraph(root: string): Promise<ImportGraph> {
  const files: string[] = [];
  for await (const f of walk(root)) files.push(f);
  files.sort();
  const known = new Set(files);
  const graph: ImportGraph = new Map();
  for (const f of files) {
    const deps = new Map<string, EdgeKind>();
    for (const { spec, kind } of importsOf(await Deno.readTextFile(`${root}/${f}`))) {
      const to = resolve(f, spec);
      if (to === null || !known.has(to) || to === f) continue;
      const prev = deps.get(to);
      if (prev === undefined || RANK[kind] > RANK[prev]) deps.set(to, kind);
    }
    graph.set(f, deps);
  }
  return graph;
}

/** Strongly connected components of more than one module (Tarjan's algorithm, iterative so deep graphs are fine). */
export function cycles(graph: ImportGraph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const sccs: string[][] = [];
  let next = 0;
  for (const start of graph.keys()) {
    if (index.has(start)) continue;
    const work: { v: string; it: Iterator<string> }[] = [];
    const enter = (v: string) => {
      index.set(v, next);
      low.set(v, next++);
      stack.push(v);
      onStack.add(v);
      work.push({ v, it: graph.get(v)!.keys() });
    };
    enter(start);
    while (work.length > 0) {
      const top = work[work.length - 1];
      const step = top.it.next();
      if (!step.done) {
        const w = step.value;
        if (!index.has(w)) enter(w);
        else if (onStack.has(w)) low.set(top.v, Math.min(low.get(top.v)!, index.get(w)!));
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1].v;
        low.set(parent, Math.min(low.get(parent)!, low.get(top.v)!));
      }
      if (low.get(top.v) === index.get(top.v)) {
        const scc: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          scc.push(w);
        } while (w !== top.v);
        if (scc.length > 1) sccs.push(scc.sort());
      }
    }
  }
  return sccs.sort((a, b) => a[0].localeCompare(b[0]));
}

/** One shortest cycle through the first module of a component, as a closed path (first module repeated last). */
export function cycleThrough(graph: ImportGraph, scc: readonly string[]): string[] {
  const inScc = new Set(scc);
  const start = scc[0];
  const prev = new Map<string, string>();
  const queue = [start];
  for (let i = 0; i < queue.length; i++) {
    for (const w of graph.get(queue[i])!.keys()) {
      if (!inScc.has(w)) continue;
      if (w === start) {
        const between: string[] = [];
        for (let v = queue[i]; v !== start; v = prev.get(v)!) between.unshift(v);
        return [start, ...between, start];
      }
      if (!prev.has(w)) {
        prev.set(w, queue[i]);
        queue.push(w);
      }
    }
  }
  return [start];
}

if (import.meta.main) {
  const args = Deno.args.filter((a) => a !== "--json");
  const root = args[0] ?? ".";
  const graph = await importGraph(root);
  const found = cycles(graph).map((scc) => {
    const path = cycleThrough(graph, scc);
    const edges = path.slice(1).map((to, i) => ({ from: path[i], to, kind: graph.get(path[i])!.get(to)! }));
    return { modules: scc, cycle: edges };
  });
  if (Deno.args.includes("--json")) {
    console.log(JSON.stringify({ modules: graph.size, cycles: found }, null, 2));
  } else {
    console.log(`${graph.size} modules, ${found.length} import cycle(s)`);
    for (const c of found) {
      console.log(`\n${c.modules.length} modules: ${c.modules.join(", ")}`);
      for (const e of c.cycle) console.log(`  ${e.from} -> ${e.to}${e.kind === "value" ? "" : ` (${e.kind})`}`);
    }
  }
  if (found.length > 0) Deno.exit(1);
}
