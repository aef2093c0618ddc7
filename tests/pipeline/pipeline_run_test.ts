// The run loop, end to end through the CLI in subprocesses (cpu executor, small shapes): a pipeline made of a user's
// own kinds trains; resumed runs (after --steps k, Ctrl-C, or SIGKILL during checkpoint writes) reproduce an
// uninterrupted run bit for bit; a NaN/Inf stops the run and keeps the last good checkpoint; checkpoints keep the
// last K and hold what they should; the CLI's guards; the progress display.
import assert from "node:assert/strict";
import { parse } from "yaml";
import { featureFrequencies, fourierFeatures, triangle } from "../../configs/custom/my_stages.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { decodeSafetensors, writeSafetensors } from "../../engine/safetensors.ts";
import { Trace } from "../../engine/tensor.ts";
import { latestCheckpoint, listCheckpoints, writeCheckpoint } from "../../pipeline/checkpoint.ts";
import { fmtValue, Progress } from "../../pipeline/progress.ts";
import { plotSvg } from "../../stages/metrics.ts";
import { StageTypeError, type TraceContext } from "../../pipeline/stage.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const CUSTOM = `${ROOT}configs/custom/my_stages.ts`;
const FIT = `${ROOT}configs/custom/fit.yaml`;
/** What a checkpoint folder of a one-model run with an EMA holds, sorted. */
const CHECKPOINT_FILES = "COMPLETE config.yaml net.ema.safetensors net.safetensors state.json state.safetensors".split(
  " ",
);

let tmpRoot: string | null = null;
// Removed when the test process ends, whichever tests ran (--filter included).
globalThis.addEventListener("unload", () => {
  if (tmpRoot) Deno.removeSync(tmpRoot, { recursive: true });
});
/** A fresh folder under one temporary root that the subprocesses may write to (and nothing else). */
async function tmp(name: string): Promise<string> {
  tmpRoot ??= await Deno.makeTempDir({ dir: "/tmp", prefix: "pipeline_run_test-" });
  const d = `${tmpRoot}/${name}`;
  await Deno.mkdir(d, { recursive: true });
  return d;
}

