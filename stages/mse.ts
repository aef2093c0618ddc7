/**
 * `mse`: mean squared error between `pred` and `target` (same shape), a scalar `loss`.
 *
 * @module
 */
import { z } from "zod";
import { mse as mseLoss } from "../engine/nn.ts";
import { expectPort, type StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({});

/** The mse stage. */
export const mse: StageDef<z.output<typeof Params>> = {
  kind: "mse",
  doc: "mean squared error of pred against target",
  role: "traced",
  params: Params,
  inputs: ["pred", "target"],
  types: ({ inputs }) => {
    const p = expectPort(inputs, "pred", { dtype: "f32" });
    expectPort(inputs, "target", { dtype: "f32", shape: p.shape });
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (_ctx, _p, { pred, target }) => ({ loss: mseLoss(pred, target) }),
};
