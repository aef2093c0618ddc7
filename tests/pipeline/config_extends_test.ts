// Config composition with `extends`: deep merge, null deletes, positions from the file that set a value, cycles.
import { ConfigError, loadConfig, mergeLayers } from "../../pipeline/config.ts";

const dir = Deno.makeTempDirSync({ prefix: "extends-" });
const base = `version: 1
run: { seed: 3, steps: 50 }
models:
  net: { kind: mlp, params: { in: 1, hidden: [8] } }
stages:
  a: { kind: data, params: { dataset: d } }
  b: { kind: mse, inputs: { pred: a.x, target: a.y } }
`;
Deno.writeTextFileSync(`${dir}/base.yaml`, base);

function expectError(text: string, pattern: RegExp, file = `${dir}/child.yaml`) {
  Deno.writeTextFileSync(file, text);
  try {
    loadConfig(file, text);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    if (!pattern.test(e.lines[0])) throw new Error(`got "${e.lines[0]}", expected ${pattern}`);
    return;
  }
  throw new Error("no error");
}

Deno.test("extends: child values merge over the base; null removes; the run is named after the child", () => {
  const text = `version: 1
extends: base.yaml
run: { steps: 7 }
models:
  net: { params: { hidden: [4, 4] } }
stages:
  b: null
`;
  Deno.writeTextFileSync(`${dir}/child.yaml`, text);
  const l = loadConfig(`${dir}/child.yaml`, text);
  if (l.config.run.steps !== 7 || l.config.run.seed !== 3) throw new Error(`run ${JSON.stringify(l.config.run)}`);
  const params = l.config.models.net.params as { in: number; hidden: number[] };
  if (params.in !== 1 || params.hidden.join() !== "4,4") throw new Error(`params ${JSON.stringify(params)}`);
  if ("b" in l.config.stages || !("a" in l.config.stages)) throw new Error(`stages ${Object.keys(l.config.stages)}`);
  if (l.config.run.name !== "child" || l.config.run.out !== "out/child") throw new Error(`name ${l.config.run.name}`);
});

Deno.test("extends: --set path=null removes a key that only the base defines", () => {
  const text = `version: 1\nextends: base.yaml\nrun: { steps: 7 }\n`;
  Deno.writeTextFileSync(`${dir}/child.yaml`, text);
  const l = loadConfig(`${dir}/child.yaml`, text, ["stages.b=null", "models.net.params.hidden=null", "run.seed=null"]);
  if ("b" in l.config.stages || !("a" in l.config.stages)) throw new Error(`stages ${Object.keys(l.config.stages)}`);
  const params = l.config.models.net.params as Record<string, unknown>;
  if ("hidden" in params || params.in !== 1) throw new Error(`params ${JSON.stringify(params)}`);
  // run.seed removed falls back to its default.
  if (l.config.run.seed !== 0 || l.config.run.steps !== 7) throw new Error(`run ${JSON.stringify(l.config.run)}`);
});

Deno.test("extends: --set path=null on a value only the extending file defines falls back to its default", () => {
  const text = `version: 1\nextends: base.yaml\nstages:\n  c: { kind: data, params: { dataset: d, batch: 4 } }\n`;
  Deno.writeTextFileSync(`${dir}/child.yaml`, text);
  const l = loadConfig(`${dir}/child.yaml`, text, ["stages.c.params.batch=null"]);
  const params = l.config.stages.c.params as Record<string, unknown>;
  if (params.dataset !== "d" || "batch" in params) throw new Error(`params ${JSON.stringify(params)}`);
});

Deno.test("extends: a base's init paths stay relative to the base file, from a child in another folder", () => {
  Deno.mkdirSync(`${dir}/configs`, { recursive: true });
  Deno.mkdirSync(`${dir}/mine/deeper`, { recursive: true });
  Deno.writeTextFileSync(
    `${dir}/configs/b.yaml`,
    base.replace("params: { in: 1, hidden: [8] } }", "params: { in: 1, hidden: [8] }, init: ../w/net.safetensors }"),
  );
  const text = `version: 1\nextends: ../../configs/b.yaml\n`;
  const l = loadConfig(`${dir}/mine/deeper/child.yaml`, text);
  const init = l.config.models.net.init!;
  if (!init.startsWith("../")) throw new Error(`init ${init} should stay relative`);
  const resolved = new URL(init, `file://${dir}/mine/deeper/`).pathname;
  if (resolved !== `${dir}/w/net.safetensors`) throw new Error(`init ${init} resolves to ${resolved}`);
  // From the base's own folder nothing changes.
  const same = loadConfig(`${dir}/configs/c.yaml`, `version: 1\nextends: b.yaml\n`);
  if (same.config.models.net.init !== "../w/net.safetensors") throw new Error(`init ${same.config.models.net.init}`);
});

Deno.test("extends: errors point into the file that set the value", () => {
  // A bad value in the child points at the child; one inherited from the base points at the base.
  expectError(`version: 1\nextends: base.yaml\nrun: { steps: -1 }\n`, /child\.yaml:3:\d+: .*run\.steps/);
  Deno.writeTextFileSync(`${dir}/bad_base.yaml`, base.replace("seed: 3", "seed: -3"));
  expectError(`version: 1\nextends: bad_base.yaml\n`, /bad_base\.yaml:2:\d+: .*run\.seed/);
});

Deno.test("extends: a missing base and a cycle are one-line errors", () => {
  expectError(`version: 1\nextends: nowhere.yaml\n`, /child\.yaml:2:\d+: cannot read "nowhere\.yaml" \(no such file\)/);
  Deno.writeTextFileSync(`${dir}/loop_a.yaml`, `version: 1\nextends: loop_b.yaml\n`);
  Deno.writeTextFileSync(`${dir}/loop_b.yaml`, `version: 1\nextends: loop_a.yaml\n`);
  expectError(`version: 1\nextends: loop_a.yaml\n`, /makes a cycle/, `${dir}/loop_a.yaml`);
});

Deno.test("mergeLayers: mappings merge, lists and scalars replace, null deletes", () => {
  const m = mergeLayers({ a: { x: 1, y: [1, 2] }, b: 2, c: 3 }, { a: { y: [3] }, b: null, d: 4 });
  if (JSON.stringify(m) !== JSON.stringify({ a: { x: 1, y: [3] }, c: 3, d: 4 })) throw new Error(JSON.stringify(m));
});
