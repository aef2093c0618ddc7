/// <reference lib="dom" />
/**
 * The page's module (web/index.html): loads an exported student folder with ship/generate_core.ts as it is, on
 * onnxruntime-web's WebGPU execution provider where `navigator.gpu` gives an adapter and on WASM otherwise, and draws
 * the prompt's image on the canvas in the chosen steps, with the time it took.
 *
 * The folder is `?model=<url>` (default `model/`, where `deno task serve --model` puts it); `?executor=wasm|webgpu`
 * forces an executor (the browser test compares WASM's pixels with `deno task generate`'s). The body's `data-state`
 * (`loading`, `ready`, `drawing`, `done`, `error`) lets a test wait without polling the text.
 *
 * @module
 */
import { imageToRgba, type ShipExecutor, ShippedGenerator } from "../ship/generate_core.ts";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function setState(state: string, status: string): void {
  document.body.dataset.state = state;
  $("status").textContent = status;
}

function showError(e: unknown): void {
  $("error").textContent = (e as Error)?.message?.split("\n")[0] ?? String(e);
  setState("error", "");
}

/** The forced executor, or WebGPU when the browser gives an adapter (requestAdapter may also resolve to null). */
async function pickExecutor(params: URLSearchParams): Promise<ShipExecutor> {
  const forced = params.get("executor");
  if (forced === "wasm" || forced === "webgpu") return forced;
  if (forced !== null) throw new Error(`?executor=${forced}: expected wasm or webgpu`);
  const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  try {
    return gpu && await gpu.requestAdapter() ? "webgpu" : "wasm";
  } catch {
    return "wasm";
  }
}

function draw(g: ShippedGenerator, img: Float32Array): void {
  const { channels, size } = g.manifest.image, canvas = $<HTMLCanvasElement>("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d")!;
  ctx.putImageData(new ImageData(imageToRgba(img, channels, size), size, size), 0, 0);
}

async function onDraw(g: ShippedGenerator): Promise<void> {
  const seed = Number($<HTMLInputElement>("seed").value), steps = Number($<HTMLSelectElement>("steps").value);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`seed ${$<HTMLInputElement>("seed").value}: expected an integer ≥ 0`);
  }
  $("error").textContent = "";
  $<HTMLButtonElement>("draw").disabled = true;
  setState("drawing", "Drawing…");
  try {
    const t0 = performance.now();
    const img = await g.generate({ prompt: $<HTMLInputElement>("prompt").value, steps, seed });
    const ms = performance.now() - t0;
    draw(g, img);
    $("time").textContent = `${steps} step${steps === 1 ? "" : "s"}, seed ${seed}: ${
      ms.toFixed(0)
    } ms on ${g.executor}`;
    $("time").dataset.ms = String(ms);
    setState("done", `${g.manifest.name} on ${g.executor}`);
  } finally {
    $<HTMLButtonElement>("draw").disabled = false;
  }
}

async function main(): Promise<void> {
  setState("loading", "Loading the model…");
  const params = new URLSearchParams(location.search);
  const executor = await pickExecutor(params);
  const model = new URL(params.get("model") ?? "model/", location.href);
  const g = await ShippedGenerator.load(model, executor);
  const steps = $<HTMLSelectElement>("steps");
  for (const n of Object.keys(g.manifest.sampler.timesteps).sort((a, b) => Number(a) - Number(b))) {
    steps.add(new Option(`${n} step${n === "1" ? "" : "s"}`, n, false, Number(n) === g.manifest.sampler.default_steps));
  }
  $<HTMLFormElement>("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    onDraw(g).catch(showError);
  });
  $<HTMLButtonElement>("draw").disabled = false;
  setState("ready", `${g.manifest.name} loaded on ${executor}`);
}

main().catch(showError);
