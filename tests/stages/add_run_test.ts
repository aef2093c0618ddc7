// ADD end to end through the CLI in subprocesses: configs/add_tiny.yaml (the default, ADD plus the teacher-pair
// regression, with tiny random UNets, MobileNetV2 features at 32×32, 4 steps) on cpu and on webgpu (llvmpipe here),
// and the paper's recipe and its ablation configs rebased onto a tiny version of it on cpu. Each run
// must exit 0 and leave metrics.jsonl with every loss term finite at every step, checkpoints with the student's
// weights and EMA, preview PNGs, metrics.svg and the evaluation report. The webgpu run's losses must match the cpu
// run's.
import assert from "node:assert/strict";
import { decode } from "fast-png";
import "../../stages/mod.ts";
import { decodeSafetensors } from "../../engine/safetensors.ts";
import { loadConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const TINY = `${ROOT}configs/add_tiny.yaml`;

/** Every loss term and logged scalar of the paper's ADD pipeline (configs/add_paper.yaml). */
const PAPER_KEYS = [
  "opt_d.loss",
  "opt_g.loss",
  "opt_g.grad_norm",
  "generator_loss.adv",
  "generator_loss.distill",
  "adversarial.r1",
  "adversarial.d_real",
  "adversarial.d_fake",
];
/** ... and of the default, which adds the regression on teacher pairs. */
const ALL_KEYS = [...PAPER_KEYS, "generator_loss.regression", "generator_loss.regression_px"];

let tmpRoot: string | null = null;
globalThis.addEventListener("unload", () => {
  if (tmpRoot) Deno.removeSync(tmpRoot, { recursive: true });
});
async function tmp(name: string): Promise<string> {
  tmpRoot ??= await Deno.makeTempDir({ dir: "/tmp", prefix: "add_run_test-" });
  const d = `${tmpRoot}/${name}`;
  await Deno.mkdir(d, { recursive: true });
  return d;
}

interface Run {
  out: string;
  rows: Record<string, number>[];
  seconds: number;
  stdout: string;
}

/** Runs `main.ts` on a config with write access to the temporary root only; fails with its output unless it exits 0. */
async function runCli(config: string, name: string, args: string[] = []): Promise<Run> {
  const out = await tmp(name);
  const t0 = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${ROOT}deno.json`, "--allow-read", `--allow-write=${tmpRoot}`, "--allow-env"]
      .concat(["--allow-ffi", "--allow-sys", MAIN, config, "--out", out, ...args]),
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const dec = new TextDecoder(), stdout = dec.decode(r.stdout), stderr = dec.decode(r.stderr);
  console.log(`    ${name}: exit ${r.code} in ${seconds.toFixed(1)} s`);
  assert.equal(r.code, 0, `${name}: exit ${r.code}\n--- stdout\n${stdout}\n--- stderr\n${stderr}`);
  // The phases ran where they were asked to (webgpu must not quietly become something else).
  const executor = args.includes("webgpu") ? "webgpu" : "cpu";
  // (The generator's phase is "opt_g", or a part of "opt_d+opt_g" where run.fuse_phases traces both as one graph.)
  assert.match(
    stdout,
    new RegExp(`compiled phase "[\\w+]*opt_g[\\w+]*": \\d+ nodes on ${executor} `),
    `${name}: executor`,
  );
  const text = await Deno.readTextFile(`${out}/metrics.jsonl`);
  const rows = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, number>);
  return { out, rows, seconds, stdout };
}

/** One metrics row per step (log_every 1), each with every key in `keys` finite and none of `absent`. */
function checkMetrics(run: Run, steps: number, keys: string[], absent: string[] = []) {
  assert.deepEqual(run.rows.map((r) => r.step), Array.from({ length: steps }, (_, i) => i + 1));
  for (const row of run.rows) {
    for (const k of keys) assert.ok(Number.isFinite(row[k]), `step ${row.step}: ${k} is ${row[k]}`);
    for (const k of absent) assert.ok(!(k in row), `step ${row.step}: ${k} should not be logged`);
  }
}

/** The model's tensors as the config declares them, from the plan (names and shapes). */
function declaredShapes(config: string, model: string): Record<string, number[]> {
  const text = Deno.readTextFileSync(config);
  return planPipeline(loadConfig(config, text)).models[model].shapes;
}

/**
 * The checkpoints at `steps` hold the student's weights and EMA with the declared tensors, all finite; the weights
 * moved between the two checkpoints and the EMA lags them; frozen models are not saved.
 */
async function checkCheckpoints(run: Run, config: string, steps: [number, number], trained: string[]) {
  const dir = (s: number) => `${run.out}/checkpoints/step-${String(s).padStart(8, "0")}`;
  const load = async (s: number, f: string) => decodeSafetensors(await Deno.readFile(`${dir(s)}/${f}`)).tensors;
  const shapes = declaredShapes(config, "student");
  for (const s of steps) {
    const files = [...Deno.readDirSync(dir(s))].map((e) => e.name).sort();
    const want = ["COMPLETE", "config.yaml", "state.json", "state.safetensors"]
      .concat(trained.flatMap((m) => [`${m}.safetensors`, ...(m === "student" ? ["student.ema.safetensors"] : [])]));
    assert.deepEqual(files, want.sort(), `files of ${dir(s)}`);
  }
  const [a, b] = steps;
  const w0 = await load(a, "student.safetensors"), w1 = await load(b, "student.safetensors");
  const ema = await load(b, "student.ema.safetensors");
  assert.deepEqual(Object.keys(w1).sort(), Object.keys(shapes).sort(), "student tensors");
  let moved = 0, lag = 0;
  for (const [k, shape] of Object.entries(shapes)) {
    for (const t of [w0[k], w1[k], ema[k]]) {
      assert.deepEqual(t.shape, shape, `${k} shape`);
      assert.ok(Array.from(t.data as ArrayLike<number>).every(Number.isFinite), `${k}: non-finite values`);
    }
    const p0 = w0[k].data as ArrayLike<number>,
      p1 = w1[k].data as ArrayLike<number>,
      e = ema[k].data as ArrayLike<number>;
    for (let i = 0; i < p1.length; i++) {
      moved = Math.max(moved, Math.abs(p1[i] - p0[i]));
      lag = Math.max(lag, Math.abs(p1[i] - e[i]));
    }
  }
  assert.ok(moved > 0, "the student's weights did not change between checkpoints");
  assert.ok(lag > 0, "the EMA equals the weights");
}

/** Preview grids at `steps` (2 prompts × 2 seeds: a square grid of four images), the metrics plot, the report. */
async function checkOutputs(run: Run, steps: number[], keys: string[]) {
  for (const s of steps) {
    const base = `${run.out}/samples/step-${String(s).padStart(8, "0")}`;
    const png = decode(await Deno.readFile(`${base}.png`));
    assert.ok(png.width === png.height && png.width >= 2 * 32, `preview ${png.width}×${png.height}`);
    // The cells hold images, not the white background (a random student's 1-step images are flat grey, so their
    // contents cannot be asked for more than that).
    let filled = 0;
    for (const v of png.data) if (v !== 255) filled++;
    assert.ok(filled >= 4 * 32 * 32 * 3, `preview: ${filled} non-background values`);
    const legend = JSON.parse(await Deno.readTextFile(`${base}.json`));
    assert.deepEqual([legend.rows, legend.cols], [["red apple", "sun"], [0, 1]]);
  }
  const svg = await Deno.readTextFile(`${run.out}/metrics.svg`);
  assert.ok(svg.startsWith("<svg"), "metrics.svg is not an SVG");
  for (const k of keys) assert.ok(svg.includes(`>${k}</text>`), `metrics.svg has no panel for ${k}`);
  // The end-of-run report, shrunk by the tiny config to one step of each model on a few images.
  const report = JSON.parse(await Deno.readTextFile(`${run.out}/report.json`));
  assert.deepEqual(report.rows.map((r: { name: string }) => r.name), ["teacher 1-step", "student 1-step"]);
  for (const row of report.rows) {
    for (const [set, v] of Object.entries(row.sets as Record<string, { fid: number; nonFinite: number }>)) {
      assert.ok(Number.isFinite(v.fid) && v.nonFinite === 0, `report: ${row.name} on ${set}: ${JSON.stringify(v)}`);
    }
  }
  assert.ok((await Deno.stat(`${run.out}/report.md`)).size > 0, "report.md is empty");
  // The progress evaluation fires at its cadence and appends one line per firing.
  const history = (await Deno.readTextFile(`${run.out}/eval_progress_history.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  assert.deepEqual(history.map((h) => h.step), steps);
  for (const h of history) {
    assert.deepEqual(h.rows.map((r: { name: string }) => r.name), ["student 1-step"]);
    assert.ok(Number.isFinite(h.rows[0].heldout.fid) && Number.isFinite(h.rows[0].train.fid), JSON.stringify(h));
  }
}

let cpuRun: Run | null = null;

Deno.test({
  name: "add_tiny end to end on cpu: every loss finite, checkpoints with EMA, previews, metrics.svg",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const run = await runCli(TINY, "cpu", ["--executor", "cpu"]);
    checkMetrics(run, 4, ALL_KEYS);
    // The generator's loss is the weighted sum the config asks for: adv + λ distill + the two regressions.
    const weights = loadConfig(TINY, Deno.readTextFileSync(TINY)).config.stages.generator_loss.params.weights as {
      a?: number;
      b?: number;
      c?: number;
      d?: number;
    };
    const lambda = weights.b ?? 1;
    assert.ok(lambda !== 1, "the config should weight the distillation term");
    for (const r of run.rows) {
      const want = (weights.a ?? 1) * r["generator_loss.adv"] + lambda * r["generator_loss.distill"] +
        (weights.c ?? 1) * r["generator_loss.regression"] + (weights.d ?? 1) * r["generator_loss.regression_px"];
      assert.ok(Math.abs(r["opt_g.loss"] - want) <= 1e-5 * Math.max(1, Math.abs(want)), `step ${r.step}: opt_g.loss`);
    }
    assert.match(run.stdout, /pairs: made 8 teacher pairs in /);
    // The targets are remade from the student's EMA after step 2, once, and kept as the stage's state for resume.
    assert.equal(run.stdout.match(/pairs: remade 8 targets after step 2 in /g)?.length, 1, run.stdout);
    const state = decodeSafetensors(await Deno.readFile(`${run.out}/checkpoints/step-00000004/state.safetensors`));
    assert.equal(state.tensors["stage.pairs.target"]?.shape.join(), String(8 * 3 * 32 * 32));
    assert.deepEqual([...state.tensors["stage.pairs.target_after"].data], [2]);
    await checkCheckpoints(run, TINY, [2, 4], ["disc", "student"]);
    await checkOutputs(run, [2, 4], ALL_KEYS);
    cpuRun = run;
  },
});

