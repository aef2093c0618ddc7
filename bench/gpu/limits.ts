/**
 * What a WebGPU adapter's limits allow the engine. Each model's parameters are packed into flat tensors
 * (engine/pack.ts), and so are its gradient, each optimizer slot and its EMA; a model whose packing is larger than the
 * largest buffer the device takes is split at parameter boundaries into several (`chunkLayout`, under the webgpu
 * executor's `packLimit`). So one buffer bounds the largest single parameter, and the largest model is bounded by the
 * GPU's memory, not by one buffer.
 *
 * @module
 */
import { type BufferLimits, webGpuPackLimit } from "../../engine/executors/executor.ts";

export type { BufferLimits };

/** A model a user of the engine brings: its parameter count and its largest parameter's. */
export interface ModelSize {
  params: number;
  largest: number;
}

/**
 * Models by size. The teacher's and both Stable Diffusion UNets' figures are computed from their configs here
 * (bench/sd15_config.ts; 2.1's is 1.5's with 1024-wide text, [5, 10, 20, 20] heads and linear projections); each
 * UNet's largest parameter is `up_blocks.0.resnets.0.conv1.weight` [1280, 2560, 3, 3]. SDXL's total is the published
 * one and its largest the same 2560 → 1280 3×3 conv from its architecture, not computed (the project's UNet kind has
 * no SDXL text-time embedding).
 */
export const MODEL_SIZES: Record<string, ModelSize> = {
  "configs/teacher.yaml UNet": { params: 4_232_339, largest: 294_912 },
  "Stable Diffusion 1.5 UNet": { params: 859_520_964, largest: 29_491_200 },
  "Stable Diffusion 2.1 UNet": { params: 865_910_724, largest: 29_491_200 },
  "SDXL UNet": { params: 2_567_463_684, largest: 29_491_200 },
};

/** The parameters of `bytesPerParam` bytes in the largest packed buffer (whole 16-byte units of both limits). */
export function largestPackedBuffer(limits: BufferLimits, bytesPerParam = 4): number {
  return bytesPerParam === 4
    ? webGpuPackLimit(limits)
    : Math.floor(Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize) / 16) * 16 / bytesPerParam;
}

/** Copies of a trained model's packing a step holds resident: weights, gradient, AdamW's m and v, an EMA. */
export const TRAINING_COPIES = 5;

/**
 * The largest model a run trains: no longer one buffer's worth (the packing splits), but what `memoryBytes` of GPU
 * memory holds in `TRAINING_COPIES` copies, before activations; Infinity where the memory is not known (WebGPU does
 * not report it). Zero when not even one parameter of `bytesPerParam` fits a buffer.
 */
export function largestPackedModel(limits: BufferLimits, memoryBytes = Infinity, bytesPerParam = 4): number {
  if (largestPackedBuffer(limits, bytesPerParam) < 1) return 0;
  return Math.floor(memoryBytes / (TRAINING_COPIES * bytesPerParam));
}

/** How a model packs under `limits`: whether its largest parameter fits one buffer, and in how many buffers at least. */
export interface ModelPacking {
  fits: boolean;
  buffers: number;
}

/**
 * For each model of `sizes`: whether it packs under `limits` (its largest fp32 parameter fits one buffer) and the
 * fewest buffers its parameters take (the greedy split at parameter boundaries may take a few more).
 */
export function modelFits(limits: BufferLimits, sizes = MODEL_SIZES): Record<string, ModelPacking> {
  const per = largestPackedBuffer(limits);
  return Object.fromEntries(
    Object.entries(sizes).map(([name, s]) => [name, { fits: s.largest <= per, buffers: Math.ceil(s.params / per) }]),
  );
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
