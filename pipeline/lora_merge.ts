/**
 * A LoRA model's full weights from a checkpoint, which saves its adapters alone (`<model>.safetensors` and
 * `<model>.ema.safetensors` hold `<path>.lora_A`/`.lora_B`): the base's weights are read again from the base's
 * init file (or made by its kind's initialiser from the run's seed, as the run did) and the adapters merged in.
 * Export, sampling and evaluation load a LoRA student through this, so that it ships like a full one.
 *
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { adapterShapes, type LoraSpec, loraTargets, mergeHost } from "../models/lora.ts";
import type { LoraConfig } from "./config_schema.ts";
import { initRng } from "./init_weights.ts";
import { type AnyModel, modelKinds } from "./stage.ts";

/** The parts of a checkpoint's resolved `config.yaml` a merge reads. */
export interface MergeConfig {
  run?: { seed?: number };
  models?: Record<string, { kind: string; params?: unknown; init?: string; lora?: LoraConfig }>;
}

/** Model `name`'s LoRA in a checkpoint's config, or undefined when it trains full weights. */
export const loraOf = (config: MergeConfig, name: string): LoraConfig | undefined => config.models?.[name]?.lora;

/**
 * The full weights W' = W + (alpha/rank)·B·A of LoRA model `name` under the model's own names, from its `adapters`
 * (a checkpoint's `<name>.safetensors`, or its EMA's) and the base's weights. `dir` is the checkpoint's folder, where
 * a relative base init path is also looked for; `def` the model kind, when the caller has not registered the kinds.
 * Throws one line when the base or an adapter is missing or of the wrong shape.
 */
export async function mergedWeights(
  config: MergeConfig,
  name: string,
  adapters: Record<string, Float32Array>,
  opts: { dir?: string; def?: AnyModel } = {},
): Promise<Record<string, Float32Array>> {
  const m = config.models?.[name], lora = m?.lora;
  if (!m || !lora) throw new Error(`model "${name}" has no LoRA in the config`);
  const def = opts.def ?? modelKinds().get(m.kind);
  if (!def || def.kind !== m.kind) throw new Error(`model "${name}": model kind "${m.kind}" is not registered`);
  const params = def.params.parse(m.params ?? {});
  const shapes: Record<string, number[]> = def.shapes(params);
  const spec: LoraSpec = {
    rank: lora.rank,
    alpha: lora.alpha ?? lora.rank,
    targets: loraTargets(shapes, lora.targets.map((t) => new RegExp(t))),
  };
  for (const [path, shape] of Object.entries(adapterShapes(spec))) {
    const a = adapters[path], n = shape.reduce((x, y) => x * y, 1);
    if (!a || a.length !== n) throw new Error(`model "${name}": adapter "${path}" missing or not [${shape}]`);
  }
  const base = await baseWeights(config, lora.base, def, params, shapes, opts.dir);
  return mergeHost(base, adapters, spec);
}

/** The base's weights as the run had them: its init file, or its kind's initialiser from the run's seed. */
async function baseWeights(
  config: MergeConfig,
  base: string,
  def: AnyModel,
  params: unknown,
  shapes: Record<string, number[]>,
  dir?: string,
): Promise<Record<string, Float32Array>> {
  const b = config.models?.[base];
  if (!b) throw new Error(`LoRA base "${base}" is not in the config`);
  if (!b.init) return def.init(params, initRng(config.run?.seed ?? 0, base));
  const tried = isAbsolute(b.init) || !dir ? [b.init] : [b.init, resolve(dir, b.init)];
  for (const file of tried) {
    let tensors: Awaited<ReturnType<typeof readSafetensors>>["tensors"];
    try {
      ({ tensors } = await readSafetensors(file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw e;
    }
    const out: Record<string, Float32Array> = {};
    for (const [path, shape] of Object.entries(shapes)) {
      const t = tensors[path];
      if (!t || t.shape.join() !== shape.join()) {
        throw new Error(`${file}: base tensor "${path}" missing or not [${shape}]`);
      }
      out[path] = toFloat32(t);
    }
    return out;
  }
  throw new Error(`LoRA base "${base}": no init file ${tried.map((f) => `"${f}"`).join(" or ")}`);
}
