// Chunked packing through the CLI (issue 15): the toy regression run under ADD_PACK_LIMIT=256 splits each of its two
// 321-parameter MLPs (one trained with AdamW and an EMA, one frozen from an init file) into three buffers. Its losses,
// weights, EMA and AdamW moments are bit for bit those of the same run unsplit, on cpu and on webgpu, since AdamW is
// elementwise and a buffer boundary changes no arithmetic (a global-norm clip sums its norm in three parts, so there
// the runs agree to float rounding); its checkpoint holds the chunks under `<key>.0…2` (and no frozen model); it resumes
// exactly, split or not, and an unsplit checkpoint resumes split; a parameter over the limit is one line; and add_tiny
// with fused phases and its frozen MobileNetV2 in six buffers writes the unsplit run's checkpoints and previews.
import assert from "node:assert/strict";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { Rng } from "../../engine/rng.ts";
import { latestCheckpoint } from "../../pipeline/checkpoint.ts";
import {
  assertSameRows,
  cli,
  expectCode,
  loadCheckpoint,
  MAIN,
  ROOT,
  rows,
  sameBytes,
  tmp,
  toyYaml,
  writeConfig,
} from "../helpers/cli_run.ts";

/** 321 parameters: l0 (16 + 16), l1 (256 + 16), l2 (16 + 1); at 256 per buffer: [l0.w, l0.b], [l1.w], [l1.b, l2.*]. */
const SPLIT = { ADD_PACK_LIMIT: "256" };
const MLP = "{ in: 1, hidden: [16, 16], out: 1, activation: tanh }";
const SHAPES: Record<string, number[]> = {
  "l0.w": [16, 1],
  "l0.b": [16],
  "l1.w": [16, 16],
  "l1.b": [16],
  "l2.w": [1, 16],
  "l2.b": [1],
};

/** The toy run with a frozen MLP of the same size (from `frozen.safetensors`) as the regression target. */
async function config(dir: string, extra = ""): Promise<string> {
  const tensors = Object.fromEntries(
    Object.entries(SHAPES).map(([k, s], i) => [k, {
      data: new Rng(9).fold(i).normal(s.reduce((a, b) => a * b, 1)).map((v) => 0.5 * v),
      shape: s,
    }]),
  );
  await writeSafetensors(`${dir}/frozen.safetensors`, tensors);
  const stages = `
  shift: { kind: model, inputs: { x: batch.x }, params: { model: frozen } }
  loss: { kind: mse, inputs: { pred: predict.y, target: shift.y } }
  ema: { kind: ema, params: { model: net, decay: 0.9 } }
  ckpt: { kind: checkpoint, every: 5, params: { keep: 10 } }`;
  const yaml = toyYaml({ steps: 20, seed: 4 }, stages)
    .replace("models:\n", `models:\n  frozen: { kind: mlp, params: ${MLP}, init: frozen.safetensors }\n`)
    .replace("  loss: { kind: mse, inputs: { pred: predict.y, target: batch.y } }\n", "")
    .replace("lr: 0.01 }", `lr: 0.01${extra} }`);
  return await writeConfig(dir, "chunks.yaml", yaml);
}

const STORE = ["model.net", "ema.net", "opt.opt.net.m", "opt.opt.net.v"];
const checkpointAt = (out: string, step: number) => `${out}/checkpoints/step-${String(step).padStart(8, "0")}`;

Deno.test("ADD_PACK_LIMIT=256: three buffers per model, the unsplit run's losses and state bit for bit", async () => {
  const dir = await tmp("chunks");
  const cfg = await config(dir);
  expectCode(await cli([cfg, "--out", `${dir}/whole`]), 0, "unsplit");
  const r = await cli([cfg, "--out", `${dir}/split`], MAIN, SPLIT);
  expectCode(r, 0, "split");
  assertSameRows(await rows(`${dir}/whole`), await rows(`${dir}/split`), "metrics.jsonl");
  const [a, b] = [
    await loadCheckpoint(checkpointAt(`${dir}/whole`, 20)),
    await loadCheckpoint(checkpointAt(`${dir}/split`, 20)),
  ];
  assert.deepEqual(b.names, a.names);
  for (const f of ["net.safetensors", "net.ema.safetensors"]) {
    assert.ok(
      await sameBytes(`${checkpointAt(`${dir}/whole`, 20)}/${f}`, `${checkpointAt(`${dir}/split`, 20)}/${f}`),
      f,
    );
  }
  const [sa, sb] = [a.tensors["state.safetensors"].tensors, b.tensors["state.safetensors"].tensors];
  assert.deepEqual(Object.keys(sa).sort(), STORE.slice().sort());
  assert.deepEqual(Object.keys(sb).sort(), STORE.flatMap((k) => [0, 1, 2].map((i) => `${k}.${i}`)).sort());
  for (const k of STORE) {
    assert.deepEqual([0, 1, 2].map((i) => sb[`${k}.${i}`].shape[0]), [32, 256, 33], k);
    const joined = [0, 1, 2].flatMap((i) => [...(sb[`${k}.${i}`].data as Float32Array)]);
    assert.deepEqual(joined, [...(sa[k].data as Float32Array)], `${k}: split state is the unsplit state, cut`);
  }
});