const hasNavigatorGpu = !!(globalThis.navigator as { gpu?: unknown } | undefined)?.gpu;
if (!hasNavigatorGpu) console.log("add_run_test: navigator.gpu is absent in this Deno, so the webgpu run is ignored");

Deno.test({
  name: "add_tiny end to end on webgpu: the same outputs, losses matching the cpu run",
  // Only a Deno without WebGPU at all skips; an adapter that cannot be had is a failure.
  ignore: !hasNavigatorGpu,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const run = await runCli(TINY, "webgpu", ["--executor", "webgpu"]);
    checkMetrics(run, 4, ALL_KEYS);
    await checkCheckpoints(run, TINY, [2, 4], ["disc", "student"]);
    await checkOutputs(run, [2, 4], ALL_KEYS);
    const cpu: Run | null = cpuRun;
    if (!cpu) {
      console.log("    (the cpu run did not run or failed: no comparison)");
      return;
    }
    // Same seeds, same data, float32 on both: step 1 agrees closely, later steps within Adam's amplification.
    for (const [i, row] of run.rows.entries()) {
      const tol = i === 0 ? 1e-4 : 1e-2;
      for (const k of ALL_KEYS) {
        const c: number = cpu.rows[i][k], g: number = row[k];
        assert.ok(Math.abs(g - c) <= tol * Math.max(1, Math.abs(c)), `step ${row.step}: ${k} webgpu ${g} vs cpu ${c}`);
      }
    }
  },
});

