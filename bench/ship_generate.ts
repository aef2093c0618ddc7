/**
 * `deno task bench:ship` (and the end of `deno task bench`): ms per 1-step image at batch 1 from an exported folder
 * (ship/generate_core.ts, text encoding included, as `deno task generate` times it) on cpu and wasm, and in the web
 * page in headless Chromium on WASM, against the teacher's 50 steps on the same executor in the same run.
 *
 * The exported model is the shipped teacher (models/teacher): an ADD student has the teacher's network, so one of its
 * steps costs one of these. The teacher's 50 steps in Deno are DDIM (η = 0, timesteps ⌊(T−1)(1 − i/50)⌉) over the
 * export's own sessions; the page has only the export's sampler, so in the browser they are that sampler given the
 * same 50 timesteps (a copy of the export whose manifest lists them): 50 UNet evaluations either way, the updates
 * between them a few thousand multiply-adds.
 *   RESULT ship_generate executor=<cpu|wasm|browser-wasm> ms=<median> teacher_ms=<median> ratio=<teacher_ms/ms>
 *
 * Flags: --executors cpu,wasm (browser-wasm runs with wasm, where Chromium is installed)  --repeats N
 */
import { pathToFileURL } from "node:url";
import { exportStudent } from "../ship/export.ts";
import { type ShipExecutor, ShippedGenerator } from "../ship/generate_core.ts";
import { findChromium } from "../tests/helpers/cdp.ts";

const args = new Map<string, string>();
for (let i = 0; i < Deno.args.length; i += 2) args.set(Deno.args[i].replace(/^--/, ""), Deno.args[i + 1]);
const executors = (args.get("executors") ?? "cpu,wasm").split(",");
const repeats = Number(args.get("repeats") ?? 10),
  TEACHER_STEPS = 50,
  TEACHER_REPEATS = 3,
  WARMUP = 3,
  PROMPT = "red apple";
const root = new URL("../", import.meta.url).pathname;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function ddimTimesteps(T: number): number[] {
  return Array.from({ length: TEACHER_STEPS }, (_, i) => Math.round((T - 1) * (1 - i / TEACHER_STEPS)));
}

/** The teacher's 50 DDIM steps (η = 0) on the generator's own sessions; the image, so the work cannot be skipped. */
async function teacherDdim(g: ShippedGenerator, seed: number): Promise<Float64Array> {
  const m = g.manifest, ab = m.schedule.alphas_cumprod, n = m.image.channels * m.image.size ** 2;
  const text = await g.encode(PROMPT), ts = ddimTimesteps(m.schedule.T);
  let x = Float64Array.from({ length: n }, (_, i) => Math.sin(seed * 7919 + i * 104729)); // any fixed start
  for (let k = 0; k < ts.length; k++) {
    const a = Math.sqrt(ab[ts[k]]), s = Math.sqrt(1 - ab[ts[k]]);
    const out = await g.unet(Float32Array.from(x), ts[k], text);
    const next = k + 1 < ts.length ? ab[ts[k + 1]] : 1, a2 = Math.sqrt(next), s2 = Math.sqrt(1 - next);
    const x0 = new Float64Array(n), eps = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const o = out[i], pred = m.sampler.prediction;
      x0[i] = pred === "v" ? a * x[i] - s * o : pred === "x0" ? o : (x[i] - s * o) / a;
      eps[i] = pred === "v" ? s * x[i] + a * o : pred === "x0" ? (x[i] - a * o) / s : o;
    }
    x = x0.map((v, i) => a2 * v + s2 * eps[i]);
  }
  return x;
}

async function timeIt(n: number, f: (i: number) => Promise<unknown>): Promise<number[]> {
  // Warm-up: the first runs of a session build its kernels, and V8 tiers WASM up in the background over several.
  for (let i = 0; i < WARMUP; i++) await f(-1 - i);
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await f(i);
    ms.push(performance.now() - t0);
  }
  return ms;
}

function result(executor: string, ms: number, teacherMs: number): void {
  console.log(
    `RESULT ship_generate executor=${executor} ms=${ms.toFixed(1)} teacher_ms=${teacherMs.toFixed(1)} ` +
      `ratio=${(teacherMs / ms).toFixed(1)}`,
  );
}

async function inDeno(dist: string, executor: ShipExecutor): Promise<void> {
  const g = await ShippedGenerator.load(pathToFileURL(dist), executor);
  try {
    const one = median(await timeIt(repeats, (i) => g.generate({ prompt: PROMPT, steps: 1, seed: i + WARMUP + 1 })));
    const teacher = median(await timeIt(TEACHER_REPEATS, (i) => teacherDdim(g, i + WARMUP + 1)));
    result(executor, one, teacher);
  } finally {
    await g.dispose();
  }
}

/** The page's own times (tests/web/page_drive.ts), the first draws of each page dropped as warm-up. */
async function pageTimes(dist: string, tmp: string, steps: number, n: number): Promise<number[]> {
  const out = `${tmp}/page-${steps}.json`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${root}deno.json`, "--allow-net=127.0.0.1", "--allow-read", `--allow-write=${tmp}`]
      .concat(["--allow-env", "--allow-run", "--allow-sys", `${root}tests/web/page_drive.ts`])
      .concat([dist, PROMPT, "1", String(steps), out, String(n + WARMUP)]),
    env: { TMPDIR: tmp },
    stdout: "inherit",
    stderr: "piped",
  }).output();
  if (r.code !== 0) throw new Error(`browser: ${new TextDecoder().decode(r.stderr).trim().split("\n").pop()}`);
  const shown = JSON.parse(await Deno.readTextFile(out));
  if (shown.state !== "done") throw new Error(`browser: the page showed "${shown.error}"`);
  return (shown.ms as number[]).slice(WARMUP);
}

async function inBrowser(dist: string, tmp: string): Promise<void> {
  const teacherDist = `${tmp}/teacher50`;
  await Deno.mkdir(teacherDist);
  for await (const e of Deno.readDir(dist)) {
    if (e.name !== "manifest.json") await Deno.symlink(`${dist}/${e.name}`, `${teacherDist}/${e.name}`);
  }
  const m = JSON.parse(await Deno.readTextFile(`${dist}/manifest.json`));
  m.sampler.timesteps[String(TEACHER_STEPS)] = ddimTimesteps(m.schedule.T);
  await Deno.writeTextFile(`${teacherDist}/manifest.json`, JSON.stringify(m));
  const one = median(await pageTimes(dist, tmp, 1, repeats));
  const teacher = median(await pageTimes(teacherDist, tmp, TEACHER_STEPS, TEACHER_REPEATS));
  result("browser-wasm", one, teacher);
}

const tmp = await Deno.makeTempDir({ prefix: "bench_ship-" });
try {
  const dist = `${tmp}/teacher`;
  await exportStudent(`${root}models/teacher`, dist);
  for (const e of executors.filter((e) => e === "cpu" || e === "wasm")) await inDeno(dist, e as ShipExecutor);
  if (executors.includes("wasm")) {
    if (await findChromium()) await inBrowser(dist, tmp);
    else console.log("ship_generate: chromium not found (apt-get install chromium): no browser-wasm figure");
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
