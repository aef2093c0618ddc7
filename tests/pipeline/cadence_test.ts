// One cadence mechanism for every effect: the config's `every` and `at` (or the kind's default), plus the moments a
// kind always keeps; `isDue` against the steps a plain loop over the definition picks.
import assert from "node:assert/strict";
import { type At, type Cadence, describeCadence, isDue, resolveCadence } from "../../pipeline/cadence.ts";
import { loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import "../../stages/mod.ts";

/** The steps of an invocation running `first`…`last` at which `c` fires, by the definition's own words. */
function reference(c: Cadence, first: number, last: number): number[] {
  const out: number[] = [];
  for (let s = first; s <= last; s++) {
    const byCount = c.every !== undefined && s % c.every === 0;
    const moment = (a: At) => (a === "start" && s === first) || (a === "end" && s === last) || a === s;
    if (byCount || (c.at ?? []).some(moment)) out.push(s);
  }
  return out;
}

Deno.test("cadence: isDue fires exactly at the steps of the definition, for counts, moments and both", () => {
  const cases: Cadence[] = [
    { every: 1 },
    { every: 3 },
    { at: ["end"] },
    { at: ["start"] },
    { every: 4, at: ["end"] },
    { every: 5, at: ["start", 7, "end"] },
    { at: [2, 9] },
    { at: [] },
  ];
  for (const c of cases) {
    for (const [first, last] of [[1, 10], [4, 10], [1, 1]]) {
      const got = [];
      for (let s = first; s <= last; s++) if (isDue(c, s, first, last)) got.push(s);
      assert.deepEqual(got, reference(c, first, last), `${describeCadence(c)}, steps ${first}…${last}`);
    }
  }
  assert.deepEqual(reference({ every: 4, at: ["end"] }, 1, 10), [4, 8, 10], "the reference itself");
});

Deno.test("cadence: the config's every/at replace the kind's default; the kind's moments are always added", () => {
  const report = { default: { at: ["end"] as At[] }, always: ["end"] as At[] };
  assert.deepEqual(resolveCadence({}, undefined), { every: 1, at: [] });
  assert.deepEqual(resolveCadence({}, report), { at: ["end"] });
  assert.deepEqual(resolveCadence({ every: 250 }, report), { every: 250, at: ["end"] });
  assert.deepEqual(resolveCadence({ at: "start" }, { always: ["end"] }), { at: ["start", "end"] });
  assert.deepEqual(resolveCadence({ every: 2, at: [5, "end"] }, { always: ["end"] }), { every: 2, at: [5, "end"] });
  assert.equal(describeCadence({ every: 250, at: ["end"] }), "every 250 steps and at the end");
  assert.equal(describeCadence({ at: ["start", 7] }), "at the start, step 7");
});

Deno.test("cadence: planned stages carry their cadence; every and at together plan; moments on an optimizer do not", () => {
  const yaml = (extra: string) =>
    `version: 1
run: { steps: 10, executor: cpu }
models:
  net: { kind: mlp, params: { in: 1, hidden: [4], out: 1 } }
data:
  d: { kind: toy_function, params: { size: 16 } }
stages:
  batch: { kind: data, params: { dataset: d, batch: 4 } }
  predict: { kind: model, inputs: { x: batch.x }, params: { model: net } }
  loss: { kind: mse, inputs: { pred: predict.y, target: batch.y } }
  opt: { kind: optimizer, inputs: { loss: loss.loss }, params: { models: [net] }${extra} }
  ckpt: { kind: checkpoint, every: 4, at: [start, 7] }
  plot: { kind: metrics }
`;
  const plan = planPipeline(loadConfig("c.yaml", yaml("")));
  assert.deepEqual(plan.stages.ckpt.cadence, { every: 4, at: ["start", 7, "end"] });
  assert.deepEqual(plan.stages.plot.cadence, { every: 1, at: ["end"] });
  assert.throws(
    () => planPipeline(loadConfig("c.yaml", yaml(", at: end"))),
    (e: Error) => /c\.yaml:\d+:\d+: stage "opt" \(optimizer\) is an optimizer: .*not `at` moments/.test(e.message),
  );
});
