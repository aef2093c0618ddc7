/**
 * A diffusers model folder's forward pass on one of the engine's executors, for `deno task diffusers forward`: the
 * folder (or hub id, downloaded when not cached) is opened and checked, its weights read as float32, the named inputs
 * checked against the class's, and the outputs read back to the host.
 *
 * @module
 */
import { createExecutor } from "../../engine/executors/auto.ts";
import type { ExecutorName } from "../../engine/executors/executor.ts";
import type { SafeTensor } from "../../engine/safetensors.ts";
import { toFloat32 } from "../../engine/safetensors.ts";
import { Trace } from "../../engine/tensor.ts";
import { type DiffusersClass, diffusersClass, isProblem } from "./classes.ts";
import {
  type DiffusersFolder,
  DiffusersFolderError,
  downloadHubFolder,
  type HubOptions,
  isHubId,
  loadWeights,
  openFolder,
  weightMap,
} from "./folder.ts";

/** A model ready to run: its folder, class, parsed config and float32 weights. */
export interface LoadedModel {
  /** Where it was read from. */
  folder: DiffusersFolder;
  /** Its class's entry. */
  // deno-lint-ignore no-explicit-any
  cls: DiffusersClass<any>;
  /** The class's parsed config. */
  cfg: unknown;
  /** Parameter key → shape. */
  shapes: Record<string, number[]>;
  /** Parameter key → values. */
  weights: Record<string, Float32Array>;
}

const isDir = (p: string) => Deno.stat(p).then((s) => s.isDirectory, () => false);

/**
 * Opens `path` (a folder, or a hub id: the cached copy, else downloaded with `hub.fetch`) and reads its weights;
 * every problem is one line naming the file or the id.
 */
export async function loadModel(path: string, opts: HubOptions = {}): Promise<LoadedModel> {
  let folder: DiffusersFolder;
  try {
    folder = openFolder(path, opts);
  } catch (e) {
    // Not a folder and not cached (or cached only in part): a hub id is fetched, what is cached is kept.
    if (!(e instanceof DiffusersFolderError) || !isHubId(path) || await isDir(path)) throw e;
    await downloadHubFolder(path, opts);
    folder = openFolder(path, opts);
  }
  const cls = diffusersClass(folder.className, folder.configFile);
  const cfg = cls.config(folder.json, folder.configFile);
  const shapes = cls.shapes(cfg);
  return { folder, cls, cfg, shapes, weights: loadWeights(weightMap(folder.dir, opts.variant), shapes) };
}

/** The class's input set the file holds all of (`inputs` first), else its `inputs`. */
function inputSet(m: LoadedModel, inputs: Record<string, SafeTensor>): readonly string[] {
  const sets = [m.cls.inputs, ...(m.cls.alternatives ?? [])];
  return sets.find((set) => set.every((k) => inputs[k])) ?? m.cls.inputs;
}

/** Checks `inputs` (from `source`) against the class's: one line naming the file and the tensor at fault. */
export function checkInputs(m: LoadedModel, inputs: Record<string, SafeTensor>, source: string): void {
  const names = inputSet(m, inputs), missing = names.filter((k) => !inputs[k]);
  if (missing.length) {
    const what = missing.length === 1 ? "tensor" : "tensors";
    const takes = [m.cls.inputs, ...(m.cls.alternatives ?? [])].map((set) => set.join(", ")).join(" or ");
    throw new DiffusersFolderError(
      source,
      `no ${what} ${missing.map((k) => `"${k}"`).join(", ")} (a ${m.folder.className} takes ${takes})`,
    );
  }
  const shapes = Object.fromEntries(names.map((k) => [k, inputs[k].shape]));
  const out = m.cls.outputShapes(m.cfg, shapes);
  if (isProblem(out)) throw new DiffusersFolderError(source, `tensor "${out.input}" ${out.message}`);
}

/** Runs the forward pass of `m` on `inputs` on `executor`; the outputs by name, as float32. */
export async function runForward(
  m: LoadedModel,
  inputs: Record<string, SafeTensor>,
  executor: ExecutorName = "cpu",
): Promise<Record<string, { data: Float32Array; shape: number[] }>> {
  const tr = new Trace();
  const p = Object.fromEntries(Object.entries(m.shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const names = inputSet(m, inputs);
  const x = Object.fromEntries(names.map((k) => [k, tr.input(`input.${k}`, inputs[k].shape)]));
  const outs = m.cls.forward(m.cfg, p, x);
  const ex = await createExecutor(executor);
  try {
    const prepared = await ex.prepare(tr.build(outs));
    const feeds: Record<string, { data: Float32Array; shape: readonly number[] }> = {};
    for (const [k, s] of Object.entries(m.shapes)) feeds[k] = { data: m.weights[k], shape: s };
    for (const k of names) feeds[`input.${k}`] = { data: toFloat32(inputs[k]), shape: inputs[k].shape };
    const bufs = Object.fromEntries(
      prepared.inputNames.map((n) => [n, ex.upload(feeds[n].data, feeds[n].shape, "f32")]),
    );
    const res = await prepared.run(bufs);
    const result: Record<string, { data: Float32Array; shape: number[] }> = {};
    for (const [name, buf] of Object.entries(res)) {
      result[name] = { data: Float32Array.from(await ex.read(buf)), shape: [...buf.shape] };
    }
    await prepared.dispose();
    return result;
  } finally {
    await ex.close();
  }
}
