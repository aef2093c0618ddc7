/**
 * What a WebGPU adapter's limits allow the engine: each model's parameters are one packed flat tensor (engine/pack.ts),
 * and so is each optimizer slot of it, and onnxruntime's WebGPU EP binds a tensor as one storage buffer. So the largest
 * model a run can hold is bounded by the largest buffer a shader may bind, whatever the GPU's memory.
 *
 * @module
 */

/** The limits that bound one tensor's buffer (the adapter's, which onnxruntime asks its device for). */
export interface BufferLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
}

/** Models a user of the engine brings, by parameter count, to say which of them fit. */
export const MODEL_SIZES: Record<string, number> = {
  "configs/teacher.yaml UNet": 4_232_339,
  "Stable Diffusion 1.5 UNet": 859_520_964,
  "Stable Diffusion 2.1 UNet": 865_910_724,
  "SDXL UNet": 2_567_463_684,
};

/** The largest number of parameters whose packed tensor (of `bytesPerParam` each) fits one bindable buffer. */
export function largestPackedModel(limits: BufferLimits, bytesPerParam = 4): number {
  const bytes = Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize);
  return Math.floor(bytes / bytesPerParam);
}

/** For each model of `sizes`: whether its packed fp32 parameters fit one buffer under `limits`. */
export function modelFits(limits: BufferLimits, sizes = MODEL_SIZES): Record<string, boolean> {
  const most = largestPackedModel(limits);
  return Object.fromEntries(Object.entries(sizes).map(([name, n]) => [name, n <= most]));
}

/** The adapter's description and every limit it reports, as plain data for a results file. */
export interface AdapterReport {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  fallback: boolean;
  limits: Record<string, number>;
}

/** Asks `navigator.gpu` for its adapter; null when there is none. */
export async function adapterReport(): Promise<AdapterReport | null> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" }).catch(() => null);
  if (!adapter) return null;
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const limits: Record<string, number> = {};
  // GPUSupportedLimits keeps its values on the prototype as getters: for…in walks them, Object.keys does not.
  for (const k in adapter.limits) limits[k] = (adapter.limits as unknown as Record<string, number>)[k];
  const fallback = Boolean(info.isFallbackAdapter ?? (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter);
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    fallback,
    limits,
  };
}
