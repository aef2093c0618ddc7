// feature_mse (stages/feature_mse.ts): the LPIPS-style distance against plain float64 loops on two feature levels,
// its gradient against finite differences, and the stage end to end — through a fake feature network whose pooled
// output must not count — giving no gradient to the target.
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { vjp } from "../../engine/grad.ts";
import { mul, tanh } from "../../engine/math.ts";
import { avgPool } from "../../engine/nn.ts";
import { type Tensor, Trace } from "../../engine/tensor.ts";
import type { TraceContext } from "../../pipeline/stage.ts";
import { featureDistance, featureMse } from "../../stages/feature_mse.ts";
import { checkGrad, lcg, randn } from "../helpers/grad_check.ts";

/** The distance with loops: levels [B, C, H, W] row-major. */
function loops(pred: number[][], target: number[][], shapes: number[][]): number {
  let total = 0;
  shapes.forEach(([b, c, h, w], l) => {
    let acc = 0;
    for (let n = 0; n < b; n++) {
      for (let y = 0; y < h * w; y++) {
        const at = (k: number) => ((n * c + k) * h * w) + y;
        let np = 0, nt = 0;
        for (let k = 0; k < c; k++) np += pred[l][at(k)] ** 2, nt += target[l][at(k)] ** 2;
        np = Math.sqrt(np + 1e-10), nt = Math.sqrt(nt + 1e-10);
        for (let k = 0; k < c; k++) acc += (pred[l][at(k)] / np - target[l][at(k)] / nt) ** 2;
      }
    }
    total += acc / (b * h * w);
  });
  return total / shapes.length;
}

const SHAPES = [[2, 3, 2, 2], [2, 5, 1, 1]];

Deno.test("featureDistance: matches plain loops; 0 for equal maps, and scale-invariant per location", () => {
  const rand = lcg(7), size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const pred = SHAPES.map((s) => randn(size(s), rand)), target = SHAPES.map((s) => randn(size(s), rand));
  const run = (p: number[][], t: number[][]) => {
    const tr = new Trace(), feeds: Record<string, { data: number[]; shape: number[] }> = {};
    const ins = (name: string, d: number[][]) =>
      SHAPES.map((s, i) => {
        feeds[`${name}${i}`] = { data: d[i], shape: s };
        return tr.input(`${name}${i}`, s);
      });
    return evaluate(tr.build({ d: featureDistance(ins("p", p), ins("t", t)) }), feeds).d[0];
  };
  const want = loops(pred, target, SHAPES);
  assert.ok(want > 0.1, `loops gave ${want}`);
  assert.ok(Math.abs(run(pred, target) - want) <= 1e-6 * want, `${run(pred, target)} vs ${want}`);
  assert.ok(Math.abs(run(pred, pred)) <= 1e-9);
  // Each location's channel vector is normalised: scaling the prediction by 3 changes nothing.
  const scaled = pred.map((l) => l.map((v) => 3 * v));
  assert.ok(Math.abs(run(scaled, target) - want) <= 1e-6 * want);
});

Deno.test("featureDistance: gradient in the prediction vs finite differences", () => {
  const rand = lcg(11);
  const t = SHAPES.map((s) => randn(s.reduce((a, b) => a * b, 1), rand));
  const r = checkGrad(
    "featureDistance",
    [...SHAPES.map((shape) => ({ shape })), ...SHAPES.map((shape, i) => ({ shape, data: t[i], fixed: true }))],
    (xs) => featureDistance(xs.slice(0, 2), xs.slice(2)),
    { samples: 8 },
  );
  assert.ok(r.checked >= 16);
});

Deno.test("feature_mse stage: its levels of a feature network, pooled output ignored, no gradient to the target", () => {
  const tr = new Trace(), rand = lcg(3);
  const shape = [2, 3, 4, 4];
  const pData = randn(32 * 3, rand), tData = randn(32 * 3, rand);
  const pred = tr.input("pred", shape), target = tr.input("target", shape);
  // A stand-in feature network: two levels and a `pooled` output that must not count.
  const net = ({ x }: Record<string, Tensor>) => ({
    a: tanh(x),
    b: avgPool(mul(x, 2), 2),
    pooled: mul(x, 1000),
  });
  const ctx = { apply: (_m: string, ins: Record<string, Tensor>) => net(ins) } as unknown as TraceContext;
  const params = featureMse.params.parse({ features: "f" });
  const { loss } = featureMse.trace!(ctx, params, { pred, target });
  const [gp, gt] = vjp(loss, [pred, target]);
  const out = evaluate(tr.build({ loss, gp, gt }), {
    pred: { data: pData, shape },
    target: { data: tData, shape },
  });
  // The same distance from the levels computed by hand.
  const pool = (d: number[]) => {
    const o: number[] = [];
    for (let n = 0; n < 6; n++) {
      for (let y = 0; y < 2; y++) {
        for (let x = 0; x < 2; x++) {
          let s = 0;
          for (const [dy, dx] of [[0, 0], [0, 1], [1, 0], [1, 1]]) s += 2 * d[n * 16 + (2 * y + dy) * 4 + 2 * x + dx];
          o.push(s / 4);
        }
      }
    }
    return o;
  };
  const want = loops(
    [pData.map(Math.tanh), pool(pData)],
    [tData.map(Math.tanh), pool(tData)],
    [shape, [2, 3, 2, 2]],
  );
  assert.ok(Math.abs(out.loss[0] - want) <= 1e-6 * want, `${out.loss[0]} vs ${want}`);
  assert.ok(out.gp.some((v) => v !== 0), "no gradient to the prediction");
  assert.ok(out.gt.every((v) => v === 0), "the target got a gradient");
  // Typing: the features model must be a mobilenet_v2.
  assert.throws(
    () =>
      featureMse.types({
        params,
        inputs: { pred: { dtype: "f32", shape }, target: { dtype: "f32", shape } },
        models: { f: { name: "f", kind: "mlp", params: {}, shapes: {} } },
        datasets: {},
      }),
    /must be a mobilenet_v2/,
  );
});