/** The tiny config without the default's regression on teacher pairs: the paper's recipe, shrunk. */
async function paperTiny(): Promise<string> {
  const file = `${await tmp("configs")}/add_paper_tiny.yaml`;
  const own = Deno.readTextFileSync(`${ROOT}configs/add.yaml`).split("\n");
  // Every stage the default adds to add_paper.yaml, removed again (generator_loss only gains inputs c and d).
  const added = own.filter((l) => /^ {2}[a-z_]+:$/.test(l)).map((l) => l.trim().slice(0, -1))
    .filter((n) => n !== "generator_loss");
  assert.ok(added.includes("pairs") && added.includes("regression"), `stages added by add.yaml: ${added}`);
  await Deno.writeTextFile(
    file,
    `version: 1\nextends: ${TINY}\nstages:\n` + added.map((n) => `  ${n}: null\n`).join("") +
      `  generator_loss:\n    inputs: { c: null, d: null }\n`,
  );
  return file;
}

/** A config that extends the paper's recipe (`extends: add_paper.yaml`), pointed at its tiny version instead. */
async function rebased(name: string): Promise<string> {
  const text = await Deno.readTextFile(`${ROOT}configs/${name}.yaml`);
  assert.match(text, /^extends: add_paper\.yaml$/m, `${name}.yaml no longer extends add_paper.yaml`);
  const file = `${await tmp("configs")}/${name}_tiny.yaml`;
  await Deno.writeTextFile(file, text.replace(/^extends: add_paper\.yaml$/m, `extends: ${await paperTiny()}`));
  return file;
}

