// Checkpoints and what a run leaves, through the CLI in subprocesses: the last K checkpoints with weights, EMA, state
// and the resolved config; metrics.jsonl and its plot; an optimizer on its own cadence; the CLI's guards; atomic
// checkpoint writes; the progress display.
import assert from "node:assert/strict";
import { latestCheckpoint, listCheckpoints, writeCheckpoint } from "../../pipeline/checkpoint.ts";
import { fmtValue, Progress } from "../../pipeline/progress.ts";
import { plotSvg } from "../../stages/metrics.ts";
import {
  CHECKPOINT_FILES,
  cli,
  expectCode,
  loadCheckpoint,
  rows,
  tmp,
  toyYaml,
  writeConfig,
} from "../helpers/cli_run.ts";

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
