// deno task export and generate end to end: a tiny ADD run (configs/add_tiny.yaml, 2 steps) and the shipped teacher
// exported through the CLI, and the exported folders' images compared with the project's own sampler
// (models/diffusion/sample_grid.ts, what `deno task sample --sampler add` draws) for the same seed.
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { decode } from "fast-png";
import { createExecutor } from "../../engine/executors/auto.ts";
import { sampleGrid } from "../../models/diffusion/sample_grid.ts";
import { makeSchedule, studentTimesteps } from "../../models/diffusion/schedules.ts";
import { gridToPng } from "../../models/png_grid.ts";
import { loadUnetFolder } from "../../sample.ts";
import { checkManifest } from "../../ship/manifest.ts";
import { imageToPng, type ShipExecutor, ShippedGenerator } from "../../ship/generate_core.ts";
import { exportStudent } from "../../ship/export.ts";
import { encodeSafetensors } from "../../engine/safetensors.ts";
import { unet } from "../../models/unet.ts";
import { cli, expectCode, MAIN, ROOT, tmp } from "../helpers/cli_run.ts";
import { TINY_UNET } from "../helpers/tiny_unet.ts";
import { Rng } from "../../engine/rng.ts";

const EXPORT = `${ROOT}export.ts`, GENERATE = `${ROOT}generate.ts`;
const QUIET = ["report", "progress_eval", "preview", "plot"].flatMap((s) => ["--set", `stages.${s}=null`]);

let tinyRun: Promise<string> | null = null;
/** The tiny ADD run's folder, trained once per test process. */
function tiny(): Promise<string> {
  return tinyRun ??= (async () => {
    const out = `${await tmp("ship")}/tiny_run`;
    const r = await cli([`${ROOT}configs/add_tiny.yaml`, "--steps", "2", "--out", out, ...QUIET], MAIN);
    expectCode(r, 0, "the tiny run");
    return out;
  })();
}

async function exported(from: string, name: string, extra: string[] = []): Promise<string> {
  const out = `${await tmp("ship")}/dist/${name}`;
  expectCode(await cli([from, "--out", out, ...extra], EXPORT), 0, `export ${from}`);
  return out;
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

/** The exported folder's images against the project's sampler on the checkpoint, for steps × seeds; max |Δ| seen. */
async function compare(
  checkpoint: string,
  dist: string,
  executor: ShipExecutor,
  tol: number,
  cache?: string,
): Promise<number> {
  const f = await loadUnetFolder(checkpoint);
  const ex = await createExecutor("cpu"), g = await ShippedGenerator.load(pathToFileURL(dist), executor);
  let worst = 0;
  try {
    for (const steps of [1, 4]) {
      for (const seed of [0, 3]) {
        const want = (await sampleGrid(ex, f.u, f.weights, {
          prompts: ["red apple"],
          seeds: [seed],
          steps,
          guidance: 1,
          sampler: "add",
          schedule: f.schedule as never,
          prediction: f.prediction,
          text_encoder: f.textEncoder,
          cache,
        })).images[0];
        const got = await g.generate({ prompt: "red apple", steps, seed }), d = maxDiff(got, want);
        assert.ok(d <= tol, `${steps} steps, seed ${seed} on ${executor}: max |Δ| ${d} > ${tol}`);
        worst = Math.max(worst, d);
      }
    }
  } finally {
    await g.dispose();
    await ex.close();
  }
  return worst;
}

Deno.test({
  name: "export of a tiny ADD run: the files, a manifest from the run's config, the encoder copied, a model card",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const run = await tiny();
    // A report in the run folder, as a run's eval_report stage leaves it (the tiny run's is switched off): the shipped one.
    const report = await Deno.readTextFile(`${ROOT}docs/add_report.md`);
    await Deno.writeTextFile(`${run}/report.md`, report);
    const dist = await exported(run, "tiny");
    const names = [];
    for await (const e of Deno.readDir(dist)) names.push(e.name);
    assert.deepEqual(names.sort(), ["README.md", "manifest.json", "text_encoder", "unet.onnx"]);
    const m = checkManifest(JSON.parse(await Deno.readTextFile(`${dist}/manifest.json`)));
    assert.equal(m.name, "tiny");
    assert.equal(m.sampler.prediction, "v");
    for (const k of [1, 2, 3, 4]) assert.deepEqual(m.sampler.timesteps[k], Array.from(studentTimesteps(k, 1000)));
    const ab = makeSchedule({ kind: "cosine", T: 1000, zeroTerminalSnr: true }).alphasCumprod;
    assert.deepEqual(m.schedule.alphas_cumprod, Array.from(ab));
    assert.equal(m.source.step, 2);
    assert.match(String(m.source.weights), /step-00000002\/student\.ema\.safetensors$/);
    assert.deepEqual(m.unet.inputs, { x: [1, 3, 32, 32], t: [1], tokens: [1, 32, 64], pooled: [1, 64] });
    for (const f of ["tokenizer.json", "config.json", "onnx/text_model.onnx"]) {
      assert.deepEqual(
        await Deno.readFile(`${dist}/text_encoder/${f}`),
        await Deno.readFile(`${ROOT}models/text_encoder/${f}`),
      );
    }
    const card = await Deno.readTextFile(`${dist}/README.md`);
    for (const want of [/step 2 of run `add_tiny`/, /Noto Emoji/, /1: 999; 2: 999, 499/]) assert.match(card, want);
    for (const row of report.split("\n").filter((l) => l.startsWith("| student"))) assert.ok(card.includes(row), row);
    // A second export onto the first replaces it whole.
    expectCode(await cli([run, "--out", dist, "--fp16", "--no-ema"], EXPORT), 0, "re-export");
    const again = checkManifest(JSON.parse(await Deno.readTextFile(`${dist}/manifest.json`)));
    assert.equal(again.unet.weights, "fp16");
    assert.match(String(again.source.weights), /step-00000002\/student\.safetensors$/);
  },
});