Deno.test({
  name: "ADD ablations (adversarial only, distillation only, SDS, NFSD) on the tiny config run on cpu",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    // add_random_init.yaml only sets the student's init to null, which the tiny config already does.
    const distill1 = cpuRun?.rows[0]["generator_loss.distill"];
    // Two steps, a checkpoint after each (and --set shown to work on a config that extends another).
    const short = ["--steps", "2", "--set", "stages.ckpt.every=1"];
    await t.step("adversarial only", async () => {
      const cfg = await rebased("add_adversarial_only");
      const run = await runCli(cfg, "adversarial_only", short);
      const keys = PAPER_KEYS.filter((k) => k !== "generator_loss.distill");
      checkMetrics(run, 2, keys, ["generator_loss.distill"]);
      for (const r of run.rows) assert.equal(r["opt_g.loss"], r["generator_loss.adv"], "L_G is the adversarial term");
      await checkCheckpoints(run, cfg, [1, 2], ["disc", "student"]);
    });
    await t.step("distillation only", async () => {
      const cfg = await rebased("add_distillation_only");
      const run = await runCli(cfg, "distillation_only", short);
      checkMetrics(run, 2, ["opt_g.loss", "opt_g.grad_norm", "generator_loss.distill"], [
        "opt_d.loss",
        "adversarial.r1",
        "generator_loss.adv",
      ]);
      // Same seed and student as the full run: the first step's distillation loss is the full run's.
      if (distill1 !== undefined) {
        const d = run.rows[0]["generator_loss.distill"];
        assert.ok(Math.abs(d - distill1) <= 1e-5 * Math.max(1, distill1), `distill ${d} vs full run ${distill1}`);
      }
      await checkCheckpoints(run, cfg, [1, 2], ["student"]);
    });
    for (const w of ["sds", "nfsd"]) {
      await t.step(`${w} weighting`, async () => {
        const cfg = await rebased(`add_weighting_${w}`);
        const run = await runCli(cfg, `weighting_${w}`, short);
        checkMetrics(run, 2, PAPER_KEYS);
        // Another weighting of the same first step gives another distillation loss.
        if (distill1 !== undefined) {
          const d = run.rows[0]["generator_loss.distill"];
          assert.ok(Math.abs(d - distill1) > 1e-3 * Math.abs(distill1), `${w}: distill ${d} = exponential's`);
        }
      });
    }
    await t.step("the paper's recipe (no regression on teacher pairs)", async () => {
      const cfg = await paperTiny();
      const run = await runCli(cfg, "paper", short);
      checkMetrics(run, 2, PAPER_KEYS, ["generator_loss.regression", "generator_loss.regression_px"]);
      assert.doesNotMatch(run.stdout, /teacher pairs/);
      const w = loadConfig(cfg, Deno.readTextFileSync(cfg)).config.stages.generator_loss.params.weights as Record<
        string,
        number
      >;
      for (const r of run.rows) {
        const want = w.a * r["generator_loss.adv"] + w.b * r["generator_loss.distill"];
        assert.ok(Math.abs(r["opt_g.loss"] - want) <= 1e-5 * Math.max(1, Math.abs(want)), `step ${r.step}: opt_g.loss`);
      }
      // Same seed and student as the full run: the regression changes the generator's step, not the first D step.
      if (cpuRun) assert.equal(run.rows[0]["opt_d.loss"], cpuRun.rows[0]["opt_d.loss"]);
    });
  },
});

