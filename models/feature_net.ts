/**
 * `mobilenet_v2` model kind: the frozen pretrained MobileNetV2 of nsfwjs (ImageNet backbone) as a declared model, so
 * pipelines can read its features — ADD's discriminator and the FID-proxy use it. Its weights come from the npm
 * package (BatchNorm folded); declare it without an optimizer and it stays frozen.
 *
 * Input `x` [B, 3, H, W] in [-1, 1]; outputs `pooled` [B, 1280] and one NCHW map per requested level.
 *
 * @module
 */
import { z } from "zod";
import { Trace } from "../engine/tensor.ts";
import { buildMobileNet, DEFAULT_LEVELS, type MobileNet, readNsfwjsArtifacts } from "./mobilenet_v2.ts";
import { expectPort, type ModelDef, type PortSpec, StageTypeError } from "../pipeline/stage.ts";
import { didYouMean, SIZE_LIMITS } from "../pipeline/config.ts";

let cached: MobileNet | null = null;
/** The network, built once per process (about 0.1 s). */
export function mobileNet(): MobileNet {
  return cached ??= buildMobileNet(readNsfwjsArtifacts());
}

/**
 * A level must name one of the network's layers: the schema checks it (with a did-you-mean), so that a bad name is
 * an error at the level itself rather than a throw while the graph is traced. The names need the network, built
 * on first use.
 */
const LEVEL = z.string().superRefine((name, ctx) => {
  const known = mobileNet().layerNames;
  if (known.includes(name)) return;
  const hint = name === "" ? "" : didYouMean(name, known);
  ctx.addIssue({
    code: "custom",
    message: `expected a MobileNetV2 layer name such as "${DEFAULT_LEVELS[0]}", got ${JSON.stringify(name)}${hint}`,
  });
});

const Params = z.strictObject({
  /** Square size images are resized to first (multiple of 32). */
  size: z.number().int().positive().multipleOf(32).max(SIZE_LIMITS.side).default(96),
  /** Intermediate layers returned as outputs (Keras layer names), each once. */
  levels: z.array(LEVEL).max(SIZE_LIMITS.count).superRefine((levels, ctx) => {
    levels.forEach((l, i) => {
      if (levels.indexOf(l) < i) ctx.addIssue({ code: "custom", path: [i], message: `level "${l}" is listed twice` });
    });
  }).default([...DEFAULT_LEVELS]),
});
type P = z.output<typeof Params>;

/** Channels and spatial size of each level at `size`, found by tracing shapes once. */
export function levelSpecs(p: P, batch: number): Record<string, PortSpec> {
  const net = mobileNet();
  const unknown = p.levels.filter((l) => !net.layerNames.includes(l));
  if (unknown.length) throw new StageTypeError(`mobilenet_v2 has no layer ${unknown.join(", ")}`, ["params"]);
  return featureTypes(net, p, batch);
}

const typeCache = new Map<string, Record<string, PortSpec>>();
function featureTypes(net: MobileNet, p: P, batch: number): Record<string, PortSpec> {
  const key = `${p.size}|${p.levels.join(",")}|${batch}`;
  let t = typeCache.get(key);
  if (!t) {
    // Shapes only: a throwaway trace, never compiled.
    const tr = new Trace();
    const params = Object.fromEntries(Object.entries(net.shapes).map(([k, s]) => [k, tr.input(k, s)]));
    const f = net.features(params, tr.input("x", [batch, 3, 32, 32]), { levels: p.levels, size: p.size });
    t = { pooled: { dtype: "f32", shape: [...f.pooled.shape] } };
    for (const [k, v] of Object.entries(f.levels)) t[k] = { dtype: "f32", shape: [...v.shape] };
    typeCache.set(key, t);
  }
  return t;
}

/** The mobilenet_v2 model kind. */
export const mobilenetV2: ModelDef<P> = {
  kind: "mobilenet_v2",
  doc: "frozen pretrained MobileNetV2 (nsfwjs, ImageNet): pooled features and intermediate maps",
  params: Params,
  shapes: () => mobileNet().shapes,
  init: () => mobileNet().params,
  types: (p, inputs) => {
    const x = expectPort(inputs, "x", { dtype: "f32", rank: 4 });
    if (x.shape[1] !== 3) expectPort(inputs, "x", { dtype: "f32", shape: [-1, 3, -1, -1] });
    return levelSpecs(p, x.shape[0]);
  },
  apply: (p, params, { x }) => {
    const f = mobileNet().features(params, x, { levels: p.levels, size: p.size });
    return { pooled: f.pooled, ...f.levels };
  },
};