Deno.test({
  name: "generate from the tiny run's export equals the project's ADD sampler, 1 and 4 steps, on cpu, wasm and webgpu",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const run = await tiny(), dist = await exported(run, "tiny_cmp");
    const ckpt = `${run}/checkpoints/step-00000002`;
    const gpu = !!(globalThis.navigator as { gpu?: unknown } | undefined)?.gpu;
    if (!gpu) console.log("export_test: navigator.gpu is absent in this Deno, so webgpu is not compared");
    for (const executor of ["cpu", "wasm", ...(gpu ? ["webgpu"] as const : [])] as const) {
      await compare(ckpt, dist, executor, 1e-5);
    }
  },
});

Deno.test({
  name: "the shipped teacher exported: generate equals the project's sampler to 1e-5; fp16 weights stay close",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const teacher = `${ROOT}models/teacher`;
    const worst = await compare(teacher, await exported(teacher, "teacher"), "cpu", 1e-5);
    const half = await compare(teacher, await exported(teacher, "teacher16", ["--fp16"]), "cpu", 0.01);
    console.log(`teacher export: max |Δ| ${worst.toExponential(2)} (fp32), ${half.toExponential(2)} (fp16 weights)`);
  },
});

Deno.test({
  name: "the generate CLI writes the image generate_core draws, as the project's grid writer would draw it",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dist = await exported(`${ROOT}models/teacher`, "teacher_cli"), png = `${await tmp("ship")}/apple.png`;
    const r = await cli(
      ["--model", dist, "--prompt", "red apple", "--steps", "2", "--seed", "7", "--out", png],
      GENERATE,
    );
    expectCode(r, 0, "generate");
    const g = await ShippedGenerator.load(pathToFileURL(dist));
    const img = await g.generate({ prompt: "red apple", steps: 2, seed: 7 });
    await g.dispose();
    const got = decode(await Deno.readFile(png)), want = decode(gridToPng([img], 3, 32, { pad: 0, scale: 1 }));
    assert.equal(got.width, 32);
    assert.deepEqual(got.data, want.data);
    assert.deepEqual(decode(imageToPng(img, 3, 32, 2)).data, decode(gridToPng([img], 3, 32, { pad: 0 })).data);
  },
});

Deno.test({
  name:
    "a UNet on USE lite (a fixed batch of 16, AutoModel) exports with its encoder and reproduces the project's sampler",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = await tmp("ship_use"), ckpt = `${root}/ckpt`, cache = `${root}/cache`;
    const params = { ...TINY_UNET, context_dim: 512, pooled_dim: 512 };
    const u = unet.params.parse(params), rng = new Rng(8), w = unet.init(u, rng.fold("init"));
    // Perturbed everywhere: the initialiser zeroes the output layers, which would make every image the same.
    for (const [k, v] of Object.entries(w)) rng.fold(k).normal(v.length).forEach((z, i) => (v[i] += 0.1 * z));
    await Deno.mkdir(ckpt);
    const tensors = Object.fromEntries(Object.entries(unet.shapes(u)).map(([k, shape]) => [k, { data: w[k], shape }]));
    await Deno.writeFile(`${ckpt}/net.safetensors`, encodeSafetensors(tensors));
    const schedule = { kind: "cosine", T: 1000, zeroTerminalSnr: true };
    await Deno.writeTextFile(
      `${ckpt}/config.yaml`,
      JSON.stringify({
        version: 1,
        run: { cache },
        models: { net: { kind: "unet", params } },
        data: { emoji: { kind: "emoji", params: { artists: ["noto", "openmoji"] } } },
        stages: {
          text: { kind: "text_encode", params: { dataset: "emoji", model: "use-lite" } },
          noise: { kind: "diffusion_noise", params: { schedule, prediction: "v" } },
        },
      }),
    );
    const r = await exportStudent(ckpt, `${root}/dist/use`);
    assert.deepEqual(r.manifest.text_encoder, {
      folder: "text_encoder",
      onnx: "onnx/model.onnx",
      class: "auto",
      length: 32,
      width: 512,
      projection: 512,
      batch: 16,
    });
    assert.match(await Deno.readTextFile(`${r.out}/README.md`), /Universal Sentence Encoder lite[^]*CC BY-SA 4\.0/);
    await compare(ckpt, r.out, "cpu", 1e-5, cache);
  },
});