function command(script: string, args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${ROOT}deno.json`, "--allow-read", `--allow-write=${tmpRoot}`, "--allow-env"]
      .concat(["--allow-ffi", "--allow-sys", script, ...args]),
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

interface Result {
  code: number;
  signal?: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI (`main.ts` or a user module) to the end. */
async function cli(args: string[], script = MAIN): Promise<Result> {
  const r = await command(script, args).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** A running CLI whose stdout can be waited on line by line. */
class Live {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  private waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  private readonly done: Promise<Result>;

  constructor(script: string, args: string[]) {
    this.child = command(script, args).spawn();
    const pump = async (s: ReadableStream<Uint8Array>, which: "stdout" | "stderr") => {
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
        this[which] += chunk;
        if (which === "stdout") this.check();
      }
    };
    this.done = Promise.all([pump(this.child.stdout, "stdout"), pump(this.child.stderr, "stderr"), this.child.status])
      .then(([, , st]) => ({ code: st.code, signal: st.signal, stdout: this.stdout, stderr: this.stderr }));
  }

  private check() {
    this.waiters = this.waiters.filter((w) => {
      const m = this.stdout.match(w.re);
      if (m) w.resolve(m);
      return !m;
    });
  }

  /** Resolves once stdout matches `re` (rejects if the process ends first). */
  waitFor(re: RegExp): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ re, resolve });
      this.check();
      this.done.then((r) =>
        reject(new Error(`process ended (code ${r.code}) before ${re}:\n${r.stdout}\n${r.stderr}`))
      );
    });
  }

  end(): Promise<Result> {
    return this.done;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function expectCode(r: Result, code: number, what: string) {
  assert.equal(r.code, code, `${what}: exit ${r.code}, expected ${code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
}

/** metrics.jsonl rows. */
async function rows(out: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(`${out}/metrics.jsonl`);
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** Checks that a checkpoint folder is complete and loadable; returns its decoded files. */
async function loadCheckpoint(dir: string) {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  const tensors: Record<string, ReturnType<typeof decodeSafetensors>> = {};
  for (const n of names.filter((n) => n.endsWith(".safetensors"))) {
    tensors[n] = decodeSafetensors(await Deno.readFile(`${dir}/${n}`), `${dir}/${n}`);
  }
  const state = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
  const config = parse(await Deno.readTextFile(`${dir}/config.yaml`));
  return { names: names.sort(), tensors, state, config };
}

/** The toy regression pipeline of these tests: sizes and settings from `o`, effect stages from `extraStages`. */
function toyYaml(
  o: {
    steps?: number;
    log_every?: number;
    seed?: number;
    hidden?: number[];
    batch?: number;
    lr?: number;
    activation?: string;
  } = {},
  extraStages = `
  ema: { kind: ema, params: { model: net, decay: 0.9 } }
  ckpt: { kind: checkpoint, every: 10, params: { keep: 3 } }
  plot: { kind: metrics, every: 20 }`,
): string {
  return `version: 1
run: { seed: ${o.seed ?? 3}, executor: cpu, steps: ${o.steps ?? 40}, log_every: ${o.log_every ?? 1} }
models:
  net: { kind: mlp, params: { in: 1, hidden: [${(o.hidden ?? [16, 16]).join(", ")}], out: 1, activation: ${
    o.activation ?? "tanh"
  } } }
data:
  sine: { kind: toy_function, params: { fn: sin, size: 128 } }
stages:
  batch: { kind: data, params: { dataset: sine, batch: ${o.batch ?? 16} } }
  predict: { kind: model, inputs: { x: batch.x }, params: { model: net } }
  loss: { kind: mse, inputs: { pred: predict.y, target: batch.y } }
  opt: { kind: optimizer, inputs: { loss: loss.loss }, params: { models: [net], lr: ${o.lr ?? 0.01} } }
${extraStages}
`;
}

async function writeConfig(dir: string, name: string, text: string): Promise<string> {
  const f = `${dir}/${name}`;
  await Deno.writeTextFile(f, text);
  return f;
}

/** Asserts two metrics.jsonl row lists are identical, every number exactly equal. */
function assertSameRows(a: Record<string, number>[], b: Record<string, number>[], what: string) {
  assert.equal(a.length, b.length, `${what}: ${a.length} rows vs ${b.length}`);
  for (let i = 0; i < a.length; i++) {
    assert.deepEqual(Object.keys(a[i]), Object.keys(b[i]), `${what}: row ${i} keys`);
    for (const k of Object.keys(a[i])) {
      assert.ok(Object.is(a[i][k], b[i][k]), `${what}: step ${a[i].step} ${k}: ${a[i][k]} vs ${b[i][k]}`);
    }
  }
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = [await Deno.readFile(a), await Deno.readFile(b)];
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

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

Deno.test("checkpoints: last K; weights, EMA, state, resolved config; metrics.jsonl/.svg; plain progress", async () => {
  const dir = await tmp("keep");
  const stages = `
  ema: { kind: ema, params: { model: net, decay: 0.9 } }
  ckpt: { kind: checkpoint, every: 1, params: { keep: 3 } }
  plot: { kind: metrics, every: 10 }`;
  const cfg = await writeConfig(dir, "toy.yaml", toyYaml({ steps: 23, log_every: 7, seed: 11 }, stages));
  const out = `${dir}/out`;
  const r = await cli([cfg, "--out", out]);
  expectCode(r, 0, "run");
  const cks = await listCheckpoints(out);
  assert.deepEqual(cks.map((c) => c.step), [21, 22, 23]);
  const all: string[] = [];
  for await (const e of Deno.readDir(`${out}/checkpoints`)) all.push(e.name);
  assert.deepEqual(all.sort(), ["step-00000021", "step-00000022", "step-00000023"]);
  const [c22, c23] = [await loadCheckpoint(cks[1].dir), await loadCheckpoint(cks[2].dir)];
  assert.deepEqual(c23.names, CHECKPOINT_FILES);
  const w = c23.tensors["net.safetensors"].tensors;
  assert.deepEqual(Object.fromEntries(Object.entries(w).map(([k, t]) => [k, t.shape])), {
    "l0.w": [16, 1],
    "l0.b": [16],
    "l1.w": [16, 16],
    "l1.b": [16],
    "l2.w": [1, 16],
    "l2.b": [1],
  });
  const st = c23.tensors["state.safetensors"].tensors;
  assert.deepEqual(Object.keys(st).sort(), ["ema.net", "model.net", "opt.opt.net.m", "opt.opt.net.v"]);
  // The flat store and the named weights are the same numbers.
  const flat = Object.values(w).flatMap((t) => [...(t.data as Float32Array)]);
  assert.deepEqual(flat, [...(st["model.net"].data as Float32Array)]);
  // EMA after step 23 = 0.9·EMA after 22 + 0.1·weights after 23 (it runs after the optimizer).
  const e22 = c22.tensors["net.ema.safetensors"].tensors, e23 = c23.tensors["net.ema.safetensors"].tensors;
  for (const k of Object.keys(w)) {
    const [a, b, p] = [e22[k].data, e23[k].data, w[k].data] as Float32Array[];
    for (let i = 0; i < a.length; i++) {
      assert.ok(Math.abs(b[i] - (0.9 * a[i] + 0.1 * p[i])) < 1e-6, `ema ${k}[${i}]`);
    }
  }
  assert.ok(Object.keys(w).some((k) => !(w[k].data as Float32Array).every((v, i) => v === e23[k].data[i])));
  assert.equal(c23.state.step, 23);
  assert.equal(c23.state.seed, 11);
  assert.deepEqual(c23.state.rng, { seed: "11", counter: "0" });
  assert.equal(c23.config.run.steps, 23);
  assert.equal(c23.config.run.out, out);
  assert.equal(c23.config.stages.opt.params.beta1, 0.9, "defaults are filled in");
  assert.equal(c23.config.stages.batch.params.shuffle, true);

  const m = await rows(out);
  assert.deepEqual(m.map((x) => x.step), [7, 14, 21, 23]);
  assert.equal(c23.state.metrics["opt.loss"], m[3]["opt.loss"]);
  const svg = await Deno.readTextFile(`${out}/metrics.svg`);
  assert.ok(svg.startsWith("<svg") && svg.includes("opt.loss"), "metrics.svg");

  // Off a terminal: one plain line every log_every steps and at the end.
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("step "));
  assert.equal(lines.length, 4, r.stdout);
  lines.forEach((l, i) => {
    const p = l.match(/^step (\d+)\/23 \| (\d+\.\d\d) it\/s \| ETA (\d+:\d\d|\?) \| opt\.loss=(\S+)$/);
    assert.ok(p, `progress line "${l}"`);
    assert.equal(Number(p[1]), m[i].step);
    assert.ok(Number(p[2]) > 0);
    assert.equal(p[4], fmtValue(m[i]["opt.loss"]));
  });
  // The closing time line splits the wall time among this run's phase and stages.
  const t = r.stdout.match(/^time: (\d+\.\d s|\d+m \d+s) for 23 steps(?: — (.*))?$/m);
  assert.ok(t, `no time line in:\n${r.stdout.slice(-400)}`);
  const shares = (t[2] ?? "").split(", ").filter(Boolean).map((x) => x.split(" "));
  assert.ok(shares.some(([k]) => k === "opt"), t[0]);
  for (const [k, pc] of shares) {
    assert.ok(["opt", "batch", "ema", "ckpt", "plot"].includes(k) && /^\d+%$/.test(pc), t[0]);
  }
  assert.ok(shares.reduce((a, [, pc]) => a + parseInt(pc), 0) <= 100 + shares.length, t[0]);
});

Deno.test("an optimizer that runs every 2 steps counts its own updates in Adam's bias correction", async () => {
  const dir = await tmp("every");
  const lr = 0.01;
  const cfg = await writeConfig(
    dir,
    "toy.yaml",
    toyYaml({ steps: 2, lr }, "  ckpt: { kind: checkpoint, every: 1, params: { keep: 5 } }")
      .replace("params: { models: [net], lr: 0.01 } }", "params: { models: [net], lr: 0.01 }, every: 2 }"),
  );
  const out = `${dir}/out`;
  expectCode(await cli([cfg, "--out", out]), 0, "run");
  // Step 1 runs no update; step 2 is the optimizer's first, where Adam moves every weight by lr·g/|g| = ±lr.
  const [p1, p2] = await Promise.all([1, 2].map((s) => loadCheckpoint(`${out}/checkpoints/step-0000000${s}`)));
  const ratios: number[] = [];
  for (const [k, t] of Object.entries(p1.tensors["net.safetensors"].tensors)) {
    const a = t.data as Float32Array, b = p2.tensors["net.safetensors"].tensors[k].data as Float32Array;
    for (let i = 0; i < a.length; i++) ratios.push(Math.abs(b[i] - a[i]) / lr);
  }
  ratios.sort((x, y) => x - y);
  assert.ok(ratios[ratios.length - 1] < 1.001, `largest step ${ratios[ratios.length - 1]}·lr`);
  assert.ok(
    Math.abs(ratios[Math.floor(ratios.length / 2)] - 1) < 1e-3,
    `median step ${ratios[ratios.length >> 1]}·lr`,
  );
});

Deno.test("CLI guards: existing checkpoints, --fresh, finished run, no checkpoint, changed model", async () => {
  const dir = await tmp("guards");
  const cfg = await writeConfig(dir, "toy.yaml", toyYaml({ steps: 12, log_every: 4 }));
  const out = `${dir}/out`;
  expectCode(await cli([cfg, "--out", out, "--resume"]), 2, "resume with nothing to resume");
  expectCode(await cli([cfg, "--out", out]), 0, "first run");
  const again = await cli([cfg, "--out", out]);
  expectCode(again, 2, "fresh run over checkpoints");
  assert.match(again.stderr, /already has checkpoints \(latest step 12\); pass --resume .*--fresh/);
  const done = await cli([cfg, "--out", out, "--resume"]);
  expectCode(done, 0, "resume of a finished run");
  assert.match(done.stdout, /nothing to do: .*step-00000012 is at step 12 and the run has 12 steps; pass --steps N/);
  expectCode(await cli([cfg, "--out", out, "--resume", "--fresh"]), 2, "--resume --fresh");
  const changed = await cli([
    cfg,
    "--out",
    out,
    "--resume",
    "--steps",
    "20",
    "--set",
    "models.net.params.hidden=[8]",
  ]);
  expectCode(changed, 1, "resume with another model shape");
  assert.match(changed.stderr, /state\.safetensors: "model\.net" has 321 values, the config needs 25;/);
  const more = await cli([cfg, "--out", out, "--resume", "--steps", "20"]);
  expectCode(more, 0, "extend a finished run");
  assert.deepEqual((await rows(out)).map((x) => x.step), [4, 8, 12, 16, 20]);
  await Deno.writeTextFile(`${out}/notes.txt`, "mine");
  const fresh = await cli([cfg, "--out", out, "--fresh", "--steps", "5"]);
  expectCode(fresh, 0, "--fresh");
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [5]);
  assert.deepEqual((await rows(out)).map((x) => x.step), [4, 5]);
  assert.equal(await Deno.readTextFile(`${out}/notes.txt`), "mine", "--fresh deletes only what runs write");
});

Deno.test("writeCheckpoint: keeps K, rewrites a step whole, skips then removes a killed write's rests", async () => {
  const out = await tmp("write-checkpoint"), root = `${out}/checkpoints`;
  const text = (dir: string) => Deno.readTextFile(`${dir}/a.txt`);
  await writeCheckpoint(out, 1, { "a.txt": "one" }, 2);
  const d2 = await writeCheckpoint(out, 2, { "a.txt": "two" }, 2);
  assert.equal(d2, `${root}/step-00000002`);
  // What a kill leaves: a temporary folder; and a step folder some other writer never finished.
  await Deno.mkdir(`${root}/.tmp-step-00000003-dead`);
  await Deno.writeTextFile(`${root}/.tmp-step-00000003-dead/a.txt`, "thr");
  await Deno.mkdir(`${root}/step-00000007`);
  await Deno.writeTextFile(`${root}/step-00000007/a.txt`, "seven");
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [1, 2]);
  assert.equal((await latestCheckpoint(out))?.dir, d2);
  // The same step saved twice in a session (two checkpoint stages) replaces the folder whole.
  await writeCheckpoint(out, 2, { "a.txt": "two again", "b.bin": Uint8Array.of(1, 2, 3) }, 2);
  assert.equal(await text(d2), "two again");
  assert.deepEqual([...await Deno.readFile(`${d2}/b.bin`)], [1, 2, 3]);
  await writeCheckpoint(out, 3, { "a.txt": "three" }, 2);
  const names: string[] = [];
  for await (const e of Deno.readDir(root)) names.push(e.name);
  assert.deepEqual(names.sort(), ["step-00000002", "step-00000003", "step-00000007"]);
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [2, 3]);
  assert.equal(await Deno.readTextFile(`${root}/step-00000003/COMPLETE`), "3\n");
});

