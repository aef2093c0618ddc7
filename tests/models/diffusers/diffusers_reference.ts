// The comparison the diffusers UNet tests share: a diffusers folder's weights are loaded under their own keys, the
// project's forward and the gradients of Σ out · loss_weight are traced (engine rule table, cpu executor), and every
// output is compared with the real diffusers' float64 values in the fixture's *_io.safetensors.
import { createExecutor } from "../../../engine/executors/auto.ts";
import { grad } from "../../../engine/grad.ts";
import { mul } from "../../../engine/math.ts";
import { sum } from "../../../engine/ops.ts";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { type Tensor, Trace } from "../../../engine/tensor.ts";

export const FIXTURES = new URL("../../fixtures/diffusers/", import.meta.url).pathname;

/** max |a − b| / max |b|: relative to the output's scale, as float32 rounding of a deep network is. */
export function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num = Math.max(num, Math.abs(a[i] - b[i])), den = Math.max(den, Math.abs(b[i]));
  return num / den;
}

export interface ReferenceCase {
  /** The model folder's weights file, relative to the fixtures folder. */
  weights: string;
  /** The safetensors dtype every weight must have on disk. */
  dtype: string;
  /** The io file, relative to the fixtures folder. */
  io: string;
  /** Every parameter's shape under its diffusers key. */
  shapes: Record<string, number[]>;
  /** The io tensors that are model inputs (not weights), in the order `forward` takes them. */
  inputs: string[];
  forward: (p: Record<string, Tensor>, inputs: Tensor[]) => Tensor;
}

async function loadChecked(c: ReferenceCase) {
  const weights = (await readSafetensors(`${FIXTURES}${c.weights}`)).tensors;
  const missing = Object.keys(c.shapes).filter((k) => !weights[k]);
  const extra = Object.keys(weights).filter((k) => !c.shapes[k]);
  if (missing.length || extra.length) throw new Error(`keys: missing ${missing}, unexpected ${extra}`);
  for (const [k, s] of Object.entries(c.shapes)) {
    if (weights[k].shape.join() !== s.join() || weights[k].dtype !== c.dtype) {
      throw new Error(`${k}: ${weights[k].dtype} ${weights[k].shape}, expected ${c.dtype} ${s}`);
    }
  }
  return weights;
}

/** Each output's max relative error against diffusers', by the io file's names (`out`, `grad.<name>`). */
export async function compareWithDiffusers(c: ReferenceCase): Promise<Record<string, number>> {
  const weights = await loadChecked(c);
  const io = (await readSafetensors(`${FIXTURES}${c.io}`)).tensors;
  const tr = new Trace();
  const p = Object.fromEntries(Object.entries(c.shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const xs = c.inputs.map((k) => tr.input(k, io[k].shape));
  const w = tr.input("loss_weight", io.loss_weight.shape);
  const out = c.forward(p, xs);
  const gradNames = Object.keys(io).filter((k) => k.startsWith("grad.")).map((k) => k.slice(5));
  const wrt = Object.fromEntries(gradNames.map((k) => [k, c.inputs.includes(k) ? xs[c.inputs.indexOf(k)] : p[k]]));
  const g = grad(sum(mul(out, w)), wrt);
  const outputs = { out, ...Object.fromEntries(gradNames.map((k) => [`grad.${k}`, g[k]])) };
  const ex = await createExecutor("cpu");
  try {
    const prepared = await ex.prepare(tr.build(outputs));
    const feeds: Record<string, Float32Array> = {};
    for (const k of Object.keys(c.shapes)) feeds[k] = toFloat32(weights[k]);
    for (const k of [...c.inputs, "loss_weight"]) feeds[k] = toFloat32(io[k]);
    const bufs = Object.fromEntries(
      prepared.inputNames.map((n) => [n, ex.upload(feeds[n], [...(c.shapes[n] ?? io[n].shape)], "f32")]),
    );
    const res = await prepared.run(bufs);
    const errs: Record<string, number> = {};
    for (const [name, buf] of Object.entries(res)) {
      errs[name] = maxRel(await ex.read(buf) as Float32Array, toFloat32(io[name]));
    }
    return errs;
  } finally {
    await ex.close();
  }
}

/** Throws one message listing every output whose error is not below `tol` (NaN included). */
export function assertClose(errs: Record<string, number>, tol = 1e-4) {
  const bad = Object.entries(errs).filter(([, e]) => !(e < tol)).map(([k, e]) => `${k}: ${e.toExponential(2)}`);
  if (bad.length) throw new Error(`differs from diffusers (max |Δ| / max |ref|): ${bad.join("; ")}`);
}

/** Expects `fn` to throw one line that starts with `source: ` and contains `want`. */
export function expectOneLine(fn: () => unknown, source: string, want: string) {
  let msg = "";
  try {
    fn();
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.startsWith(`${source}: `) || !msg.includes(want) || msg.includes("\n")) {
    throw new Error(`expected one line with "${want}", got "${msg}"`);
  }
}
