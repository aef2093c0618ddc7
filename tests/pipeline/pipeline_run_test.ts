// The run loop, end to end through the CLI in subprocesses (cpu executor, small shapes): a pipeline made of a user's
// own kinds trains; an optimizer kind's own rule updates; resumed runs (after --steps k, Ctrl-C, or SIGKILL during
// checkpoint writes) reproduce an uninterrupted run bit for bit; a NaN/Inf stops the run and keeps the last good
// checkpoint.
import assert from "node:assert/strict";
import { featureFrequencies, fourierFeatures, triangle } from "../../configs/custom/my_stages.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { Trace } from "../../engine/tensor.ts";
import { latestCheckpoint, listCheckpoints } from "../../pipeline/checkpoint.ts";
import { StageTypeError, type TraceContext } from "../../pipeline/stage.ts";
import {
  assertSameRows,
  CHECKPOINT_FILES,
  cli,
  CUSTOM,
  expectCode,
  FIT,
  Live,
  loadCheckpoint,
  MAIN,
  ROOT,
  rows,
  sameBytes,
  sleep,
  tmp,
  toyYaml,
  writeConfig,
} from "../helpers/cli_run.ts";

Deno.test("user module: fourier features match a float64 reference; bad inputs are type errors", () => {
  const params = fourierFeatures.params.parse({ frequencies: 3, scale: 0.5 });
  const tr = new Trace();
  const x = tr.input("x", [4, 2]);
  const { features } = fourierFeatures.trace!({} as TraceContext, params, { x });
  assert.deepEqual(features.shape, [4, 14]);
  const types = fourierFeatures.types({
    params,
    inputs: { x: { dtype: "f32", shape: [4, 2] } },
    models: {},
    datasets: {},
  });
  assert.deepEqual(types.features.shape, features.shape);
  const xs = [0.3, -1.2, 0.05, 2.5, -0.7, 1.1, 0, 0.9];
  const got = evaluate(tr.build({ features }), { x: { data: xs, shape: [4, 2] } }).features;
  const w = featureFrequencies(params);
  assert.deepEqual(w, [0.5 * Math.PI, Math.PI, 2 * Math.PI]);
  for (let b = 0; b < 4; b++) {
    const row = xs.slice(2 * b, 2 * b + 2);
    const want = [
      ...row,
      ...w.flatMap((f) => [...row.map((v) => Math.sin(f * v)), ...row.map((v) => Math.cos(f * v))]),
    ];
    for (let j = 0; j < 14; j++) assert.ok(Math.abs(got[b * 14 + j] - want[j]) < 1e-6, `[${b},${j}]`);
  }
  assert.throws(
    () => fourierFeatures.types({ params, inputs: { x: { dtype: "f32", shape: [4] } }, models: {}, datasets: {} }),
    (e) => e instanceof StageTypeError && /input "x" is f32\[4\], expected f32 of rank 2/.test(e.message),
  );
  // The wave: 1 at integers, −1 half a period away, linear between.
  assert.deepEqual([0, 0.25, 0.125, 0.5, -0.3125].map((v) => triangle(v, 2)), [1, -1, 0, 1, -0.5]);
});

Deno.test("a pipeline of YAML plus a user stage module trains end to end and its loss falls", async () => {
  const out = await tmp("custom");
  const r = await cli([FIT, "--out", out, "--steps", "150", "--set", "run.log_every=1"], CUSTOM);
  expectCode(r, 0, "custom run");
  const m = await rows(out);
  assert.deepEqual(m.map((x) => x.step), Array.from({ length: 150 }, (_, i) => i + 1));
  const mean = (xs: Record<string, number>[]) => xs.reduce((a, x) => a + x["opt.loss"], 0) / xs.length;
  const first = mean(m.slice(0, 5)), last = mean(m.slice(-10));
  assert.ok(last < first / 20, `loss ${first} → ${last}`);
  const ck = await latestCheckpoint(out);
  assert.equal(ck?.step, 150);
  const c = await loadCheckpoint(ck!.dir);
  assert.equal(c.config.stages.features.kind, "user.fourier_features");
  assert.equal(c.config.stages.features.params.include_input, true, "the resolved config fills defaults in");
});

