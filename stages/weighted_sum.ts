/**
 * `sum`: a weighted sum of scalar losses, e.g. ADD's generator objective L_adv^G + λ L_distill.
 *
 * @module
 */
import { z } from "zod";
import { add, mul } from "../engine/math.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type StageDef } from "../pipeline/stage.ts";

const PORTS = ["a", "b", "c", "d"] as const;
const Params = z.strictObject({
  /** Weight of each connected input (default 1). */
  weights: z.strictObject({ a: z.number(), b: z.number(), c: z.number(), d: z.number() }).partial().default({}),
  /** Names under which each term is logged (default the port letters), e.g. `{a: adv, b: distill}`. */
  names: z.strictObject({ a: z.string(), b: z.string(), c: z.string(), d: z.string() }).partial().default({}),
});

/** The sum stage. */
export const weightedSum: StageDef<z.output<typeof Params>> = {
  kind: "sum",
  doc: "weighted sum of up to four scalar losses (a, b, c, d)",
  role: "traced",
  params: Params,
  inputs: ["a", "b?", "c?", "d?"],
  types: ({ inputs }) => {
    for (const k of PORTS) if (inputs[k]) expectPort(inputs, k, { dtype: "f32", shape: [] });
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, inputs) => {
    const terms = PORTS.filter((k) => inputs[k]).map((k) => {
      const w = p.weights[k] ?? 1;
      return w === 1 ? inputs[k] : mul(inputs[k], w);
    });
    PORTS.forEach((k) => inputs[k] && ctx.metric(p.names[k] ?? k, inputs[k]));
    return { loss: terms.reduce((x: Tensor, y) => add(x, y)) };
  },
};
