/**
 * `deno task bench:sd15`: Stable Diffusion 1.5 at 256×256 pixels (32×32 latents), batch 1, on the cpu executor, with
 * random weights (no hub is reachable here): the real SD 1.5 UNet configuration (859,520,964 parameters,
 * bench/sd15_config.ts) and, in part (c), its VAE.
 *
 * (a) The UNet's forward, forward + backward over every weight (the gradients reduced on the executor to one sum of
 *     squares, so that all 859.5 M are computed without copying 3.4 GB back), and forward + backward over rank-4
 *     LoRA adapters on the attention projections: graph node counts, lowering and session-creation time, the median
 *     step of a few runs after a warm-up, and the process's peak RSS.
 * (b) The PyTorch peer in the same run: the real diffusers v0.31.0 UNet2DConditionModel from .cache/diffusers_ref
 *     (bench/sd15_torch.py, torch.set_num_threads(2), diffusers' own random initialisation, the same shapes);
 *     skipped with a message when diffusers or torch is absent.
 * (c) A whole ADD training step through the real pipeline (bench/sd15_add.ts): a run of two steps, timed by the run
 *     itself (the first step also encodes the dataset through the VAE and makes onnxruntime's first allocations).
 *
 * Peak memory is the kernel's high-water RSS (VmHWM of /proc/self/status, reset through /proc/self/clear_refs before
 * each part; Deno grants /proc/self only with all permissions, hence the task's -A). onnxruntime runs in this
 * process, so its arena and every intermediate tensor are in it, and so are the executor's copies of the weights
 * (each host array is dropped once uploaded, so the 3.4 GB are held once).
 *
 *   RESULT sd15_unet_fwd executor=cpu ms=… torch_ms=… ratio=…
 *   RESULT sd15_unet_fwd_bwd executor=cpu ms=… torch_ms=… ratio=…   (all weights, as the peer's loss.backward())
 *   RESULT sd15_unet_fwd_bwd_lora executor=cpu ms=…
 *   PEAK sd15_… gb=… torch_gb=…
 *
 * Flags: --runs N (default 3)  --warmup N (default 1)  --side N (latent side, default 32)
 * --parts unet,torch,add (default all three)  --no-full (skip the all-weights backward)
 *
 * @module
 */
import { createExecutor } from "../engine/executors/auto.ts";
import type { Buffer, Executor } from "../engine/executors/executor.ts";
import { grad } from "../engine/grad.ts";
import type { Graph } from "../engine/ir.ts";
import { add, mul } from "../engine/math.ts";
import { mse } from "../engine/nn.ts";
import { lowerToOnnx } from "../engine/onnx/lower.ts";
import { sum } from "../engine/ops.ts";
import { Rng } from "../engine/rng.ts";
import { type Tensor, Trace } from "../engine/tensor.ts";
import { unet2dConditionForward, unetShapes } from "../models/diffusers/unet2d_condition.ts";
import { type UNetConfig, unetConfig } from "../models/diffusers/unet2d_condition_config.ts";
import { adapterShapes, initAdapters, type LoraSpec, loraTargets, mergeTraced } from "../models/lora.ts";
import { contractionFlops } from "./flops.ts";
import { SD15_UNET_CONFIG, SD15_UNET_PARAMS } from "./sd15_config.ts";
import { memory, randomWeights } from "./sd15_host.ts";
import { runPeer } from "./torch_peer.ts";

const args = Deno.args;
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const RUNS = Number(flag("runs", "3")), WARMUP = Number(flag("warmup", "1")), SIDE = Number(flag("side", "32"));
const PARTS = new Set(flag("parts", "unet,torch,add").split(","));
const TOKENS = 77;
const root = new URL("../", import.meta.url).pathname;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const gb = (bytes: number) => (bytes / 1e9).toFixed(2);