Deno.test("a split checkpoint resumes split or unsplit, and an unsplit one split, each as the uninterrupted run", async () => {
  const dir = await tmp("chunks-resume");
  const cfg = await config(dir);
  const whole = `${dir}/whole`, split = `${dir}/split`;
  expectCode(await cli([cfg, "--out", whole]), 0, "unsplit, 20 steps");
  expectCode(await cli([cfg, "--out", split], MAIN, SPLIT), 0, "split, 20 steps");
  // [first half's limit, second half's limit, the uninterrupted run it must equal]
  const cases: [Record<string, string>, Record<string, string>, string][] = [
    [SPLIT, SPLIT, split],
    [SPLIT, {}, whole],
    [{}, SPLIT, split],
  ];
  for (const [i, [first, second, same]] of cases.entries()) {
    const out = `${dir}/case-${i}`;
    expectCode(await cli([cfg, "--out", out, "--steps", "10"], MAIN, first), 0, `case ${i}: 10 steps`);
    const r = await cli([cfg, "--out", out, "--resume"], MAIN, second);
    expectCode(r, 0, `case ${i}: resumed`);
    assert.doesNotMatch(r.stderr, /warning: ignoring/, `case ${i}: every saved buffer is read`);
    assertSameRows(await rows(same), await rows(out), `case ${i}: metrics.jsonl`);
    const [want, got] = [(await latestCheckpoint(same))!.dir, (await latestCheckpoint(out))!.dir];
    for (const f of ["net.safetensors", "net.ema.safetensors", "state.safetensors"]) {
      assert.ok(await sameBytes(`${want}/${f}`, `${got}/${f}`), `case ${i}: ${f} differs from the uninterrupted run`);
    }
  }
});

Deno.test("global-norm clipping over split buffers: the same run to float rounding (its norm sums three parts)", async () => {
  const dir = await tmp("chunks-clip");
  const cfg = await config(dir, ", clip_norm: 0.05");
  expectCode(await cli([cfg, "--out", `${dir}/whole`]), 0, "unsplit");
  expectCode(await cli([cfg, "--out", `${dir}/split`], MAIN, SPLIT), 0, "split");
  const [a, b] = [await rows(`${dir}/whole`), await rows(`${dir}/split`)];
  assert.equal(a.length, b.length);
  assert.ok(a.some((x) => x["opt.grad_norm"] > 0.05), "the clip never engaged");
  for (let i = 0; i < a.length; i++) {
    for (const k of ["opt.loss", "opt.grad_norm"]) {
      assert.ok(
        Math.abs(a[i][k] - b[i][k]) <= 1e-5 * Math.abs(a[i][k]),
        `step ${a[i].step} ${k}: ${a[i][k]} vs ${b[i][k]}`,
      );
    }
  }
});

Deno.test("a parameter over ADD_PACK_LIMIT stops the run before step 1 with one line naming it", async () => {
  const dir = await tmp("chunks-too-big");
  const cfg = await config(dir);
  const r = await cli([cfg, "--out", `${dir}/out`], MAIN, { ADD_PACK_LIMIT: "100" });
  expectCode(r, 1, "limit 100");
  // The last line: planning's warning that the toy's batch.y goes unused comes first.
  assert.equal(
    r.stderr.trim().split("\n").at(-1),
    'model "frozen" on the cpu executor: parameter "l1.w" [16,16] has 256 elements, over the limit of 100 elements ' +
      "per packed buffer; a parameter is never split",
  );
  const bad = await cli([cfg, "--out", `${dir}/bad`], MAIN, { ADD_PACK_LIMIT: "big" });
  expectCode(bad, 1, "a bad value");
  assert.equal(bad.stderr.trim().split("\n").at(-1), "ADD_PACK_LIMIT=big: expected an integer ≥ 1 (elements)");
});

