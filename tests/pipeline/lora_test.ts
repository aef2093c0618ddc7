// LoRA on a model entry (configs/add_lora.yaml: add_tiny.yaml's student as adapters on the teacher's frozen weights):
// planning stores the adapters alone and reads the teacher once, the memory estimate and the checkpoints shrink
// against add_tiny.yaml, each misuse is one positioned config error, a run trains the adapters alone (every weight
// not targeted stays the teacher's, bit for bit), resumes to the same losses, and loads merged for sampling and export.
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { createExecutor } from "../../engine/executors/auto.ts";
import { readSafetensors, toFloat32 } from "../../engine/safetensors.ts";
import { adapterShapes, loraTargets } from "../../models/lora.ts";
import { unet } from "../../models/unet.ts";
import { ConfigError, loadConfig } from "../../pipeline/config.ts";
import { initRng } from "../../pipeline/init_weights.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { Scheduler } from "../../pipeline/scheduler.ts";
import { modelLayouts, traceFused } from "../../pipeline/trace_phase.ts";
import { loadUnetFolder } from "../../sample.ts";
import { exportStudent } from "../../ship/export.ts";
import { cli, expectCode, ROOT, rows, tmp } from "../helpers/cli_run.ts";

const LORA = `${ROOT}configs/add_lora.yaml`, TINY = `${ROOT}configs/add_tiny.yaml`;
const OFF = ["report", "progress_eval", "preview", "plot"].flatMap((s) => ["--set", `stages.${s}=null`]);
const plan = (file: string, sets: string[] = []) => planPipeline(loadConfig(file, Deno.readTextFileSync(file), sets));
const count = (shapes: Record<string, number[]>) =>
  Object.values(shapes).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);

Deno.test("add_lora plans the student as adapters on the teacher, read once; the memory estimate drops", () => {
  const lora = plan(LORA), full = plan(TINY);
  const s = lora.models.student, l = s.lora!;
  assert.equal(l.base, "teacher");
  assert.equal(modelLayouts(lora).student.total, count(adapterShapes(l)));
  assert.deepEqual(l.targets, loraTargets(s.shapes, l.patterns.map((p) => new RegExp(p))));
  for (const p of lora.phases) assert.ok(p.reads.includes("teacher"), `phase ${p.optimizer} reads the base`);
  const fused = traceFused(lora, lora.phases, 4);
  assert.equal(Object.values(fused.stateIn).filter((k) => k === "model.teacher").length, 1);
  const [ml, mf] = [lora.memory.models, full.memory.models];
  assert.equal(ml.teacher.bytes, mf.teacher.bytes);
  assert.equal(ml.student.params, count(l.shapes));
  // Weights, AdamW's m and v: three copies of the adapters in place of three of the UNet.
  assert.equal(mf.student.bytes - ml.student.bytes, 3 * 4 * (count(s.shapes) - count(l.shapes)));
  const total = (m: typeof ml) => Object.values(m).reduce((a, x) => a + x.bytes, 0);
  assert.ok(total(ml) < total(mf));
});

Deno.test("LoRA config errors: one positioned line each", () => {
  const cases: [string[], RegExp][] = [
    [["models.student.lora.base=nobody"], /: LoRA base "nobody" is not declared/],
    [["models.student.lora.base=disc"], /LoRA base "disc" is of kind add_discriminator, model "student" of kind unet/],
    [["models.student.lora.base=student"], /model "student" cannot be its own LoRA base/],
    [["models.teacher.params.channels=[8, 32]"], /LoRA base "teacher" has other params .*channels\.1: 16 vs 32/],
    [["models.student.lora.targets=[nowhere]"], /LoRA target "nowhere" matches no 2-D or 4-D weight/],
    [["models.student.lora.targets=['(']"], /LoRA target "\(" is not a regular expression/],
    [["models.student.lora.rank=0"], /"models\.student\.lora\.rank"/],
    [["models.student.lora.ranks=2"], /ranks.*did you mean "rank"/],
    [["models.student.init=w.safetensors"], /model "student" has LoRA: .* takes no init file/],
    [["stages.opt_g.params.models=[student, teacher]"], /LoRA base "teacher" is updated by optimizer "opt_g"/],
  ];
  for (const [sets, want] of cases) {
    try {
      plan(LORA, sets);
      assert.fail(`${sets}: planned`);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      assert.equal(e.lines.length, 1, `${sets}: ${e.lines.join("\n")}`);
      assert.match(e.lines[0], want);
      assert.match(e.lines[0], /^\S+\.yaml:\d+:\d+: |^--set /, e.lines[0]);
    }
  }
});