Deno.test("an optimizer kind owns its update and its state: the user's SGD moves weights by −lr × its buffer", async () => {
  // One step from the same initial weights and batch: at lr 0 the weights stay the initial ones, and the momentum
  // buffer after a first step is the gradient, so the lr = 0.1 run must land on p0 − 0.1·buf exactly (AdamW would
  // move each weight by about ±lr instead).
  const step = async (lr: number) => {
    const out = await tmp(`user-sgd-${lr}`);
    const set = ["--set", "stages.opt.kind=user.sgd", "--set", `stages.opt.params.lr=${lr}`, "--steps", "1"];
    expectCode(await cli([FIT, "--out", out, ...set], CUSTOM), 0, `user.sgd lr ${lr}`);
    const c = await loadCheckpoint((await latestCheckpoint(out))!.dir);
    const state = c.tensors["state.safetensors"].tensors;
    assert.deepEqual(
      Object.keys(state).filter((k) => k.startsWith("opt.")),
      ["opt.opt.net.buf"],
      "the optimizer's state is the slots its init names",
    );
    return { p: state["model.net"].data as Float32Array, buf: state["opt.opt.net.buf"].data as Float32Array };
  };
  const still = await step(0), moved = await step(0.1);
  assert.deepEqual(moved.buf, still.buf, "the same first gradient");
  let worst = 0, nonzero = 0;
  for (let i = 0; i < still.p.length; i++) {
    worst = Math.max(worst, Math.abs(moved.p[i] - (still.p[i] - 0.1 * still.buf[i])));
    if (Math.abs(still.buf[i]) > 1e-6) nonzero++;
  }
  assert.ok(nonzero > still.p.length / 2, `only ${nonzero} of ${still.p.length} gradients are nonzero`);
  assert.ok(worst < 1e-6, `weights differ from p0 − lr·buf by ${worst}`);
});

Deno.test("--steps k, then --resume: metrics, weights, EMA and moments identical to an uninterrupted run", async () => {
  const a = await tmp("resume-a"), b = await tmp("resume-b");
  const common = ["--set", "run.log_every=1", "--set", "stages.ckpt.every=10"];
  const ra = await cli([FIT, "--out", a, "--steps", "60", ...common], CUSTOM);
  expectCode(ra, 0, "uninterrupted");
  expectCode(await cli([FIT, "--out", b, "--steps", "25", ...common], CUSTOM), 0, "first 25 steps");
  assert.equal((await latestCheckpoint(b))?.step, 25, "the last step saves a checkpoint");
  const rb = await cli([FIT, "--out", b, "--steps", "60", "--resume", ...common], CUSTOM);
  expectCode(rb, 0, "resumed");
  assert.match(rb.stdout, /resuming from .*step-00000025 \(step 25 of 60\)/);
  assertSameRows(await rows(a), await rows(b), "metrics.jsonl");
  const [ca, cb] = [(await latestCheckpoint(a))!, (await latestCheckpoint(b))!];
  assert.equal(ca.step, 60);
  for (const f of ["net.safetensors", "net.ema.safetensors", "state.safetensors"]) {
    assert.ok(await sameBytes(`${ca.dir}/${f}`, `${cb.dir}/${f}`), `${f} differs after resume`);
  }
});

