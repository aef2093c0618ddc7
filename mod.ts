/**
 * ADD: Adversarial Diffusion Distillation in TypeScript on Deno.
 *
 * The engine traces tensor programs into a graph IR, differentiates them (to any order), writes whole training steps
 * as ONNX graphs and runs them on onnxruntime (cpu, wasm, webgpu) or on a float64 reference interpreter.
 *
 * ```ts
 * import { adamw, createExecutor, grad, mse, StepProgram, Trace } from "./mod.ts";
 * ```
 *
 * @module
 */
export * from "./engine/ir.ts";
export * from "./engine/tensor.ts";
export * from "./engine/ops.ts";
export * from "./engine/math.ts";
export * as nn from "./engine/nn.ts";
export { grad, RULES, unbroadcast, valueAndGrad, vjp } from "./engine/grad.ts";
export * from "./engine/optim.ts";
export * from "./engine/pack.ts";
export * from "./engine/program.ts";
export * from "./engine/rng.ts";
export * from "./engine/safetensors.ts";
export type * from "./engine/executors/executor.ts";
export { createExecutor } from "./engine/executors/auto.ts";
export { evaluate, ReferenceExecutor } from "./engine/executors/reference.ts";
