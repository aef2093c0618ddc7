// run.fuse_phases: ADD's two update phases traced into one graph (trace_phase.ts's traceFused). The fused graph must
// compute the student's forward pass once (fewer contraction FLOPs than the two graphs together), and a run with it
// must train to the same weights, optimizer state and losses as a run with one graph per phase (to float rounding;
// on onnxruntime's cpu executor here they were bit-identical).
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import { contractionFlops } from "../../bench/flops.ts";
import { loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { traceFused, tracePhase } from "../../pipeline/trace_phase.ts";
import { cli, expectCode, loadCheckpoint, ROOT, rows, tmp } from "../helpers/cli_run.ts";

const TINY = `${ROOT}configs/add_tiny.yaml`;
const OFF = ["report", "progress_eval", "preview", "plot"].flatMap((s) => ["--set", `stages.${s}=null`]);

Deno.test("traceFused: ADD's phases in one graph trace the student's forward once", () => {
  const plan = planPipeline(loadConfig(TINY, Deno.readTextFileSync(TINY)));
  assert.deepEqual(plan.phases.map((p) => p.optimizer), ["opt_d", "opt_g"]);
  const apart = plan.phases.map((p) => tracePhase(plan, p, 4));
  const fused = traceFused(plan, plan.phases, 4);
  const sum = apart.reduce((a, c) => a + contractionFlops(c.graph), 0);
  // The student's forward pass, as the discriminator's phase traces it: that phase's FLOPs less the same phase fed the
  // student's output from the host instead of tracing it.
  const dOnly = { ...plan.phases[0], stages: plan.phases[0].stages.filter((s) => s !== "student") };
  const student = contractionFlops(apart[0].graph) - contractionFlops(tracePhase(plan, dOnly, 4).graph);
  assert.ok(student > 0.1 * contractionFlops(apart[0].graph), `student forward ${student} FLOPs`);
  const got = contractionFlops(fused.graph);
  // At least the student's forward is saved (the trace also merges other work both phases repeat on the same
  // values, such as the frozen feature network on the real images).
  assert.ok(got <= sum - student + 0.01 * sum, `fused ${got} FLOPs, apart ${sum}, student ${student}`);
  // The fused graph reads and writes every state the two graphs do, under the same store keys, each once.
  const keys = (o: Record<string, string>) => Object.values(o).sort();
  assert.deepEqual(keys(fused.stateOut), apart.flatMap((c) => keys(c.stateOut)).sort());
  assert.deepEqual(keys(fused.stateIn), [...new Set(apart.flatMap((c) => keys(c.stateIn)))].sort());
  assert.deepEqual(fused.members.map((p) => p.optimizer), ["opt_d", "opt_g"]);
});

Deno.test("run.fuse_phases: the same weights, state and losses as one graph per phase", async () => {
  const runs: Record<string, string> = {};
  for (const fuse of [false, true]) {
    const out = await tmp(`fuse-${fuse}`);
    const r = await cli([TINY, "--out", out, "--set", `run.fuse_phases=${fuse}`, ...OFF]);
    expectCode(r, 0, `add_tiny with fuse_phases=${fuse}`);
    if (fuse) assert.match(r.stdout, /compiled phase "opt_d\+opt_g"/);
    runs[String(fuse)] = out;
  }
  const [a, b] = await Promise.all(
    [runs.false, runs.true].map((o) => loadCheckpoint(`${o}/checkpoints/step-00000004`)),
  );
  assert.deepEqual(b.names, a.names);
  for (const [file, st] of Object.entries(a.tensors)) {
    for (const [key, t] of Object.entries(st.tensors)) {
      const x = t.data as Float32Array, y = b.tensors[file].tensors[key].data as Float32Array;
      let worst = 0, scale = 1e-12;
      for (let i = 0; i < x.length; i++) {
        worst = Math.max(worst, Math.abs(x[i] - y[i]));
        scale = Math.max(scale, Math.abs(x[i]));
      }
      assert.ok(worst <= 1e-5 * scale, `${file} ${key}: max |Δ| ${worst} (max |x| ${scale})`);
    }
  }
  const [ra, rb] = await Promise.all([rows(runs.false), rows(runs.true)]);
  assert.equal(rb.length, ra.length);
  for (let i = 0; i < ra.length; i++) {
    for (const k of ["opt_d.loss", "opt_g.loss", "adversarial.r1", "generator_loss.distill"]) {
      assert.ok(Number.isFinite(ra[i][k]), `row ${i} ${k}`);
      assert.ok(Math.abs(ra[i][k] - rb[i][k]) <= 1e-5 * Math.max(1, Math.abs(ra[i][k])), `row ${i} ${k}`);
    }
  }
});