Deno.test("metrics.svg: a long run's series is thinned to 2,000 points per panel and keeps its ends", () => {
  const n = 300_000; // spreading this many values into Math.min overflows the stack
  const long = Array.from({ length: n }, (_, i) => ({ step: i + 1, "opt.loss": 1 / (i + 1), "d.loss": i % 7 }));
  const svg = plotSvg(long, ["opt.loss", "d.loss"]);
  const paths = [...svg.matchAll(/<path d="([^"]*)"/g)].map((m) => m[1].split(/[ML]/).filter((p) => p));
  assert.equal(paths.length, 2);
  for (const p of paths) assert.ok(p.length <= 2001 && p.length >= 1990, `${p.length} points`);
  assert.ok(svg.includes(`>${n}</text>`) && svg.includes(">step 1</text>"), "the x axis spans the whole run");
  assert.ok(svg.includes(">1e0.0</text>") && svg.includes(">1e-5.5</text>"), "log axis from 1 to 1/n");
  const short = plotSvg([{ step: 1, a: 3 }, { step: 2, a: 1 }, { step: 5, a: 2 }], ["a"]);
  assert.equal([...short.matchAll(/[ML][\d.]+,[\d.]+/g)].length, 3);
});

Deno.test("progress: a redrawn, throttled bar on a terminal; plain lines every N steps otherwise", () => {
  const tty: string[] = [];
  const bar = new Progress(100, 10, true, (s) => tty.push(s), () => 120);
  bar.start(0);
  for (let s = 1; s <= 100; s++) bar.update(s, { "opt.loss": 1 / s });
  bar.log("a message");
  bar.finish();
  // Drawn at the first step and the last, not at every step in between (the loop takes well under 100 ms).
  const draws = tty.filter((s) => s.startsWith("\r\x1b[2K["));
  assert.ok(draws.length >= 2 && draws.length < 10, `${draws.length} redraws`);
  assert.match(draws[0].slice(5), /^\[#?-+\] step 1\/100 \| \d+\.\d\d it\/s \| ETA \S+ \| opt\.loss=1\.000$/);
  assert.match(draws[draws.length - 1], /\[#{24}\] step 100\/100 .*opt\.loss=0\.01000$/);
  const last = draws[draws.length - 1].slice(5);
  assert.equal(
    tty[tty.length - 2],
    `\r\x1b[2Ka message\n${last}`,
    "a log line takes the bar's place, which follows it",
  );
  assert.equal(tty[tty.length - 1], "\n", "finish ends the bar's line");

  // A narrow terminal drops the bar before the numbers, then cuts the line to fit.
  const narrow: string[] = [];
  const small = new Progress(100, 10, true, (s) => narrow.push(s), () => 40);
  small.start(0);
  small.update(50, { "opt.loss": 0.25, "d.loss": 1.5 });
  assert.match(narrow[0].slice(5), /^step 50\/100 \| \d+\.\d\d it\/s \| ETA /);
  assert.equal(narrow[0].length, 5 + 39, JSON.stringify(narrow[0]));

  const plain: string[] = [];
  const lines = new Progress(25, 10, false, (s) => plain.push(s));
  lines.start(0);
  for (let s = 1; s <= 25; s++) lines.update(s, { "opt.loss": 0.5, "d.loss": 2e-5 });
  assert.deepEqual(plain.map((l) => l.match(/^step (\d+)\/25 /)?.[1]), ["10", "20", "25"]);
  assert.ok(plain.every((l) => l.endsWith("| opt.loss=0.5000 d.loss=2.000e-5\n")), plain.join(""));
});