Deno.test({
  name: "add_dmd (DMD's distribution matching for the distillation) on the tiny config: three phases, the fake trained",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const text = await Deno.readTextFile(`${ROOT}configs/add_dmd.yaml`);
    assert.match(text, /^extends: add\.yaml$/m, "add_dmd.yaml no longer extends add.yaml");
    const dir = await tmp("configs");
    const tinyUnet = loadConfig(TINY, Deno.readTextFileSync(TINY)).config.models.student.params;
    await Deno.writeTextFile(`${dir}/add_dmd_base.yaml`, text.replace(/^extends: add\.yaml$/m, `extends: ${TINY}`));
    const cfg = `${dir}/add_dmd_tiny.yaml`;
    await Deno.writeTextFile(
      cfg,
      `version: 1\nextends: add_dmd_base.yaml\nmodels:\n  fake: { params: ${JSON.stringify(tinyUnet)}, init: null }\n`,
    );
    const run = await runCli(cfg, "dmd", ["--steps", "2", "--set", "stages.ckpt.every=1"]);
    const keys = ALL_KEYS.filter((k) => k !== "generator_loss.distill")
      .concat(["generator_loss.dmd", "opt_fake.loss", "opt_fake.grad_norm"]);
    checkMetrics(run, 2, keys, ["generator_loss.distill"]);
    // Phases in the declared order of their optimizers: discriminator, generator, then the fake model.
    const phases = [...run.stdout.matchAll(/compiled phase "([\w+]+)"/g)].flatMap((m) => m[1].split("+"));
    assert.deepEqual(phases, ["opt_d", "opt_g", "opt_fake"]);
    const w = loadConfig(cfg, Deno.readTextFileSync(cfg)).config.stages.generator_loss.params.weights as Record<
      string,
      number
    >;
    for (const r of run.rows) {
      const want = w.a * r["generator_loss.adv"] + w.b * r["generator_loss.dmd"] +
        w.c * r["generator_loss.regression"] + w.d * r["generator_loss.regression_px"];
      assert.ok(Math.abs(r["opt_g.loss"] - want) <= 1e-5 * Math.max(1, Math.abs(want)), `step ${r.step}: opt_g.loss`);
    }
    await checkCheckpoints(run, cfg, [1, 2], ["disc", "fake", "student"]);
    const fake = async (s: number) =>
      decodeSafetensors(
        await Deno.readFile(`${run.out}/checkpoints/step-${String(s).padStart(8, "0")}/fake.safetensors`),
      )
        .tensors;
    const [f1, f2] = [await fake(1), await fake(2)];
    assert.ok(
      Object.keys(f1).some((k) => (f1[k].data as Float32Array).some((v, i) => v !== (f2[k].data as Float32Array)[i])),
      "the fake model did not change between steps 1 and 2",
    );
  },
});

Deno.test({
  name: "add_tiny resumed past a refresh of the pairs' targets: the same rows as an uninterrupted run",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    // Targets remade after step 1, checkpoint at step 2: the resume starts at step 3 and must read them back.
    const set = ["--set", "stages.pairs.params.refresh.at=[1]"];
    const whole = await runCli(TINY, "refresh-whole", set);
    assert.match(whole.stdout, /pairs: remade 8 targets after step 1 in /);
    const first = await runCli(TINY, "refresh-resumed", [...set, "--steps", "2"]);
    assert.match(first.stdout, /pairs: remade 8 targets after step 1 in /);
    const resumed = await runCli(TINY, "refresh-resumed", [...set, "--resume"]);
    assert.doesNotMatch(resumed.stdout, /remade 8 targets|warning/);
    assert.deepEqual(resumed.rows, whole.rows);
  },
});
