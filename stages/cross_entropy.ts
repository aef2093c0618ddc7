/**
 * `cross_entropy`: mean softmax cross-entropy of `logits` [B, C] against integer class `labels` [B] (e.g. a
 * dataset's `caption_id`), a scalar `loss`; also logs the batch's top-1 `accuracy`.
 *
 * @module
 */
import { z } from "zod";
import { equal, mean, mul, toFloat } from "../engine/math.ts";
import { crossEntropy as crossEntropyLoss } from "../engine/nn.ts";
import { max, reshape, sum } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type StageDef } from "../pipeline/stage.ts";

const Params = z.strictObject({});

/** One-hot f32 [B, C] of i32 `labels` [B] (labels outside 0..C−1 give a zero row). */
export function oneHot(labels: Tensor, classes: number): Tensor {
  const ids = labels.trace.constant(Array.from({ length: classes }, (_, i) => i), [1, classes], "i32");
  return toFloat(equal(reshape(labels, [labels.shape[0], 1]), ids));
}

/** The cross_entropy stage. */
export const crossEntropyStage: StageDef<z.output<typeof Params>> = {
  kind: "cross_entropy",
  doc: "softmax cross-entropy of logits [B,C] against integer labels [B]; logs accuracy",
  role: "traced",
  params: Params,
  inputs: ["logits", "labels"],
  types: ({ inputs }) => {
    const l = expectPort(inputs, "logits", { dtype: "f32", rank: 2 });
    expectPort(inputs, "labels", { dtype: "i32", shape: [l.shape[0]] });
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, _p, { logits, labels }) => {
    const target = oneHot(labels, logits.shape[1]);
    // A hit: the label's logit is the row's maximum (a tie counts as a hit; ties of float logits do not happen).
    const picked = sum(mul(logits, target), 1);
    ctx.metric("accuracy", mean(toFloat(equal(picked, max(logits, 1)))));
    return { loss: crossEntropyLoss(logits, target) };
  },
};
