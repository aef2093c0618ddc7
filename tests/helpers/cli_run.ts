// The CLI in subprocesses for the run-loop tests: a temporary root the subprocesses may write to, commands, live
// output, and readers of what a run leaves (metrics rows, checkpoints).
import assert from "node:assert/strict";
import { parse } from "yaml";
import { decodeSafetensors } from "../../engine/safetensors.ts";

export const ROOT = new URL("../../", import.meta.url).pathname;
export const MAIN = `${ROOT}main.ts`;
export const CUSTOM = `${ROOT}configs/custom/my_stages.ts`;
export const FIT = `${ROOT}configs/custom/fit.yaml`;
/** What a checkpoint folder of a one-model run with an EMA holds, sorted. */
export const CHECKPOINT_FILES = "COMPLETE config.yaml net.ema.safetensors net.safetensors state.json state.safetensors"
  .split(
    " ",
  );

let tmpRoot: string | null = null;
// Removed when the test process ends, whichever tests ran (--filter included).
globalThis.addEventListener("unload", () => {
  if (tmpRoot) Deno.removeSync(tmpRoot, { recursive: true });
});
/** A fresh folder under one temporary root that the subprocesses may write to (and nothing else). */
export async function tmp(name: string): Promise<string> {
  tmpRoot ??= await Deno.makeTempDir({ dir: "/tmp", prefix: "pipeline_run_test-" });
  const d = `${tmpRoot}/${name}`;
  await Deno.mkdir(d, { recursive: true });
  return d;
}

/**
 * `env` is added to this process's environment (ADD_PACK_LIMIT for a run under a small buffer limit,
 * ADD_CONSTANT_WEIGHTS); these two set in this process's own environment are not passed on, so that a run meant
 * unsplit is unsplit and one meant with the executor's own constant weights has them.
 */
export function command(script: string, args: string[], env: Record<string, string> = {}): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${ROOT}deno.json`, "--allow-read", `--allow-write=${tmpRoot}`, "--allow-env"]
      .concat(["--allow-ffi", "--allow-sys", script, ...args]),
    cwd: ROOT,
    env: { NO_COLOR: "1", ADD_PACK_LIMIT: "", ADD_CONSTANT_WEIGHTS: "", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

export interface Result {
  code: number;
  signal?: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI (`main.ts` or a user module) to the end. */
export async function cli(args: string[], script = MAIN, env: Record<string, string> = {}): Promise<Result> {
  const r = await command(script, args, env).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** A running CLI whose stdout can be waited on line by line. */
export class Live {
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

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function expectCode(r: Result, code: number, what: string) {
  assert.equal(r.code, code, `${what}: exit ${r.code}, expected ${code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
}

/** metrics.jsonl rows. */
export async function rows(out: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(`${out}/metrics.jsonl`);
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** Checks that a checkpoint folder is complete and loadable; returns its decoded files. */
export async function loadCheckpoint(dir: string) {
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
export function toyYaml(
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

export async function writeConfig(dir: string, name: string, text: string): Promise<string> {
  const f = `${dir}/${name}`;
  await Deno.writeTextFile(f, text);
  return f;
}

/** Asserts two metrics.jsonl row lists are identical, every number exactly equal. */
export function assertSameRows(a: Record<string, number>[], b: Record<string, number>[], what: string) {
  assert.equal(a.length, b.length, `${what}: ${a.length} rows vs ${b.length}`);
  for (let i = 0; i < a.length; i++) {
    assert.deepEqual(Object.keys(a[i]), Object.keys(b[i]), `${what}: row ${i} keys`);
    for (const k of Object.keys(a[i])) {
      assert.ok(Object.is(a[i][k], b[i][k]), `${what}: step ${a[i].step} ${k}: ${a[i][k]} vs ${b[i][k]}`);
    }
  }
}

export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = [await Deno.readFile(a), await Deno.readFile(b)];
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
