/**
 * A model's initial weights, as a run starts it: read from its `init` file (relative to the config) and checked
 * against its shapes, or made by its kind's initialiser from the run's seed.
 *
 * @module
 */
import { layoutOf } from "../engine/pack.ts";
import { Rng } from "../engine/rng.ts";
import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import type { LoadedConfig } from "./config.ts";
import { RunError } from "./errors.ts";
import type { Plan } from "./plan.ts";
import { modelKinds } from "./stage.ts";

/** The weights of model `m` from its init file `path` (relative to the config's folder unless absolute). */
export async function readInitFile(
  loaded: LoadedConfig,
  plan: Plan,
  m: string,
  path: string,
): Promise<Record<string, Float32Array>> {
  const want = layoutOf(plan.models[m].shapes);
  const baseDir = loaded.file.replace(/[^/]*$/, "") || "./";
  const file = path.startsWith("/") ? path : `${baseDir}${path}`;
  let tensors: Awaited<ReturnType<typeof readSafetensors>>["tensors"];
  try {
    ({ tensors } = await readSafetensors(file));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new RunError(`${loaded.file}: models.${m}.init: no such file "${file}"`);
  }
  const vals: Record<string, Float32Array> = {};
  for (const e of want.entries) {
    const t = tensors[e.path];
    if (!t) throw new RunError(`${file}: model "${m}" needs tensor "${e.path}" [${e.shape}], not in the file`);
    if (t.shape.join(",") !== e.shape.join(",")) {
      throw new RunError(`${file}: tensor "${e.path}" is [${t.shape}], model "${m}" expects [${e.shape}]`);
    }
    vals[e.path] = toFloat32(t);
  }
  return vals;
}

/** Model `m`'s weights at step 0 of a run with `seed`: its init file's, or its kind's initialiser's. */
export function initialWeights(
  loaded: LoadedConfig,
  plan: Plan,
  m: string,
  seed: number,
): Promise<Record<string, Float32Array>> {
  const info = plan.models[m];
  if (info.init) return readInitFile(loaded, plan, m, info.init);
  return Promise.resolve(modelKinds().get(info.kind)!.init(info.params, initRng(seed, m)));
}

/** The stream a model's kind initialiser draws from. */
export const initRng = (seed: number, m: string): Rng => new Rng(seed).fold(`init/${m}`);
