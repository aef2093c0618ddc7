/**
 * The cpu executor's own GEMM throughput (GFLOP/s): a 1024³ MatMul through the same onnxruntime-node session path,
 * median of `n` runs. With a step's contraction FLOPs it gives a floor on the step's time on this machine.
 *
 * @module
 */
import { createExecutor } from "../engine/executors/auto.ts";
import { matmul } from "../engine/ops.ts";
import { Rng } from "../engine/rng.ts";
import { Trace } from "../engine/tensor.ts";

/** GFLOP/s of a 1024³ matmul on the cpu executor, median of `n` runs after two warm-ups. */
export async function gemmGflops(n: number): Promise<number> {
  const d = 1024, tr = new Trace();
  const graph = tr.build({ c: matmul(tr.input("a", [d, d]), tr.input("b", [d, d])) });
  const ex = await createExecutor("cpu");
  try {
    const prep = await ex.prepare(graph);
    const rng = new Rng(1);
    const a = ex.upload(rng.normal(d * d), [d, d], "f32"), b = ex.upload(rng.normal(d * d), [d, d], "f32");
    const times: number[] = [];
    for (let i = 0; i < n + 2; i++) {
      const t0 = performance.now();
      const out = await prep.run({ a, b });
      if (i >= 2) times.push(performance.now() - t0);
      ex.dispose(out.c);
    }
    await prep.dispose();
    times.sort((x, y) => x - y);
    return (2 * d ** 3) / (times[Math.floor(times.length / 2)] / 1000) / 1e9;
  } finally {
    await ex.close();
  }
}
