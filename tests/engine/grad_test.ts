// Finite-difference checks of every derivative rule, first order for all and second order for those R1 crosses.
import { RULES, vjp } from "../../engine/grad.ts";
import { evaluate } from "../../engine/executors/reference.ts";
import { Trace } from "../../engine/tensor.ts";
import type { Op } from "../../engine/ir.ts";
import * as m from "../../engine/math.ts";
import * as nn from "../../engine/nn.ts";
import * as o from "../../engine/ops.ts";
import { checkGrad, type InputSpec } from "../helpers/grad_check.ts";
import type { Tensor } from "../../engine/tensor.ts";

interface Case {
  op: Op;
  specs: InputSpec[];
  f: (x: Tensor[]) => Tensor;
  second?: boolean;
}

const s = (shape: number[], extra: Partial<InputSpec> = {}): InputSpec => ({ shape, ...extra });

const CASES: Case[] = [
  { op: "neg", specs: [s([3, 4])], f: ([x]) => m.neg(x), second: true },
  { op: "exp", specs: [s([3, 4])], f: ([x]) => m.exp(x), second: true },
  { op: "log", specs: [s([3, 4], { positive: true })], f: ([x]) => m.log(x), second: true },
  { op: "sqrt", specs: [s([3, 4], { positive: true })], f: ([x]) => m.sqrt(x), second: true },
  { op: "reciprocal", specs: [s([3, 4], { positive: true })], f: ([x]) => m.reciprocal(x), second: true },
  { op: "sin", specs: [s([3, 4])], f: ([x]) => m.sin(x), second: true },
  { op: "cos", specs: [s([3, 4])], f: ([x]) => m.cos(x), second: true },
  { op: "tanh", specs: [s([3, 4])], f: ([x]) => m.tanh(x), second: true },
  { op: "sigmoid", specs: [s([3, 4])], f: ([x]) => m.sigmoid(x), second: true },
  { op: "erf", specs: [s([3, 4])], f: ([x]) => m.erf(x), second: true },
  { op: "abs", specs: [s([3, 4])], f: ([x]) => m.abs(x), second: true },
  { op: "sign", specs: [s([3, 4])], f: ([x]) => m.mul(m.sign(x), x) },
  { op: "add", specs: [s([2, 3, 4]), s([3, 1])], f: ([a, b]) => m.add(a, b), second: true },
  { op: "sub", specs: [s([2, 3, 4]), s([4])], f: ([a, b]) => m.sub(a, b), second: true },
  { op: "mul", specs: [s([2, 3, 4]), s([1, 3, 1])], f: ([a, b]) => m.mul(a, b), second: true },
  { op: "div", specs: [s([2, 3]), s([3], { positive: true })], f: ([a, b]) => m.div(a, b), second: true },
  {
    op: "pow",
    specs: [s([2, 3], { positive: true }), s([3])],
    f: ([a, b]) => m.pow(a, b),
    second: true,
  },
  { op: "maximum", specs: [s([2, 3, 4]), s([3, 4])], f: ([a, b]) => m.maximum(a, b), second: true },
  { op: "minimum", specs: [s([2, 3, 4]), s([4])], f: ([a, b]) => m.minimum(a, b), second: true },
  {
    op: "where",
    specs: [s([3, 4]), s([3, 4]), s([4])],
    f: ([c, a, b]) => o.where(m.less(o.stopGradient(c), 0), m.mul(a, a), b),
    second: true,
  },
  { op: "less", specs: [s([3, 4])], f: ([x]) => o.where(m.less(x, 0.1), x, m.exp(x)) },
  { op: "greater", specs: [s([3, 4])], f: ([x]) => o.where(m.greater(x, 0.1), x, m.exp(x)) },
  { op: "equal", specs: [s([3, 4])], f: ([x]) => o.where(m.equal(x, 0.1), x, m.exp(x)) },
  { op: "sum", specs: [s([2, 3, 4])], f: ([x]) => m.mul(o.sum(m.mul(x, x), [0, 2], true), 1), second: true },
  { op: "max", specs: [s([2, 3, 4])], f: ([x]) => o.max(m.mul(x, x), [1]), second: true },
  { op: "matmul", specs: [s([2, 3, 4]), s([4, 5])], f: ([a, b]) => o.matmul(a, b), second: true },
  // weighted: Σ normalize = 0 and Σ softmax = 1 would give zero gradients unweighted
  {
    op: "normalize",
    specs: [s([2, 3, 5]), s([2, 3, 5])],
    f: ([x, w]) => m.mul(o.normalize(x, 1e-3), w),
    second: true,
  },
  {
    op: "softmax",
    specs: [s([2, 3, 4]), s([2, 3, 4])],
    f: ([x, w]) => m.mul(o.softmax(x, 1), w),
    second: true,
  },
  {
    op: "conv2d",
    specs: [s([2, 4, 7, 6]), s([6, 2, 3, 3])],
    f: ([x, w]) => o.conv2d(x, w, { stride: 2, pad: [1, 0, 2, 1], groups: 2 }),
    second: true,
  },
  {
    op: "conv2d_grad_input",
    specs: [s([2, 3, 3, 3]), s([3, 1, 3, 3])],
    f: ([g, w]) => o.conv2dGradInput(g, w, [2, 3, 5, 6], o.convAttrs({ stride: 2, pad: 1, groups: 3 })),
    second: true,
  },
  {
    op: "conv2d_grad_weight",
    specs: [s([2, 2, 5, 5]), s([2, 4, 5, 5])],
    f: ([x, g]) => o.conv2dGradWeight(x, g, [4, 2, 3, 3], o.convAttrs({ pad: 1 })),
    second: true,
  },
  { op: "reshape", specs: [s([2, 6])], f: ([x]) => o.reshape(m.mul(x, x), [3, 4]), second: true },
  { op: "transpose", specs: [s([2, 3, 4])], f: ([x]) => o.transpose(m.mul(x, x), [2, 0, 1]), second: true },
  { op: "slice", specs: [s([4, 5])], f: ([x]) => o.slice(m.mul(x, x), [1, 0], [3, 4]), second: true },
  { op: "pad", specs: [s([2, 3])], f: ([x]) => o.pad(m.mul(x, x), [1, 0], [0, 2]), second: true },
  {
    op: "concat",
    specs: [s([2, 3]), s([2, 1])],
    f: ([a, b]) => o.concat([m.mul(a, a), m.mul(b, a.shape[1]), a], 1),
    second: true,
  },
  { op: "expand", specs: [s([3, 1])], f: ([x]) => o.expand(m.mul(x, x), [2, 3, 4]), second: true },
  {
    op: "gather",
    specs: [s([5, 3]), s([2, 2], { dtype: "i32", fixed: true, data: [4, 0, 4, 2] })],
    f: ([x, i]) => o.gather(m.mul(x, x), i, 0),
    second: true,
  },
  {
    op: "cast",
    specs: [s([3, 4])],
    f: ([x]) => m.mul(o.cast(m.greater(x, 0), "f32"), o.cast(m.mul(x, x), "f32")),
    second: true,
  },
];

