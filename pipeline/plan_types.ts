/**
 * What planning makes of a config: the validated stages, the update phases they compile into, and the memory
 * estimate the run was checked against. The scheduler, the run loop and `--dry-run` read it.
 *
 * @module
 */
import type { Graph } from "../engine/ir.ts";
import type { LoraSpec } from "../models/lora.ts";
import type { Cadence } from "./cadence.ts";
import type { AnyStage, DatasetInfo, ModelInfo, PortSpec } from "./stage.ts";

/** A stage after validation. */
export interface PlannedStage {
  /** The name the config declares it under. */
  name: string;
  /** Its registered kind. */
  def: AnyStage;
  /** Its params, parsed by the kind's schema. */
  params: unknown;
  /** Input port → producing stage and port. */
  inputs: Record<string, { stage: string; port: string }>;
  /** Types of the connected inputs, by port. */
  inputTypes: Record<string, PortSpec>;
  /** Types of its outputs, by port, as the kind's `types` gave them. */
  outputs: Record<string, PortSpec>;
  /** Steps between runs of an optimizer's phase (1 for other stages). */
  every: number;
  /** When an effect fires (pipeline/cadence.ts). */
  cadence: Cadence;
}

/** A declared model after validation. */
export interface PlannedModel extends ModelInfo {
  /** Its initial weights' safetensors file, relative to the config. */
  init?: string;
  /**
   * Its low-rank adapters (models/lora.ts), when it trains them on `base`'s frozen weights: the store then holds
   * the adapters (`shapes` of `LoraPlan`) under this model's name, and its forward pass sees the merged weights.
   */
  lora?: LoraPlan;
}

/** A model's LoRA as planned: the targets resolved to weights, and what is stored instead of the weights. */
export interface LoraPlan extends LoraSpec {
  /** The frozen model whose weights are the base. */
  base: string;
  /** The `targets` regular expressions as the config gave them. */
  patterns: string[];
  /** Each adapter's shape (A and B per target), the model's stored layout. */
  shapes: Record<string, number[]>;
}

/** The shapes a model holds in the run's store: its adapters when it has LoRA, else its parameters. */
export const storedShapes = (m: PlannedModel): Record<string, number[]> => m.lora?.shapes ?? m.shapes;

/**
 * One compiled graph: the traced stages feeding one optimizer, run every `every` steps. A step runs the phases in the
 * declaration order of their optimizers.
 */
export interface Phase {
  /** The optimizer stage that closes the phase. */
  optimizer: string;
  /** Traced stages in topological order. */
  stages: string[];
  /** Models whose parameters this phase updates. */
  updates: string[];
  /** Models this phase only reads. */
  reads: string[];
  /** Steps between runs (the optimizer's `every`). */
  every: number;
}

/** The validated pipeline and its execution plan. */
export interface Plan {
  /** Every stage, in topological order (declaration order where the data flow leaves it free). */
  order: string[];
  /** The stages by name. */
  stages: Record<string, PlannedStage>;
  /** The declared models, with their parameter shapes, `init` file and low-rank adapters. */
  models: Record<string, PlannedModel>;
  /** The declared datasets. */
  datasets: Record<string, DatasetInfo>;
  /** The update phases, in the declaration order of their optimizers. */
  phases: Phase[];
  /**
   * Host stages in topological order. All of them run every step, before the phases, whether or not a phase is due:
   * their outputs feed the phases, the effects and later host stages.
   */
  hosts: string[];
  /** Effect stages in topological order: after a step's phases, each runs when its cadence is due. */
  effects: string[];
  /** Problems that do not stop the run (an output nothing reads), as `file:line:col: warning: …` lines. */
  warnings: string[];
  /** The memory estimate the plan was checked against (see `MemoryEstimate`). */
  memory: MemoryEstimate;
  /** Node count of each traced update phase, by optimizer, when planning traced them. */
  traced?: Record<string, number>;
}

/**
 * What planning expects the run to hold at once, in bytes. A simple estimate from shapes, made before anything is
 * allocated:
 *
 * - `models`: each model's parameters × 4 bytes × copies: its values, plus one per state slot of the optimizer that
 *   updates it (AdamW's m and v). EMAs, checkpoints and datasets are not counted.
 * - `step`: one step's tensors. From port types (`basis: "ports"`): every stage output plus one gradient per updated
 *   parameter. From the traced graphs (`basis: "traced"`): the largest update phase's peak of live values, each value
 *   held from the node that makes it to its last use and the phase's inputs (the batch, noise) held throughout — what
 *   an executor that frees dead values needs.
 */
export interface MemoryEstimate {
  /** Per model: parameter count, copies held, their bytes, whether an optimizer updates it, and its state slots. */
  models: Record<string, { params: number; copies: number; bytes: number; updated: boolean; state?: string[] }>;
  /** Bytes of one step's tensors. */
  step: number;
  /** What `step` was estimated from. */
  basis: "ports" | "traced";
  /** The models' bytes plus `step`. */
  total: number;
  /** This machine's memory (`Deno.systemMemoryInfo().total`); Infinity where it may not be read. */
  machine: number;
}

/** Traces one update phase of the plan being checked (the command line passes `tracePhase` of trace_phase.ts). */
export type PhaseTracer = (
  plan: Plan,
  phase: Phase,
) => { graph: Graph; stateIn: Record<string, string>; feeds: Record<string, string> };

/** Options of `planPipeline`. */
export interface PlanOptions {
  /**
   * Trace every update phase while planning, so that what tracing throws is a config error at the stage and the
   * step's memory is estimated from the traced graphs. Without it planning stops at port types.
   */
  tracer?: PhaseTracer;
  /** The machine's memory in bytes, instead of the system's (tests). */
  machineMemory?: number;
}
