import { contractionFlops } from "../../bench/flops.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { vjp } from "../../engine/grad.ts";
import { conv2d, matmul, sum } from "../../engine/ops.ts";
import { adamw } from "../../engine/optim.ts";
import { Trace } from "../../engine/tensor.ts";

Deno.test("contractionFlops: a matmul, a convolution and both of its gradients by the closed form", () => {
  const tr = new Trace();
  const a = tr.input("a", [2, 5, 7]), b = tr.input("b", [7, 3]);
  const x = tr.input("x", [2, 4, 8, 8]), w = tr.input("w", [6, 4, 3, 3]);
  const y = conv2d(x, w, { pad: 1 });
  const [gx, gw] = vjp(sum(y), [x, w]);
  const g = tr.build({ c: matmul(a, b), y, gx, gw });
  // matmul 2·(2·5·3)·7; the conv forward, its input gradient and its weight gradient each 2·(2·6·8·8)·(4·3·3).
  const conv = 2 * (2 * 6 * 8 * 8) * (4 * 3 * 3);
  const want = 2 * 2 * 5 * 3 * 7 + 3 * conv, got = contractionFlops(g);
  if (got !== want) throw new Error(`${got} FLOPs, want ${want}`);
});

Deno.test("adamw: a number lr with weight decay decays the weights before the Adam step", () => {
  const tr = new Trace();
  const p = tr.input("p", [2]), g = tr.input("g", [2]);
  const zeros = tr.input("m", [2]), step = tr.input("step", []);
  const r = adamw(p, g, zeros, zeros, step, { lr: 0.1, weightDecay: 0.5 });
  const out = evaluate(tr.build({ p: r.p }), {
    p: { data: [1, -2], shape: [2] },
    g: { data: [3, -4], shape: [2] },
    m: { data: [0, 0], shape: [2] },
    step: { data: [1], shape: [] },
  });
  // Step 1 from zero moments: the bias-corrected update is g/(|g|+eps) = ±1; decay first scales p by 1 − lr·wd.
  const got = out.p;
  [1 * 0.95 - 0.1, -2 * 0.95 + 0.1].forEach((v, i) => {
    if (Math.abs(got[i] - v) > 1e-6) throw new Error(`p[${i}] = ${got[i]}, want ${v}`);
  });
});
