/**
 * Helpers the two onnxruntime executors (`ort_node.ts`, `ort_web.ts`) share: dtype names, host views of buffers, feed
 * checks and the prepared-session wrapper. A module of its own, so that neither executor imports the other's runtime
 * and the factory (`auto.ts`) imports neither eagerly.
 *
 * @module
 */
import type { DType, Graph } from "../ir.ts";
import { onnxOutputNames } from "../onnx/lower.ts";
import { graphInputs, size } from "../ir.ts";
import type { Buffer, HostArray, Prepared } from "./executor.ts";

/** The ort tensor type of an IR dtype. */
export function ortType(d: DType): "float32" | "int32" | "bool" {
  return d === "f32" ? "float32" : d === "i32" ? "int32" : "bool";
}

/** Host data converted to the typed array ort expects for a dtype (always a copy, so the caller may reuse its array). */
export function hostData(
  data: HostArray,
  shape: readonly number[],
  dtype: DType,
): Float32Array | Int32Array | Uint8Array {
  if (data.length !== size(shape)) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
  if (dtype === "f32") return Float32Array.from(data);
  if (dtype === "i32") return Int32Array.from(data);
  const b = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) b[i] = data[i] ? 1 : 0;
  return b;
}

/** Throws unless every graph input is fed a buffer of its declared shape and dtype (ort's own errors are vaguer). */
export function checkFeeds(wanted: ReturnType<typeof graphInputs>, inputs: Record<string, Buffer>): void {
  for (const inp of wanted) {
    const buf = inputs[inp.name];
    if (buf === undefined) throw new Error(`run: missing input "${inp.name}"`);
    const same = buf.dtype === inp.dtype && buf.shape.length === inp.shape.length &&
      buf.shape.every((d, i) => d === inp.shape[i]);
    if (!same) {
      throw new Error(`run: input "${inp.name}" is ${buf.dtype}[${buf.shape}], graph wants ${inp.dtype}[${inp.shape}]`);
    }
  }
}

/** What the two onnxruntime packages' sessions have in common, for `sessionPrepared`. */
export interface OrtSession<T> {
  run(feeds: Record<string, T>): Promise<Record<string, unknown>>;
  release(): Promise<void>;
}

/**
 * The `Prepared` of an onnxruntime session over a lowered graph, shared by the cpu, wasm and webgpu executors: feeds
 * the executor's tensors by input name, maps results back to the IR's output names (see `onnxOutputNames`), and
 * releases the session once (`sessions` tracks the executor's open ones).
 */
export function sessionPrepared<T>(
  graph: Graph,
  session: OrtSession<T>,
  sessions: Set<OrtSession<T>>,
  own: (b: Buffer) => { tensor: T },
  wrap: (t: T, shape: readonly number[], dtype: DType) => Buffer,
): Prepared {
  sessions.add(session);
  const wanted = graphInputs(graph);
  const inputNames = wanted.map((i) => i.name);
  const outputNames = graph.outputs.map((o) => o.name);
  const onnxNames = onnxOutputNames(graph);
  const meta = graph.outputs.map((o) => graph.nodes[o.node]);
  return {
    inputNames,
    outputNames,
    run: async (inputs) => {
      checkFeeds(wanted, inputs);
      const feeds: Record<string, T> = {};
      for (const name of inputNames) feeds[name] = own(inputs[name]).tensor;
      const res = await session.run(feeds);
      const out: Record<string, Buffer> = {};
      outputNames.forEach((name, i) => (out[name] = wrap(res[onnxNames[i]] as T, meta[i].shape, meta[i].dtype)));
      return out;
    },
    dispose: async () => {
      if (!sessions.delete(session)) return;
      await session.release();
    },
  };
}
