/**
 * The engine's modules import one another without cycles (the executor factory once sat in one with the executors
 * it creates), checked with bench/import_cycles.ts, whose reader is tested here on a small tree first.
 */
import assert from "node:assert/strict";
import { cycles, cycleThrough, importGraph, importsOf } from "../../bench/import_cycles.ts";

Deno.test("import reader: value, type-only and dynamic imports; comments ignored", () => {
  const src = [
    `import type { A } from "./a.ts";`,
    `import { type B, type C } from "./b.ts";`,
    `import { type D, e } from "./d.ts";`,
    `import * as H from "./h.ts";`,
    `export * from "./re.ts";`,
    `export type { X } from "./x.ts";`,
    `// import { no } from "./comment.ts";`,
    `const url = "https://example.com"; import { z } from "./z.ts";`,
    `const m = await import("./dyn.ts");`,
    `import {\n  multi,\n} from "./ml.ts";`,
  ].join("\n");
  assert.deepEqual(importsOf(src), [
    { spec: "./a.ts", kind: "type" },
    { spec: "./b.ts", kind: "type" },
    { spec: "./d.ts", kind: "value" },
    { spec: "./h.ts", kind: "value" },
    { spec: "./re.ts", kind: "value" },
    { spec: "./x.ts", kind: "type" },
    { spec: "./z.ts", kind: "value" },
    { spec: "./ml.ts", kind: "value" },
    { spec: "./dyn.ts", kind: "dynamic" },
  ]);
});

Deno.test("cycle finder: a factory importing its products lazily, which import it back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/x`);
    await Deno.writeTextFile(`${dir}/x/auto.ts`, `export const f = () => import("./node.ts");\n`);
    await Deno.writeTextFile(`${dir}/x/node.ts`, `import { h } from "./auto.ts";\nimport "../leaf.ts";\n`);
    await Deno.writeTextFile(`${dir}/leaf.ts`, `export const leaf = 1;\n`);
    const graph = await importGraph(dir);
    const found = cycles(graph);
    assert.deepEqual(found, [["x/auto.ts", "x/node.ts"]]);
    assert.deepEqual(cycleThrough(graph, found[0]), ["x/auto.ts", "x/node.ts", "x/auto.ts"]);
    assert.equal(graph.get("x/auto.ts")!.get("x/node.ts"), "dynamic");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("engine/ has no import cycles", async () => {
  const root = new URL("../..", import.meta.url).pathname;
  const graph = await importGraph(root);
  assert.ok(graph.has("engine/executors/auto.ts"), "the reader found the engine's modules");
  const inEngine = cycles(graph).filter((scc) => scc.some((m) => m.startsWith("engine/")));
  assert.deepEqual(inEngine.map((scc) => cycleThrough(graph, scc).join(" -> ")), []);
});