for (const c of CASES) {
  Deno.test(`grad: ${c.op} matches finite differences${c.second ? " (1st and 2nd order)" : ""}`, () => {
    checkGrad(c.op, c.specs, c.f, { order: c.second ? 2 : 1 });
  });
}

Deno.test("grad: every differentiable primitive has a finite-difference case", () => {
  const covered = new Set(CASES.map((c) => c.op));
  const own = new Set(["input", "const", "stop_gradient"]); // stop_gradient has its own test below
  const missing = Object.keys(RULES).filter((op) => !own.has(op) && !covered.has(op as Op));
  if (missing.length) throw new Error(`no gradient check for: ${missing.join(", ")}`);
});

Deno.test("grad: composed nn blocks (group norm, softmax attention, GELU, SiLU, layer norm) to second order", () => {
  checkGrad("groupNorm+silu", [s([2, 4, 3, 3]), s([4]), s([4])], ([x, w, b]) => nn.silu(nn.groupNorm(x, 2, w, b)), {
    order: 2,
  });
  checkGrad("attention", [s([1, 3, 4]), s([1, 2, 4]), s([1, 2, 4])], ([q, k, v]) => nn.attention(q, k, v, 2), {
    order: 2,
  });
  checkGrad("layerNorm+gelu", [s([3, 5]), s([5]), s([5])], ([x, w, b]) => nn.gelu(nn.layerNorm(x, w, b)), {
    order: 2,
  });
  checkGrad(
    "pool+upsample",
    [s([1, 2, 4, 4])],
    ([x]) => nn.upsampleNearest(nn.maxPool(nn.avgPool(m.mul(x, x), 1), 2)),
    {
      order: 2,
    },
  );
});

Deno.test("grad: stopGradient passes the value and blocks the gradient", () => {
  // d/dx [sg(x) · x] = sg(x) = x, where the unstopped product would give 2x
  const tr = new Trace();
  const x = tr.input("x", [4]);
  const [g] = vjp(o.sum(m.mul(o.stopGradient(x), x)), [x]);
  const out = evaluate(tr.build({ g }), { x: { data: [1, -2, 3, 0.5], shape: [4] } });
  if (out.g.join() !== "1,-2,3,0.5") throw new Error(`got ${out.g}`);
});