/** Resets this process's VmHWM to its current RSS (Linux ≥ 4.0), so each part's peak is its own. */
function resetPeak(): void {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
  } catch {
    console.log("  (could not reset the peak RSS: the peaks below include the earlier parts')");
  }
}

type Variant = "fwd" | "fwd_bwd" | "fwd_bwd_lora";

/** The LoRA of part (a) and of configs like add_diffusers.yaml: rank 4 on every attention projection. */
export function attentionLora(shapes: Record<string, number[]>): LoraSpec {
  return { rank: 4, alpha: 4, targets: loraTargets(shapes, [/attn[12]\.to_(q|k|v|out\.0)\.weight$/]) };
}

/** One traced UNet graph; weights (and adapters) are graph inputs under their state-dict keys. */
function unetGraph(cfg: UNetConfig, variant: Variant, shapes: Record<string, number[]>, lora: LoraSpec): Graph {
  const tr = new Trace(), c = cfg.in_channels;
  const inputs = (s: Record<string, number[]>) =>
    Object.fromEntries(Object.entries(s).map(([k, v]) => [k, tr.input(k, v)]));
  const p = inputs(shapes);
  const x = tr.input("sample", [1, c, SIDE, SIDE]), t = tr.input("timestep", [1]);
  const ctx = tr.input("ctx", [1, TOKENS, cfg.cross_attention_dim]);
  if (variant === "fwd") return tr.build({ out: unet2dConditionForward(cfg, p, x, t, ctx) });
  const target = tr.input("target", [1, cfg.out_channels, SIDE, SIDE]);
  if (variant === "fwd_bwd") {
    const loss = mse(unet2dConditionForward(cfg, p, x, t, ctx), target);
    // One scalar out of every gradient: all 859.5 M must be computed, none is copied back to the host.
    let sq: Tensor | null = null;
    for (const g of Object.values(grad(loss, p))) sq = sq ? add(sq, sum(mul(g, g))) : sum(mul(g, g));
    return tr.build({ loss, grad_sq: sq! });
  }
  const a = inputs(adapterShapes(lora));
  const loss = mse(unet2dConditionForward(cfg, mergeTraced(p, a, lora), x, t, ctx), target);
  const g = grad(loss, a);
  return tr.build({ loss, ...Object.fromEntries(Object.entries(g).map(([k, v]) => [`grad.${k}`, v])) });
}

interface Measured {
  nodes: number;
  gflop: number;
  traceMs: number;
  lowerMs: number;
  onnxMb: number;
  sessionMs: number;
  ms: number;
  times: number[];
  peak: number;
}

/** Compiles one variant on `ex` and times it over the uploaded buffers; the session is released afterwards. */
async function measure(
  ex: Executor,
  build: () => Graph,
  bufs: Record<string, Buffer>,
): Promise<Measured> {
  resetPeak();
  let t0 = performance.now();
  const graph = build();
  const traceMs = performance.now() - t0;
  t0 = performance.now();
  const onnx = lowerToOnnx(graph, "cpu");
  const lowerMs = performance.now() - t0;
  t0 = performance.now();
  const prep = await ex.prepare(graph);
  // prepare() lowers again before it creates the session: what is left is onnxruntime's own compile.
  const sessionMs = performance.now() - t0 - lowerMs;
  const times: number[] = [];
  try {
    const ins = Object.fromEntries(prep.inputNames.map((n) => [n, bufs[n]]));
    for (let i = 0; i < WARMUP + RUNS; i++) {
      const t = performance.now();
      const outs = await prep.run(ins);
      for (const b of Object.values(outs)) await ex.read(b);
      if (i >= WARMUP) times.push(performance.now() - t);
      for (const b of Object.values(outs)) ex.dispose(b);
    }
  } finally {
    await prep.dispose();
  }
  const nodes = graph.nodes.length, gflop = contractionFlops(graph) / 1e9;
  return { nodes, gflop, traceMs, lowerMs, onnxMb: onnx.length / 1e6, sessionMs, ms: median(times), times, peak: 0 };
}

