/**
 * Picks and creates an executor by name, and holds the small helpers the two onnxruntime executors share.
 *
 * Every executor module is imported lazily: onnxruntime-node loads a native addon and onnxruntime-web a 10–30 MB wasm
 * build, so a process pays only for the one it uses.
 *
 * @module
 */
import type { DType, Graph } from "../ir.ts";
import { onnxOutputNames } from "../onnx/lower.ts";
import { graphInputs, size } from "../ir.ts";
import type { Buffer, Executor, ExecutorName, HostArray, Prepared } from "./executor.ts";

/** Adapter names of software renderers, which are slower than onnxruntime on the CPU. */
const SOFTWARE_ADAPTERS = /llvmpipe|lavapipe|swiftshader/i;

/** Whether `navigator.gpu` offers a hardware adapter (not a fallback/software one). */
export async function hasHardwareGpu(): Promise<boolean> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (!gpu) return false;
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch {
    return false;
  }
  if (!adapter) return false;
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  if (info.isFallbackAdapter || (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter) return false;
  const names = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`;
  return !SOFTWARE_ADAPTERS.test(names);
}

/**
 * Creates an executor. `auto` is `webgpu` on a hardware GPU adapter, else `cpu`.
 */
export async function createExecutor(name: ExecutorName): Promise<Executor> {
  switch (name) {
    case "cpu": {
      const { OrtNodeExecutor } = await import("./ort_node.ts");
      return new OrtNodeExecutor();
    }
    case "wasm": {
      const { createWasmExecutor } = await import("./ort_web.ts");
      return await createWasmExecutor();
    }
    case "webgpu": {
      const { createWebGpuExecutor } = await import("./ort_web.ts");
      return await createWebGpuExecutor();
    }
    case "reference": {
      const { ReferenceExecutor } = await import("./reference.ts");
      return new ReferenceExecutor();
    }
    case "auto":
      return await createExecutor((await hasHardwareGpu()) ? "webgpu" : "cpu");
    default:
      throw new Error(`unknown executor "${name as string}"`);
  }
}

// Helpers shared by ort_node.ts and ort_web.ts, kept here so neither has to import the other's runtime.

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
