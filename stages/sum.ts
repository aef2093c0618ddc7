/**
 * `sum`: a weighted sum of scalar losses, e.g. ADD's generator objective L_adv^G + λ L_distill.
 *
 * @module
 */
import { z } from "zod";
import { add, div, minimum, mul, sub } from "../engine/math.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type StageDef } from "../pipeline/stage.ts";

const PORTS = ["a", "b", "c", "d", "e", "f", "g", "h"] as const;
const perPort = <T extends z.ZodTypeAny>(t: T) =>
  z.strictObject(Object.fromEntries(PORTS.map((k) => [k, t])) as Record<(typeof PORTS)[number], T>).partial();
/**
 * A weight that moves linearly from `from` at step 1 to `to` at step `steps` and stays there, e.g. to let one term
 * anchor the start of a run and hand over to another later.
 */
const Ramp = z.strictObject({ from: z.number(), to: z.number(), steps: z.number().int().min(2) });
const Params = z.strictObject({
  /** Weight of each connected input (default 1): a number, or a ramp `{from, to, steps}`. */
  weights: perPort(z.union([z.number(), Ramp])).default({}),
  /** Names under which each term is logged (default the port letters), e.g. `{a: adv, b: distill}`. */
  names: perPort(z.string()).default({}),
});

/** The sum stage. */
export const weightedSum: StageDef<z.output<typeof Params>> = {
  kind: "sum",
  doc: "weighted sum of up to eight scalar losses (a … h)",
  role: "traced",
  params: Params,
  inputs: ["a", ...PORTS.slice(1).map((k) => `${k}?`)],
  types: ({ inputs }) => {
    for (const k of PORTS) if (inputs[k]) expectPort(inputs, k, { dtype: "f32", shape: [] });
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, inputs) => {
    const terms = PORTS.filter((k) => inputs[k]).map((k) => {
      const w = p.weights[k] ?? 1;
      if (typeof w === "number") return w === 1 ? inputs[k] : mul(inputs[k], w);
      // w(step) = from + (to − from)·min((step − 1)/(steps − 1), 1); the step is a traced input, so one graph serves
      // every step and the weight in use is logged.
      const frac = minimum(div(sub(ctx.step, 1), w.steps - 1), 1);
      const wt = add(mul(frac, w.to - w.from), w.from);
      ctx.metric(`${p.names[k] ?? k}_weight`, wt);
      return mul(inputs[k], wt);
    });
    PORTS.forEach((k) => inputs[k] && ctx.metric(p.names[k] ?? k, inputs[k]));
    return { loss: terms.reduce((x: Tensor, y) => add(x, y)) };
  },
};