/** Part (a): the three variants on one cpu executor, the weights uploaded once. */
async function ourUnet(cfg: UNetConfig, variants: Variant[]): Promise<Record<string, Measured>> {
  const shapes = unetShapes(cfg), lora = attentionLora(shapes);
  let t0 = performance.now();
  let weights: Record<string, Float32Array> | null = randomWeights(shapes, 0);
  const n = Object.values(weights).reduce((a, w) => a + w.length, 0);
  console.log(
    `weights: ${n.toLocaleString("en")} random parameters in ${((performance.now() - t0) / 1e3).toFixed(1)} s`,
  );
  if (n !== SD15_UNET_PARAMS) throw new Error(`${n} parameters, SD 1.5's UNet has ${SD15_UNET_PARAMS}`);
  const rng = new Rng(1);
  const host: Record<string, Float32Array> = {
    ...initAdapters(lora, rng.fold("lora")),
    sample: rng.fold("x").normal(cfg.in_channels * SIDE * SIDE),
    timestep: Float32Array.of(999),
    ctx: rng.fold("ctx").normal(TOKENS * cfg.cross_attention_dim),
    target: rng.fold("target").normal(cfg.out_channels * SIDE * SIDE),
  };
  const adapters = Object.values(adapterShapes(lora)).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
  console.log(`LoRA: rank 4 on ${Object.keys(lora.targets).length} attention projections, ${adapters} parameters`);
  const ex = await createExecutor("cpu");
  const shapeOf: Record<string, number[]> = {
    ...adapterShapes(lora),
    sample: [1, cfg.in_channels, SIDE, SIDE],
    timestep: [1],
    ctx: [1, TOKENS, cfg.cross_attention_dim],
    target: [1, cfg.out_channels, SIDE, SIDE],
  };
  const bufs: Record<string, Buffer> = {};
  for (const [k, a] of Object.entries(host)) bufs[k] = ex.upload(a, shapeOf[k], "f32");
  // upload() copies: each host weight is dropped as soon as it is uploaded, so the weights are held once.
  for (const k of Object.keys(weights)) {
    bufs[k] = ex.upload(weights[k], shapes[k], "f32");
    delete weights[k];
  }
  weights = null;
  (globalThis as { gc?: () => void }).gc?.();
  const out: Record<string, Measured> = {};
  try {
    for (const v of variants) {
      t0 = performance.now();
      const before = memory().rss;
      const m = await measure(ex, () => unetGraph(cfg, v, shapes, lora), bufs);
      m.peak = memory().hwm;
      out[v] = m;
      console.log(
        `${v}: ${m.nodes} IR nodes (${m.gflop.toFixed(1)} GFLOP of contractions), trace ${m.traceMs.toFixed(0)} ms, ` +
          `lower ${m.lowerMs.toFixed(0)} ms (${m.onnxMb.toFixed(1)} MB of ONNX), session ${
            (m.sessionMs / 1e3).toFixed(1)
          } s; steps ${m.times.map((t) => t.toFixed(0)).join(", ")} ms; RSS before ${gb(before)} GB, peak ${
            gb(m.peak)
          } GB`,
      );
    }
  } finally {
    for (const b of Object.values(bufs)) ex.dispose(b);
    await ex.close();
  }
  return out;
}

interface TorchReport {
  ms: number;
  fwd_ms: number;
  fwd_bwd_ms: number;
  fwd_peak_gb: number;
  peak_gb: number;
  params: number;
  torch: string;
  setup: string;
}

