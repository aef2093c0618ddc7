/**
 * Picks and creates an executor by name (the onnxruntime executors' shared helpers are in `ort_shared.ts`).
 *
 * Every executor module is imported lazily: onnxruntime-node loads a native addon and onnxruntime-web a 10–30 MB wasm
 * build, so a process pays only for the one it uses.
 *
 * @module
 */
import type { Executor, ExecutorName } from "./executor.ts";

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
