// Frozen models as constants in a run's compiled graphs (issue 15): which models the scheduler bakes (those no phase
// updates, within the executor's constantLimit, in the plan's order), and add_tiny trained with its frozen teacher and
// MobileNetV2 as constants against the same run with them as inputs (ADD_CONSTANT_WEIGHTS=0): the same losses to
// float rounding, since onnxruntime then runs those convolutions in another layout.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { Executor } from "../../engine/executors/executor.ts";
import { loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { Scheduler } from "../../pipeline/scheduler.ts";
import { modelLayouts } from "../../pipeline/trace_phase.ts";
import { cli, expectCode, MAIN, ROOT, rows, tmp } from "../helpers/cli_run.ts";

const TINY = `${ROOT}configs/add_tiny.yaml`;
const OFF = ["report", "progress_eval", "preview", "plot"].flatMap((s) => ["--set", `stages.${s}=null`]);

Deno.test("the scheduler bakes the models no phase updates, in order, as far as the executor's limit goes", async () => {
  const plan = planPipeline(loadConfig(TINY, Deno.readTextFileSync(TINY)));
  const sizes = modelLayouts(plan);
  assert.deepEqual(Object.keys(plan.models), ["student", "teacher", "features", "disc"]);
  const ex = await createExecutor("cpu");
  const before = Deno.env.get("ADD_CONSTANT_WEIGHTS");
  const keys = (limit?: number) => {
    const e = limit === undefined ? ex : Object.create(ex, { constantLimit: { value: limit } }) as Executor;
    return [...new Scheduler(plan, e, 0).constantKeys].sort();
  };
  try {
    Deno.env.delete("ADD_CONSTANT_WEIGHTS");
    assert.deepEqual(keys(), ["model.features", "model.teacher"]);
    // Room for the teacher, not for the feature network after it.
    assert.deepEqual(keys(sizes.teacher.total + sizes.features.total - 1), ["model.teacher"]);
    assert.ok(sizes.features.total > sizes.teacher.total);
    assert.deepEqual(keys(sizes.teacher.total + sizes.features.total), ["model.features", "model.teacher"]);
    assert.deepEqual(keys(sizes.teacher.total - 1), []);
    Deno.env.set("ADD_CONSTANT_WEIGHTS", "0");
    assert.deepEqual(keys(), []);
    Deno.env.set("ADD_CONSTANT_WEIGHTS", "1");
    assert.deepEqual(keys(0), ["model.features", "model.teacher"]);
  } finally {
    if (before === undefined) Deno.env.delete("ADD_CONSTANT_WEIGHTS");
    else Deno.env.set("ADD_CONSTANT_WEIGHTS", before);
    await ex.close();
  }
});

Deno.test("add_tiny with its frozen networks as constants: the losses of the run with them as inputs", async () => {
  const [a, b] = [await tmp("constants-inputs"), await tmp("constants-baked")];
  expectCode(await cli([TINY, "--out", a, ...OFF], MAIN, { ADD_CONSTANT_WEIGHTS: "0" }), 0, "as inputs");
  expectCode(await cli([TINY, "--out", b, ...OFF]), 0, "as constants");
  const [ra, rb] = [await rows(a), await rows(b)];
  assert.equal(ra.length, rb.length);
  let differs = false;
  for (let i = 0; i < ra.length; i++) {
    assert.deepEqual(Object.keys(rb[i]), Object.keys(ra[i]));
    for (const k of Object.keys(ra[i])) {
      const [x, y] = [ra[i][k], rb[i][k]];
      differs ||= x !== y;
      assert.ok(Math.abs(x - y) <= 1e-4 * Math.max(1, Math.abs(x)), `step ${ra[i].step} ${k}: ${x} vs ${y}`);
    }
  }
  // Equal bits would mean that nothing changed how the graphs ran.
  assert.ok(differs, "the two runs agree bit for bit: were the weights baked?");
  const bad = await cli([TINY, "--out", `${b}-bad`, ...OFF], MAIN, { ADD_CONSTANT_WEIGHTS: "on" });
  expectCode(bad, 1, "a bad value");
  assert.equal(bad.stderr.trim().split("\n").at(-1), "ADD_CONSTANT_WEIGHTS=on: expected 0 or 1");
});