/** Part (b): the diffusers peer under each BLAS set-up present (netlib's reference BLAS left out: far slower). */
async function torchPeer(cfg: Record<string, unknown>): Promise<TorchReport | null> {
  const src = `${root}.cache/diffusers_ref`;
  try {
    await Deno.stat(`${src}/diffusers/src/diffusers`);
  } catch {
    console.log(`PyTorch peer: skipped, no diffusers at ${src} (tests/fixtures/diffusers/setup_ref.sh unpacks it)`);
    return null;
  }
  const cfgFile = await Deno.makeTempFile({ prefix: "sd15_unet_", suffix: ".json" });
  await Deno.writeTextFile(cfgFile, JSON.stringify(cfg));
  const env = { PYTHONPATH: `${src}/diffusers/src:${src}/huggingface_hub/src` };
  const setups: { name: string; env: Record<string, string> }[] = [
    { name: "as installed", env: {} },
    {
      name: "OpenBLAS, 1 thread per torch thread",
      env: { LD_LIBRARY_PATH: "/usr/lib/x86_64-linux-gnu/openblas-pthread", OPENBLAS_NUM_THREADS: "1" },
    },
  ];
  let best: TorchReport | null = null;
  try {
    for (const s of setups) {
      const script = `${root}bench/sd15_torch.py`;
      const r = await runPeer(script, [cfgFile, String(RUNS), String(WARMUP), String(SIDE)], { ...env, ...s.env });
      if (!r) continue;
      const t = { ...r, setup: s.name } as unknown as TorchReport;
      console.log(
        `PyTorch ${t.torch} + diffusers (${s.name}, ${t.params.toLocaleString("en")} parameters): forward ${
          t.fwd_ms.toFixed(0)
        } ms, forward + backward ${t.fwd_bwd_ms.toFixed(0)} ms; peak RSS ${t.fwd_peak_gb.toFixed(2)} GB after the ` +
          `forwards, ${t.peak_gb.toFixed(2)} GB after the backwards`,
      );
      if (!best || t.fwd_bwd_ms < best.fwd_bwd_ms) best = t;
    }
  } finally {
    await Deno.remove(cfgFile);
  }
  if (!best) console.log("PyTorch peer: skipped, python3 with torch and diffusers' dependencies did not run");
  return best;
}

function results(ours: Record<string, Measured>, torch: TorchReport | null): string[] {
  const lines: string[] = [];
  const line = (name: string, m: Measured | undefined, t: number | undefined, tPeak: number | undefined) => {
    if (!m) return;
    const tm = t ?? NaN;
    lines.push(
      `RESULT ${name} executor=cpu ms=${m.ms.toFixed(0)} torch_ms=${tm.toFixed(0)} ratio=${(m.ms / tm).toFixed(3)}`,
    );
    lines.push(`PEAK ${name} gb=${gb(m.peak)} torch_gb=${(tPeak ?? NaN).toFixed(2)}`);
  };
  line("sd15_unet_fwd", ours.fwd, torch?.fwd_ms, torch?.fwd_peak_gb);
  line("sd15_unet_fwd_bwd", ours.fwd_bwd, torch?.fwd_bwd_ms, torch?.peak_gb);
  line("sd15_unet_fwd_bwd_lora", ours.fwd_bwd_lora, undefined, undefined);
  return lines;
}

if (import.meta.main) {
  console.log(`SD 1.5 at ${8 * SIDE}×${8 * SIDE} pixels (${SIDE}×${SIDE} latents), batch 1, ${TOKENS} tokens`);
  const cfg = unetConfig(SD15_UNET_CONFIG);
  const torch = PARTS.has("torch") ? await torchPeer(SD15_UNET_CONFIG) : null;
  const variants: Variant[] = args.includes("--no-full") ? ["fwd", "fwd_bwd_lora"] : ["fwd", "fwd_bwd", "fwd_bwd_lora"];
  const ours = PARTS.has("unet") ? await ourUnet(cfg, variants) : {};
  const lines = results(ours, torch);
  if (PARTS.has("add")) {
    // The big host arrays of part (a) are garbage now; collect them before the pipeline's process needs the memory.
    (globalThis as { gc?: () => void }).gc?.();
    const { addStep } = await import("./sd15_add.ts");
    lines.push(...await addStep(1, WARMUP));
  }
  for (const l of lines) console.log(l);
}
