/**
 * `add_discriminator`: ADD's adversarial losses (Sauer et al. 2023, §3.2, eq. 2–3). Features of the real and the
 * generated images from a frozen feature network feed the trainable heads; the losses are hinge:
 *
 *   L_G = −E[Σ_k D_k(F_k(x̂))]
 *   L_D = E[Σ_k max(0, 1 − D_k(F_k(x0)))] + E[Σ_k max(0, 1 + D_k(F_k(x̂)))] + (γ/2) Σ_k E‖∇_{F_k} D_k(F_k(x0))‖²
 *
 * D_k is the mean of head k's logits over its locations; with per-location heads (the model's `per_location`, as in
 * StyleGAN-T) the hinges of L_D apply at each location before the mean, while L_G, linear, is the same either way.
 *
 * The last term is the R1 penalty (Mescheder et al. 2018) on the heads' inputs; its gradient with respect to the
 * heads is a gradient of a gradient, which the engine's autodiff traces like any other. Each head is conditioned on
 * the text embedding and on the feature network's pooled embedding of the real image. Wire `loss_d` to the
 * discriminator's optimizer and `loss_g` into the generator's total.
 *
 * @module
 */
import { z } from "zod";
import { vjp } from "../../engine/grad.ts";
import { add, greater, mean, mul, neg, relu, square, sub } from "../../engine/math.ts";
import { cast, reshape, stopGradient, sum } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { avgPool } from "../../engine/nn.ts";
import { AUGMENTS, diffAugment } from "../../models/diff_augment.ts";
import { expectPort, type StageDef, StageTypeError } from "../../pipeline/stage.ts";

const Params = z.strictObject({
  /** The declared `add_discriminator` model (its heads are what the discriminator's optimizer trains). */
  model: z.string(),
  /** The declared frozen feature network (`mobilenet_v2`). */
  features: z.string(),
  /** R1 weight γ on the heads' inputs (the paper's 1e-5). */
  r1_gamma: z.number().min(0).default(1e-5),
  /**
   * Differentiable augmentations applied to real and generated images before the feature network (DiffAugment,
   * models/diff_augment.ts), each branch with its own randomness; [] for none.
   */
  augment: z.array(z.enum(AUGMENTS)).default([]),
  /**
   * How the real image's condition enters each example. `always`: as in the paper. Where the student's input was
   * pure noise it cannot know which real image it stands beside, so an image-conditioned discriminator tells its
   * output from the real one by the mismatch alone, a contest the student cannot win; `unless_pure_noise` zeroes
   * the condition of those examples, real and generated branch alike; `times_alpha` scales it by α_s, the share of
   * the real image in the student's input. Both need the `alpha` input (α_s, e.g. `noise.alpha`).
   */
  image_condition: z.enum(["always", "unless_pure_noise", "times_alpha"]).default("always"),
  /**
   * Also give the discriminator one head on the image's own pixels, average-pooled to this size (0: none); the
   * model then needs one more entry in `channels`, the image's channel count. An ImageNet feature network is built to
   * be nearly blind to colour, so without it nothing in the adversarial game sees colour.
   */
  pixel_head: z.number().int().min(0).default(0),
});
type P = z.output<typeof Params>;

const PIXELS = "pixels";