Deno.test("add_tiny, fused, with its frozen MobileNetV2 split into 6 buffers: the unsplit run's checkpoints bit for bit", async () => {
  // 409,600 is the feature network's largest parameter: the student (57,419) and the discriminator (103,044) stay
  // whole, the 2.2 M features become six buffers read by both phases of the one fused graph.
  const tiny = `${ROOT}configs/add_tiny.yaml`;
  const off = ["report", "progress_eval", "plot"].flatMap((s) => ["--set", `stages.${s}=null`]);
  const sets = ["--set", "run.fuse_phases=true", ...off];
  const [a, b] = [await tmp("chunks-add-whole"), await tmp("chunks-add-split")];
  expectCode(await cli([tiny, "--out", a, ...sets]), 0, "add_tiny unsplit");
  expectCode(await cli([tiny, "--out", b, ...sets], MAIN, { ADD_PACK_LIMIT: "409600" }), 0, "add_tiny split");
  assertSameRows(await rows(a), await rows(b), "metrics.jsonl");
  for (const step of [2, 4]) {
    const [ca, cb] = [await loadCheckpoint(checkpointAt(a, step)), await loadCheckpoint(checkpointAt(b, step))];
    assert.deepEqual(cb.names, ca.names);
    for (const f of ca.names.filter((n) => n.endsWith(".safetensors"))) {
      assert.ok(
        await sameBytes(`${checkpointAt(a, step)}/${f}`, `${checkpointAt(b, step)}/${f}`),
        `step ${step}: ${f}`,
      );
    }
  }
  const samples = (o: string) => [...Deno.readDirSync(`${o}/samples`)].map((e) => e.name).sort();
  assert.deepEqual(samples(b), samples(a));
  // The images (each grid's JSON legend also holds its sampling time).
  for (const f of samples(a).filter((n) => n.endsWith(".png"))) {
    assert.ok(await sameBytes(`${a}/samples/${f}`, `${b}/samples/${f}`), f);
  }
});

Deno.test("on webgpu (llvmpipe here) too: split into three buffers, the unsplit run's losses and files bit for bit", async () => {
  const dir = await tmp("chunks-webgpu");
  const cfg = await config(dir);
  const sets = ["--set", "run.executor=webgpu", "--steps", "5"];
  expectCode(await cli([cfg, "--out", `${dir}/whole`, ...sets]), 0, "unsplit");
  expectCode(await cli([cfg, "--out", `${dir}/split`, ...sets], MAIN, SPLIT), 0, "split");
  assertSameRows(await rows(`${dir}/whole`), await rows(`${dir}/split`), "metrics.jsonl");
  const st = (await loadCheckpoint(checkpointAt(`${dir}/split`, 5))).tensors["state.safetensors"].tensors;
  assert.deepEqual(Object.keys(st).filter((k) => k.startsWith("model.")).sort(), [
    "model.net.0",
    "model.net.1",
    "model.net.2",
  ]);
  for (const f of ["net.safetensors", "net.ema.safetensors"]) {
    assert.ok(await sameBytes(`${checkpointAt(`${dir}/whole`, 5)}/${f}`, `${checkpointAt(`${dir}/split`, 5)}/${f}`), f);
  }
});

Deno.test("--dry-run counts the nodes of the split graph a run compiles, and names each split model", async () => {
  const dir = await tmp("chunks-dry-run");
  const cfg = await config(dir);
  const nodes = (s: string, re: RegExp) => Number(s.match(re)?.[1]);
  const dry = await cli([cfg, "--out", `${dir}/dry`, "--dry-run"], MAIN, SPLIT);
  expectCode(dry, 0, "dry run, split");
  for (const m of ["frozen", "net"]) {
    assert.match(
      dry.stdout,
      new RegExp(`^packing: model "${m}" \\(321 parameters\\) in 3 buffers of at most 256 `, "m"),
    );
  }
  const run = await cli([cfg, "--out", `${dir}/run`, "--steps", "1"], MAIN, SPLIT);
  expectCode(run, 0, "one step, split");
  const planned = nodes(dry.stdout, /compiled graph "opt" on cpu .*; (\d+) nodes$/m);
  assert.equal(planned, nodes(run.stderr + run.stdout, /compiled phase "opt": (\d+) nodes/), "planned vs compiled");
  const whole = await cli([cfg, "--out", `${dir}/dry-whole`, "--dry-run"]);
  expectCode(whole, 0, "dry run, unsplit");
  assert.doesNotMatch(whole.stdout, /^packing:/m);
  assert.notEqual(nodes(whole.stdout, /compiled graph "opt" on cpu .*; (\d+) nodes$/m), planned, "the split traced");
});

Deno.test("--dry-run on webgpu: a model over WebGPU's default buffer limits is said to split by the adapter's", async () => {
  const dir = await tmp("chunks-dry-run-webgpu");
  // 3 × 4,000² weights, 48 M parameters: over the 33,554,432 f32 of WebGPU's default 128 MiB binding.
  const cfg = await writeConfig(dir, "big.yaml", toyYaml({ hidden: [4000, 4000, 4000, 4000] }, ""));
  const r = await cli([cfg, "--out", `${dir}/out`, "--dry-run", "--executor", "webgpu"]);
  expectCode(r, 0, "dry run");
  assert.match(
    r.stdout,
    /^packing: model "net" \(48,024,001 parameters\) splits on webgpu .*\(at WebGPU's default limits: 2 buffers or more\)/m,
  );
  const cpu = await cli([cfg, "--out", `${dir}/out`, "--dry-run", "--executor", "cpu"]);
  expectCode(cpu, 0, "dry run on cpu");
  assert.doesNotMatch(cpu.stdout, /^packing:/m, "fits one cpu buffer");
});
