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

// The pipeline: what a user module needs to register its own stage, model and dataset kinds and run the CLI.
// Importing this module registers the built-in kinds (those of `stages/mod.ts`), so a user's config can mix them
// with its own.
import "./stages/mod.ts";
export { z } from "zod";
export type {
  Dataset,
  DatasetDef,
  DatasetInfo,
  EffectContext,
  HostContext,
  ModelDef,
  ModelInfo,
  OptimizerRule,
  PortSpec,
  StageDef,
  StageRole,
  TraceContext,
  TypeContext,
  UpdateContext,
  UpdateSlot,
} from "./pipeline/stage.ts";
export type { StageMemory, StageState, StateArray } from "./pipeline/stage_state.ts";
export {
  datasetKinds,
  expectPort,
  fmtSpec,
  modelKinds,
  registerDataset,
  registerModel,
  registerStage,
  stageKinds,
  StageTypeError,
} from "./pipeline/stage.ts";
export { ConfigError, loadConfig } from "./pipeline/config.ts";
export type { LoadedConfig } from "./pipeline/config.ts";
export { planPipeline } from "./pipeline/plan.ts";
export type { Plan } from "./pipeline/plan.ts";
export { RunError, runPipeline } from "./pipeline/run.ts";
export type { RunOptions } from "./pipeline/run.ts";
export { checkpointFiles, latestCheckpoint, listCheckpoints, saveSnapshot } from "./pipeline/checkpoint.ts";
export type { CheckpointRef, CheckpointState, RunSnapshot } from "./pipeline/checkpoint.ts";
export { runCli } from "./pipeline/cli.ts";