Deno.test("a LoRA student starts as its teacher, weight for weight", async () => {
  const p = plan(LORA), ex = await createExecutor("cpu");
  const sched = new Scheduler(p, ex, 0);
  try {
    await sched.initialise(() => Promise.reject(new Error("no init files in add_tiny")));
    assert.deepEqual(await sched.readModel("student"), await sched.readModel("teacher"));
  } finally {
    await sched.dispose();
  }
});

Deno.test("add_lora runs: adapters alone train and checkpoint, resume matches, sample and export load merged", async () => {
  const [a, b, f] = [await tmp("lora-a"), await tmp("lora-b"), await tmp("lora-full")];
  expectCode(await cli([LORA, "--out", a, ...OFF]), 0, "add_lora, 4 steps");
  expectCode(await cli([LORA, "--out", b, "--steps", "2", ...OFF]), 0, "add_lora, 2 steps");
  expectCode(await cli([LORA, "--out", b, "--steps", "4", "--resume", ...OFF]), 0, "add_lora, resumed");
  assert.deepEqual(await rows(b), await rows(a));
  expectCode(await cli([TINY, "--out", f, "--steps", "2", ...OFF]), 0, "add_tiny, 2 steps");
  const ck = (o: string, step: number) => `${o}/checkpoints/step-0000000${step}`;
  const size = async (dir: string) => {
    let n = 0;
    for await (const e of Deno.readDir(dir)) n += (await Deno.stat(`${dir}/${e.name}`)).size;
    return n;
  };
  const [withLora, without] = [await size(ck(a, 2)), await size(ck(f, 2))];
  const p = plan(LORA), s = p.models.student, l = s.lora!;
  // The checkpoint holds the adapters six times (weights, EMA, m, v, and the two user-facing files) instead of the UNet.
  const saved = 6 * 4 * (count(s.shapes) - count(l.shapes));
  assert.ok(Math.abs(without - withLora - saved) < 0.02 * saved, `checkpoints ${without} → ${withLora} bytes`);

  const state = (await readSafetensors(`${ck(a, 4)}/state.safetensors`)).tensors;
  assert.ok(!("model.teacher" in state));
  assert.equal(state["model.student"].shape[0], count(l.shapes));
  const adapters = (await readSafetensors(`${ck(a, 4)}/student.safetensors`)).tensors;
  assert.deepEqual(Object.keys(adapters).sort(), Object.keys(l.shapes).sort());
  assert.ok(Object.entries(adapters).some(([k, t]) => k.endsWith("lora_B") && toFloat32(t).some((v) => v !== 0)));

  const teacher = unet.init(unet.params.parse(s.params), initRng(0, "teacher"));
  const merged = await loadUnetFolder(ck(a, 4), "student", false);
  for (const [path, w] of Object.entries(teacher)) {
    if (path in l.targets) continue;
    assert.deepEqual(merged.weights[path], w, `untargeted "${path}" moved`);
  }
  assert.ok(Object.keys(l.targets).some((t) => merged.weights[t].some((v, i) => v !== teacher[t][i])));
  const ema = await loadUnetFolder(ck(a, 4), "student", true);
  assert.match(ema.file, /student\.ema\.safetensors$/);
  const out = await tmp("lora-export");
  const r = await exportStudent(a, `${out}/student`);
  assert.equal(r.manifest.unet.parameters, count(s.shapes));
});
