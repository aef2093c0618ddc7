/**
 * `deno run -A bench/constant_weights.ts [--executor cpu]`: the convolutions of the default ADD run's frozen
 * networks (MobileNetV2's depthwise and pointwise convolutions, the teacher's 3×3) with their filters as graph inputs
 * (how a trained model's weights reach a graph) against the same filters as constants (how a frozen model's do since
 * `constantLimit`, engine/executors/executor.ts), and the same filters as a packed constant sliced into shape, as the
 * scheduler bakes a model. Each graph: up to six convolutions in a chain and one input gradient; median of 25 runs.
 *
 * One line per shape: `RESULT constant_weights case=<name> input_ms=… const_ms=… packed_ms=… speedup=<input/const>`.
 */
import { createExecutor } from "../engine/executors/auto.ts";
import type { ExecutorName } from "../engine/executors/executor.ts";
import { conv2d, conv2dGradInput, convAttrs, reshape, sliceAxis } from "../engine/ops.ts";
import { StepProgram } from "../engine/program.ts";
import { Rng } from "../engine/rng.ts";
import { Trace } from "../engine/tensor.ts";

const i = Deno.args.indexOf("--executor");
const executor = (i >= 0 ? Deno.args[i + 1] : "cpu") as ExecutorName;
/** [name, input, filter, groups] */
const CASES: [string, number[], number[], number][] = [
  ["depthwise-960@2", [16, 960, 2, 2], [960, 1, 3, 3], 960],
  ["depthwise-384@4", [16, 384, 4, 4], [384, 1, 3, 3], 384],
  ["depthwise-144@16", [16, 144, 16, 16], [144, 1, 3, 3], 144],
  ["conv3x3-64@16", [16, 64, 16, 16], [64, 64, 3, 3], 1],
  ["conv3x3-32@32", [16, 32, 32, 32], [32, 32, 3, 3], 1],
  ["conv3x3-64@8", [16, 64, 8, 8], [64, 64, 3, 3], 1],
  ["pointwise-160-960@2", [16, 160, 2, 2], [960, 160, 1, 1], 1],
];
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

async function time(ex: Awaited<ReturnType<typeof createExecutor>>, c: (typeof CASES)[number], mode: string) {
  const [name, xs, ws, groups] = c, rng = new Rng(1).fold(name);
  const t = new Trace(), x = t.input("x", xs), wn = prod(ws), data = rng.fold("w").normal(wn).map((v) => v * 0.1);
  const packed = () => t.constant(new Float32Array([...new Float32Array(7), ...data, 1, 2]), [wn + 9]);
  const w = mode === "input"
    ? t.input("w", ws)
    : mode === "const"
    ? t.constant(data, ws)
    : reshape(sliceAxis(packed(), 0, 7, 7 + wn), ws);
  const attrs = convAttrs({ pad: ws[2] === 3 ? 1 : 0, groups });
  let y = x;
  for (let r = 0; r < 6; r++) {
    y = conv2d(y, w, { pad: attrs.pad[0], groups });
    if (ws[0] !== ws[1] * groups) break;
  }
  const prog = await StepProgram.create(ex, t.build({ y: conv2dGradInput(y, w, xs, attrs) }), { state: {} });
  const feeds: Record<string, Float32Array> = {
    x: rng.fold("x").normal(prod(xs)),
    ...(mode === "input" ? { w: data } : {}),
  };
  const times: number[] = [];
  for (let k = 0; k < 25; k++) {
    const t0 = performance.now();
    await prog.run(feeds, ["y"]);
    times.push(performance.now() - t0);
  }
  await prog.dispose();
  return times.sort((a, b) => a - b)[12];
}

const ex = await createExecutor(executor);
try {
  for (const c of CASES) {
    const [input, constant, packed] = [
      await time(ex, c, "input"),
      await time(ex, c, "const"),
      await time(ex, c, "packed"),
    ];
    console.log(
      `RESULT constant_weights case=${c[0]} executor=${ex.name} input_ms=${input.toFixed(2)} ` +
        `const_ms=${constant.toFixed(2)} packed_ms=${packed.toFixed(2)} speedup=${(input / constant).toFixed(2)}`,
    );
  }
} finally {
  await ex.close();
}