Deno.test("--resume of a pipeline with a frozen model loaded from its init file: same rows as uninterrupted", async () => {
  // The frozen model is not in checkpoints: a resume must load it from its init file again, not leave it zero.
  const dir = await tmp("resume-frozen");
  await writeSafetensors(`${dir}/frozen.safetensors`, {
    "l0.w": { data: Float32Array.of(1.5), shape: [1, 1] },
    "l0.b": { data: Float32Array.of(0.25), shape: [1] },
  });
  const extra = `
  shift: { kind: model, inputs: { x: batch.x }, params: { model: frozen } }
  loss: { kind: mse, inputs: { pred: predict.y, target: shift.y } }
  ckpt: { kind: checkpoint, every: 10, params: { keep: 3 } }`;
  const yaml = toyYaml({ steps: 30 }, extra)
    .replace(
      "models:\n",
      "models:\n  frozen: { kind: mlp, params: { in: 1, hidden: [], out: 1 }, init: frozen.safetensors }\n",
    )
    .replace("  loss: { kind: mse, inputs: { pred: predict.y, target: batch.y } }\n", "");
  const cfg = await writeConfig(dir, "frozen.yaml", yaml);
  expectCode(await cli([cfg, "--out", `${dir}/a`]), 0, "uninterrupted");
  expectCode(await cli([cfg, "--out", `${dir}/b`, "--steps", "10"]), 0, "first 10 steps");
  expectCode(await cli([cfg, "--out", `${dir}/b`, "--resume"]), 0, "resumed");
  const [ra, rb] = [await rows(`${dir}/a`), await rows(`${dir}/b`)];
  assert.equal(ra.length, 30);
  assertSameRows(ra, rb, "metrics.jsonl");
});

Deno.test("Ctrl-C/SIGTERM save a checkpoint and exit 130/143; --resume matches an uninterrupted run", async () => {
  const dir = await tmp("sigint");
  // A second optimizer every 3 steps: the rows after a resume must still carry its latest loss.
  const aux = `
  predict2: { kind: model, inputs: { x: batch.x }, params: { model: aux } }
  loss2: { kind: mse, inputs: { pred: predict2.y, target: batch.y } }
  opt2: { kind: optimizer, inputs: { loss: loss2.loss }, params: { models: [aux], lr: 0.003 }, every: 3 }
  ema: { kind: ema, params: { model: net, decay: 0.9 } }
  ckpt: { kind: checkpoint, every: 10, params: { keep: 3 } }`;
  const yaml = toyYaml({ steps: 100000 }, aux)
    .replace("models:\n", "models:\n  aux: { kind: mlp, params: { in: 1, hidden: [8], out: 1 } }\n");
  const cfg = await writeConfig(dir, "toy.yaml", yaml);
  const b = `${dir}/b`, a = `${dir}/a`;
  const live = new Live(MAIN, [cfg, "--out", b]);
  await live.waitFor(/^step 30\/100000 /m);
  live.child.kill("SIGINT");
  const r = await live.end();
  expectCode(r, 130, "interrupted run");
  assert.match(r.stdout, /Ctrl-C: finishing this step and saving a checkpoint/);
  const m = r.stdout.match(/interrupted at step (\d+): saved (\S+); continue with --resume/);
  assert.ok(m, `no interrupt message in:\n${r.stdout.slice(-500)}`);
  const k = Number(m[1]);
  assert.ok(k >= 30 && k < 100000);
  const ck = (await latestCheckpoint(b))!;
  assert.equal(ck.step, k);
  assert.equal(m[2], ck.dir);
  const loaded = await loadCheckpoint(ck.dir);
  assert.equal(loaded.state.step, k);
  assert.deepEqual(
    Object.keys(loaded.tensors["state.safetensors"].tensors).sort(),
    ["ema.net", "model.aux", "model.net", "opt.opt.net.m", "opt.opt.net.v", "opt.opt2.aux.m", "opt.opt2.aux.v"],
  );
  const n = k + 15;
  expectCode(await cli([cfg, "--out", b, "--resume", "--steps", String(n)]), 0, "resumed");
  expectCode(await cli([cfg, "--out", a, "--steps", String(n)]), 0, "uninterrupted");
  const [ra, rb] = [await rows(a), await rows(b)];
  assert.equal(ra.length, n);
  assert.ok(ra.every((row) => row.step < 3 || "opt2.loss" in row));
  assertSameRows(ra, rb, "metrics.jsonl");

  const t = new Live(MAIN, [cfg, "--out", `${dir}/t`]);
  await t.waitFor(/^step 5\/100000 /m);
  t.child.kill("SIGTERM");
  const rt = await t.end();
  expectCode(rt, 143, "SIGTERM");
  const mt = rt.stdout.match(/interrupted at step (\d+): saved/);
  assert.equal((await latestCheckpoint(`${dir}/t`))?.step, Number(mt?.[1]));
});

