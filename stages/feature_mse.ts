/**
 * `feature_mse`: a perceptual distance between `pred` and `target` on a frozen feature network, after LPIPS without
 * its learned channel weights (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
 * Metric", eq. 1): at each feature level, unit-normalise every location's channel vector, take the squared difference
 * summed over channels, average over locations and the batch; the loss is the mean over levels (LPIPS sums them: a
 * factor of the number of levels, so a weight tuned here does not change with it). A pixel
 * MSE regression gives the average of what it cannot tell apart — a blur; this one compares structure. DMD's
 * regression loss (Yin et al. 2024, §3.3) is LPIPS for that reason.
 *
 * @module
 */
import { z } from "zod";
import { add, div, mean, mul, sqrt, square, sub } from "../engine/math.ts";
import { stopGradient, sum } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { expectPort, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** A declared frozen feature network (`mobilenet_v2`) whose levels are compared. */
  features: z.string(),
});

/** x / ‖x‖ over channels (axis 1) at every location; ε inside the root (LPIPS adds it outside) keeps ∂ finite at 0. */
function unitChannels(x: Tensor): Tensor {
  return div(x, sqrt(add(sum(square(x), 1, true), 1e-10)));
}

/**
 * The distance on given feature maps (NCHW, one per level): mean over levels of the location-averaged
 * Σ_c (x̂_c − ŷ_c)² of the channel-normalised maps.
 */
export function featureDistance(pred: Tensor[], target: Tensor[]): Tensor {
  const per = pred.map((p, i) => mean(sum(square(sub(unitChannels(p), unitChannels(target[i]))), 1)));
  return mul(per.reduce((a, b) => add(a, b)), 1 / per.length);
}

/** The feature_mse stage. */
export const featureMse: StageDef<z.output<typeof Params>> = {
  kind: "feature_mse",
  doc: "LPIPS-style distance of pred to target on a frozen feature network's levels (unit-normalised channels)",
  role: "traced",
  params: Params,
  inputs: ["pred", "target"],
  models: (p) => [p.features],
  types: ({ params, inputs, models }) => {
    const p = expectPort(inputs, "pred", { dtype: "f32", rank: 4 });
    expectPort(inputs, "target", { dtype: "f32", shape: p.shape });
    const f = models[params.features];
    if (f?.kind !== "mobilenet_v2") {
      throw new StageTypeError(`model "${params.features}" must be a mobilenet_v2`, ["params", "features"]);
    }
    if (!(f.params as { levels: string[] }).levels.length) {
      throw new StageTypeError(`model "${params.features}" has no feature levels to compare`, ["params", "features"]);
    }
    return { loss: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, { pred, target }) => {
    const fp = ctx.apply(p.features, { x: pred }), ft = ctx.apply(p.features, { x: target });
    const levels = Object.keys(fp).filter((k) => k !== "pooled");
    return { loss: featureDistance(levels.map((k) => fp[k]), levels.map((k) => stopGradient(ft[k]))) };
  },
};
