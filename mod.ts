/**
 * ADD: Adversarial Diffusion Distillation in TypeScript on Deno.
 *
 * The engine traces tensor programs into a graph IR, differentiates them (to any order), writes whole training steps
 * as ONNX graphs and runs them on onnxruntime (cpu, wasm, webgpu) or on a float64 reference interpreter. The
 * pipeline runs YAML-configured DAGs of stage kinds; a user module registers its own kinds beside the built-in ones.
 * Importing this module registers nothing: call `registerBuiltins()` (or import `stages/mod.ts`) for the built-in
 * kinds.
 *
 * ```ts
 * // Fit p to 3 with AdamW (adamw, createExecutor, grad, mul, StepProgram, sub, sum and Trace are this module's):
 * // one compiled graph does forward, backward and update.
 * const tr = new Trace();
 * const p = tr.input("p", [1]), m = tr.input("m", [1]), v = tr.input("v", [1]), step = tr.input("step", []);
 * const loss = sum(mul(sub(p, 3), sub(p, 3)));
 * const r = adamw(p, grad(loss, { p }).p, m, v, step, { lr: 0.1 });
 * const ex = await createExecutor("reference");
 * const prog = await StepProgram.create(ex, tr.build({ loss, p: r.p, m: r.m, v: r.v }), {
 *   state: { p: "p", m: "m", v: "v" },
 * });
 * for (const k of ["p", "m", "v"]) prog.setState(k, new Float32Array(1));
 * for (let s = 1; s <= 100; s++) await prog.run({ step: Float32Array.of(s) }, ["loss"]);
 * const fitted = (await prog.readState("p"))[0];
 * if (Math.abs(fitted - 3) > 0.1) throw new Error(`p is ${fitted} after 100 steps, not about 3`);
 * await prog.dispose();
 * await ex.close();
 * ```
 *
 * @module
 */

// The engine: tracing, primitives and their math, derivatives, optimizers, packing, randomness, formats, executors.
export type { BinaryOp, CompareOp, ConvAttrs, DType, Graph, Node, NodeBase, Op, UnaryOp } from "./engine/ir.ts";
export {
  flattenTree,
  isTensor,
  Tensor,
  type TensorLike,
  Trace,
  TraceError,
  type Tree,
  unflattenTree,
} from "./engine/tensor.ts";
export {
  broadcastShapes,
  cast,
  concat,
  conv2d,
  conv2dGradInput,
  conv2dGradWeight,
  type ConvOptions,
  convOutShape,
  expand,
  gather,
  matmul,
  max,
  normalize,
  pad,
  reshape,
  slice,
  sliceAxis,
  softmax,
  stopGradient,
  sum,
  swapAxes,
  transpose,
  where,
} from "./engine/ops.ts";
export {
  abs,
  add,
  asTensor,
  cos,
  div,
  equal,
  erf,
  exp,
  full,
  greater,
  less,
  log,
  maximum,
  mean,
  minimum,
  mul,
  neg,
  onesLike,
  pow,
  reciprocal,
  relu,
  rsqrt,
  sigmoid,
  sign,
  sin,
  sqrt,
  square,
  sub,
  tanh,
  toFloat,
  zerosLike,
} from "./engine/math.ts";
export * as nn from "./engine/nn.ts";
export { grad, unbroadcast, valueAndGrad, vjp } from "./engine/grad.ts";
export {
  adamw,
  type AdamWConfig,
  type AdamWResult,
  clipByGlobalNorm,
  ema,
  globalNorm,
  lrFactor,
  lrFactorAt,
  type LrSchedule,
  sgd,
  type SgdConfig,
} from "./engine/optim.ts";
export {
  chunkLayout,
  chunkNames,
  type Layout,
  layoutOf,
  nest,
  pack,
  packChunks,
  packedInputs,
  packHost,
  packHostChunks,
  splitFlat,
  unpack,
  unpackChunks,
  unpackHost,
  unpackHostChunks,
} from "./engine/pack.ts";
export { Program, type ProgramBindings, ResidentStore, type StepOptions, StepProgram } from "./engine/program.ts";
export { Rng, type RngState } from "./engine/rng.ts";
export {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  type SafeTensor,
  type SafetensorsDType,
  SafetensorsError,
  type SafetensorsFile,
  type TensorData,
  type TensorInput,
  toFloat32,
  writeSafetensors,
} from "./engine/safetensors.ts";
export type {
  Buffer,
  BufferLimits,
  Executor,
  ExecutorName,
  HostArray,
  Prepared,
  PrepareOptions,
} from "./engine/executors/executor.ts";
export { packLimit, webGpuPackLimit } from "./engine/executors/executor.ts";
export { createExecutor } from "./engine/executors/auto.ts";
export { evaluate, ReferenceExecutor } from "./engine/executors/reference.ts";

// The pipeline: what a user module needs to register its own stage, model and dataset kinds and run the CLI.
export type {
  AnyDataset,
  AnyModel,
  AnyStage,
  At,
  Cadence,
  Dataset,
  DatasetDef,
  DatasetEnv,
  DatasetInfo,
  EffectContext,
  HostContext,
  KindCadence,
  ModelDef,
  ModelInfo,
  OptimizerRule,
  ParamError,
  ParamIssue,
  ParamResult,
  ParamSchema,
  PortSpec,
  StageDef,
  StageRole,
  TraceContext,
  TypeContext,
  UpdateContext,
  UpdateSlot,
} from "./pipeline/stage.ts";
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
export type { StageMemory, StageState, StateArray } from "./pipeline/stage_state.ts";
export { registerBuiltins } from "./stages/builtins.ts";
export { ConfigError, loadConfig } from "./pipeline/config.ts";
export type {
  Config,
  DatasetConfig,
  LoadedConfig,
  LoraConfig,
  ModelConfig,
  RunConfig,
  StageConfig,
} from "./pipeline/config.ts";
export { planPipeline } from "./pipeline/plan.ts";
export type {
  LoraPlan,
  MemoryEstimate,
  Phase,
  PhaseTracer,
  Plan,
  PlannedModel,
  PlannedStage,
  PlanOptions,
} from "./pipeline/plan.ts";
export type { LoraSpec } from "./models/lora.ts";
export { RunError, runPipeline } from "./pipeline/run.ts";
export type { RunOptions } from "./pipeline/run.ts";
export { checkpointFiles, latestCheckpoint, listCheckpoints, saveSnapshot } from "./pipeline/checkpoint.ts";
export type { CheckpointRef, CheckpointState, RunSnapshot } from "./pipeline/checkpoint.ts";
export { runCli } from "./pipeline/cli.ts";
export type { Print } from "./pipeline/cli.ts";