/** The add_discriminator stage. */
export const addDiscriminatorStage: StageDef<P> = {
  kind: "add_discriminator",
  doc: "hinge losses of ADD's discriminator heads on frozen features, with R1 on the heads' inputs",
  role: "traced",
  params: Params,
  inputs: ["fake", "real", "text?", "alpha?"],
  models: (p) => [p.model, p.features],
  types: ({ params, inputs, models }) => {
    const real = expectPort(inputs, "real", { dtype: "f32", rank: 4 });
    expectPort(inputs, "fake", { dtype: "f32", shape: real.shape });
    const d = models[params.model], f = models[params.features];
    if (d?.kind !== "add_discriminator") {
      throw new StageTypeError(`model "${params.model}" must be an add_discriminator`, ["params", "model"]);
    }
    if (f?.kind !== "mobilenet_v2") {
      throw new StageTypeError(`model "${params.features}" must be a mobilenet_v2`, ["params", "features"]);
    }
    const dp = d.params as { channels: number[]; text_dim: number; mbstd_group: number };
    const b = real.shape[0];
    if (dp.mbstd_group && b % Math.min(dp.mbstd_group, b)) {
      throw new StageTypeError(
        `batch ${b} is not a multiple of model "${params.model}"'s mbstd_group ${dp.mbstd_group}`,
        ["params", "model"],
      );
    }
    const levels = (f.params as { levels: string[] }).levels;
    const heads = levels.length + (params.pixel_head ? 1 : 0);
    if (heads !== dp.channels.length) {
      throw new StageTypeError(
        `discriminator has ${dp.channels.length} heads but the feature network gives ${levels.length} levels` +
          (params.pixel_head ? " and the pixel head one more" : ""),
        ["params", "model"],
      );
    }
    if (params.pixel_head) {
      const [, c, h, w] = real.shape;
      if (h % params.pixel_head || w % params.pixel_head) {
        throw new StageTypeError(`pixel_head ${params.pixel_head} does not divide the image size ${h}×${w}`, [
          "params",
          "pixel_head",
        ]);
      }
      if (dp.channels[heads - 1] !== c) {
        throw new StageTypeError(
          `the pixel head reads ${c} channels but model "${params.model}"'s last channel entry is ` +
            `${dp.channels[heads - 1]}`,
          ["params", "model"],
        );
      }
    }
    if (dp.text_dim > 0) expectPort(inputs, "text", { dtype: "f32", shape: [real.shape[0], dp.text_dim] });
    if (params.image_condition !== "always") {
      if (!inputs.alpha) {
        throw new StageTypeError(
          `image_condition: ${params.image_condition} needs the input alpha (the student input's α_s, e.g. noise.alpha)`,
          ["params", "image_condition"],
        );
      }
      expectPort(inputs, "alpha", { dtype: "f32", shape: [b, 1, 1, 1] });
    }
    return { loss_g: { dtype: "f32", shape: [] }, loss_d: { dtype: "f32", shape: [] } };
  },
  trace: (ctx, p, { fake, real, text, alpha }) => {
    const aug = (x: Tensor, branch: string) =>
      p.augment.length ? diffAugment(x, p.augment, (tag, shape) => ctx.uniform(`${branch}.${tag}`, shape)) : x;
    const ar = aug(real, "real"), af = aug(fake, "fake");
    const fr = ctx.apply(p.features, { x: ar }), ff = ctx.apply(p.features, { x: af });
    const levels = Object.keys(fr).filter((k) => k !== "pooled");
    if (p.pixel_head) {
      levels.push(PIXELS);
      const k = real.shape[2] / p.pixel_head;
      fr[PIXELS] = k > 1 ? avgPool(ar, k) : ar;
      ff[PIXELS] = k > 1 ? avgPool(af, k) : af;
    }
    // The condition is the embedding of the real image itself, not of its augmented copy.
    let image = stopGradient(p.augment.length ? ctx.apply(p.features, { x: real }).pooled : fr.pooled);
    if (p.image_condition !== "always") {
      const a = reshape(alpha, [real.shape[0], 1]);
      image = mul(image, p.image_condition === "times_alpha" ? a : cast(greater(a, 0), "f32"));
    }
    const heads = (f: Record<string, Tensor>) => {
      const ins: Record<string, Tensor> = { image };
      levels.forEach((l, k) => (ins[`f${k}`] = f[l]));
      if (text) ins.text = text;
      const out = ctx.apply(p.model, ins);
      // logits [B, K]; with per-location heads also each head's map [B, L_k]
      return { logits: out.logits, maps: levels.map((_, k) => out[`map${k}`]).filter((m) => m) };
    };
    // R1 differentiates each head in its own input F_k. The feature network computes its levels one from another,
    // so a gradient with respect to the levels themselves would also run from F_k through the later levels into
    // the later heads (and back through the frozen network). The heads read the real features through
    // stop-gradient copies instead, which the real branch can afford: nothing upstream of it is trained.
    const realIns = levels.map((l) => stopGradient(fr[l]));
    const hr = heads(Object.fromEntries(levels.map((l, k) => [l, realIns[k]]))), hf = heads(ff);
    const dReal = hr.logits, dFake = hf.logits;
    const perExample = (t: Tensor) => mean(sum(t, 1)); // Σ_k, then E over the batch
    // Per-location heads (StyleGAN-T): Σ_k of each head's hinge averaged over batch and locations.
    const hinge = (maps: Tensor[], f: (m: Tensor) => Tensor) => maps.map((m) => mean(f(m))).reduce((a, c) => add(a, c));
    let lossD = hr.maps.length
      ? add(hinge(hr.maps, (m) => relu(sub(1, m))), hinge(hf.maps, (m) => relu(add(m, 1))))
      : add(perExample(relu(sub(1, dReal))), perExample(relu(add(dFake, 1))));
    let r1: Tensor | null = null;
    if (p.r1_gamma > 0) {
      // Head k reads only its copy of F_k (and the condition), so ∂(Σ_k D_k)/∂F_k = ∂D_k/∂F_k.
      const grads = vjp(sum(dReal), realIns);
      const b = real.shape[0];
      r1 = grads.map((g) => mul(sum(square(g)), 1 / b)).reduce((a, c) => add(a, c));
      lossD = add(lossD, mul(r1, p.r1_gamma / 2));
    }
    ctx.metric("d_real", mean(dReal));
    ctx.metric("d_fake", mean(dFake));
    if (r1) ctx.metric("r1", r1);
    return { loss_g: neg(perExample(dFake)), loss_d: lossD };
  },
};