Deno.test("SIGKILL during checkpoint writes: the last complete checkpoint loads and --resume is exact", async () => {
  const dir = await tmp("kill");
  // ~265k parameters and a checkpoint every step: the process spends most of its time writing checkpoints.
  const stages = `
  ema: { kind: ema, params: { model: net, decay: 0.9 } }
  ckpt: { kind: checkpoint, every: 1, params: { keep: 2 } }`;
  const cfg = await writeConfig(
    dir,
    "big.yaml",
    toyYaml({ steps: 100000, hidden: [512, 512], batch: 8, lr: 0.0003 }, stages),
  );
  const out = `${dir}/killed`;
  const entries = async () => {
    const names: string[] = [];
    for await (const e of Deno.readDir(`${out}/checkpoints`)) names.push(e.name);
    return names;
  };
  // How far into a write each kill lands, in ms after its temporary folder appears.
  const delays = [0, 1, 2, 3, 5, 7, 9, 12];
  let midWrite = 0, last = 0;
  for (const [round, delay] of delays.entries()) {
    const live = new Live(MAIN, [cfg, "--out", out, ...(round ? ["--resume"] : [])]);
    // A progress line follows a finished checkpoint write. The next new name in the folder is the next write
    // starting (whatever it writes first).
    await live.waitFor(/^step \d+\/100000 /m);
    const before = new Set(await entries()), t0 = Date.now();
    while ((await entries()).every((n) => before.has(n)) && Date.now() - t0 < 20000) await sleep(1);
    await sleep(delay);
    live.child.kill("SIGKILL");
    const r = await live.end();
    assert.equal(r.signal, "SIGKILL", `round ${round}: the process ended by itself\n${r.stderr}`);
    const complete = new Set((await listCheckpoints(out)).map((c) => c.dir.replace(/^.*\//, "")));
    if ((await entries()).some((n) => !complete.has(n))) midWrite++; // the unfinished write's leftovers
    const ck = await latestCheckpoint(out);
    assert.ok(ck && ck.step > last, `round ${round}: latest ${ck?.step}, previous ${last}`);
    last = ck.step;
    const c = await loadCheckpoint(ck.dir);
    assert.deepEqual(c.names, CHECKPOINT_FILES);
    assert.equal(c.state.step, ck.step);
    assert.equal(c.tensors["net.safetensors"].tensors["l1.w"].shape.join(), "512,512");
  }
  // Most kills land with the write's temporary folder still there (the others just after its rename).
  assert.ok(midWrite >= 3, `only ${midWrite} of ${delays.length} kills landed inside a write`);
  const n = last + 4;
  expectCode(await cli([cfg, "--out", out, "--resume", "--steps", String(n)]), 0, "resumed after kills");
  const ref = `${dir}/reference`;
  expectCode(await cli([cfg, "--out", ref, "--steps", String(n)]), 0, "uninterrupted");
  assertSameRows(await rows(ref), await rows(out), "metrics.jsonl after kills");
  for await (const e of Deno.readDir(`${out}/checkpoints`)) {
    assert.ok(!e.name.startsWith(".tmp-"), `leftover ${e.name} not cleaned up`);
  }
  console.log(`  ${delays.length} kills, ${midWrite} inside a checkpoint write`);
});

Deno.test("a NaN/Inf loss or state stops the run (exit 1) and keeps the last good checkpoint, resumable", async () => {
  const dir = await tmp("nan");
  // A user's dataset that divides by zero: y = 1/x on a grid through x = 0 at example 50 (step 4 unshuffled).
  const fixture = await writeConfig(
    dir,
    "reciprocal.ts",
    `import { registerBuiltins, registerDataset, runCli } from "${ROOT}mod.ts";
import { z } from "zod";
registerBuiltins();
const Params = z.strictObject({ size: z.number().int().positive(), zero_at: z.number().int().min(0) });
registerDataset<z.output<typeof Params>>({
  kind: "test.reciprocal",
  doc: "y = 1/x on a grid of x through 0",
  params: Params,
  fields: () => ({ x: { dtype: "f32", shape: [1] }, y: { dtype: "f32", shape: [1] } }),
  load: (p) => {
    const x = Float32Array.from({ length: p.size }, (_, i) => (i - p.zero_at) / p.size);
    const y = x.map((v) => 1 / v);
    return Promise.resolve({
      size: p.size,
      batch: (idx) => ({ x: Float32Array.from(idx, (i) => x[i]), y: Float32Array.from(idx, (i) => y[i]) }),
    });
  },
});
if (import.meta.main) Deno.exit(await runCli(Deno.args));
`,
  );
  const cfg = await writeConfig(
    dir,
    "nan.yaml",
    toyYaml({ steps: 50 }, "  ckpt: { kind: checkpoint, every: 2, params: { keep: 2 } }")
      .replace(
        "kind: toy_function, params: { fn: sin, size: 128 }",
        "kind: test.reciprocal, params: { size: 128, zero_at: 50 }",
      )
      .replace("dataset: sine, batch: 16", "dataset: sine, batch: 16, shuffle: false"),
  );
  const out = `${dir}/out`;
  const r = await cli([cfg, "--out", out], fixture);
  expectCode(r, 1, "run into an Inf loss");
  const want = `step 4: opt.loss is +Inf; stopping. The last good checkpoint is ${out}/checkpoints/step-00000002 ` +
    `(step 2; continue from it with --resume).`;
  assert.ok(r.stderr.includes(want), `expected "${want}" in:\n${r.stderr}`);
  assert.deepEqual((await rows(out)).map((x) => x.step), [1, 2, 3], "no row for the step that blew up");
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [2]);
  const c = await loadCheckpoint(`${out}/checkpoints/step-00000002`);
  for (const [f, file] of Object.entries(c.tensors)) {
    for (const [n, t] of Object.entries(file.tensors)) {
      assert.ok((t.data as Float32Array).every(Number.isFinite), `${f} ${n} is not finite`);
    }
  }
  const res = await cli([cfg, "--out", out, "--resume", "--steps", "3"], fixture);
  expectCode(res, 0, "resume from the last good checkpoint");
  assert.match(res.stdout, /resuming from .*step-00000002/);
  assert.deepEqual((await rows(out)).map((x) => x.step), [1, 2, 3]);

  // An absurd learning rate: the gradients' squares overflow Adam's second moment while the loss is still finite.
  // The step's checkpoint refuses to save that state; the stop names it and keeps the previous checkpoint.
  const wild = await writeConfig(
    dir,
    "wild.yaml",
    toyYaml(
      { steps: 50, hidden: [32, 32, 32], lr: 1000, activation: "silu" },
      "  ckpt: { kind: checkpoint, every: 1, params: { keep: 2 } }",
    ),
  );
  const lr = await cli([wild, "--out", `${dir}/lr`]);
  expectCode(lr, 1, "absurd lr");
  const s = lr.stderr.match(/^step (\d+): opt\.opt\.net\.v\[\d+\] is \+Inf after the update; stopping\. (.*)$/m);
  assert.ok(s, lr.stderr);
  const good = (await latestCheckpoint(`${dir}/lr`))!;
  assert.equal(good.step, Number(s[1]) - 1);
  assert.ok(s[2].includes(`The last good checkpoint is ${good.dir} (step ${good.step};`), s[2]);
});
