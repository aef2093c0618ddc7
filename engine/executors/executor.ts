/**
 * The one narrow interface every executor implements: upload, read, prepare (compile) a graph, run it.
 *
 * Buffers are opaque handles owned by the executor (host arrays on cpu and the reference, GPU buffers on webgpu), so
 * state that is fed back step after step never leaves the device. Only what the caller `read`s crosses back.
 *
 * @module
 */
import type { DType, Graph } from "../ir.ts";

/** Host-side data of a tensor. Floats are Float32Array (Float64Array accepted by the reference), bools Uint8Array. */
export type HostArray = Float32Array | Float64Array | Int32Array | Uint8Array;

/** A tensor living on an executor. Opaque apart from its shape and dtype. */
export interface Buffer {
  /** Static shape, row-major. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
}

/** A graph compiled for one executor. */
export interface Prepared {
  /** Names of the graph's inputs, in order. */
  readonly inputNames: readonly string[];
  /** Names of the graph's outputs, in order. */
  readonly outputNames: readonly string[];
  /** Runs the graph. Every input must be given. Returned buffers belong to the caller (dispose them). */
  run(inputs: Record<string, Buffer>): Promise<Record<string, Buffer>>;
  /** Releases the compiled session. */
  dispose(): Promise<void>;
}

/** Options for `Executor.prepare`. */
export interface PrepareOptions {
  /** Outputs that should stay on the device (fed back as inputs next step); others may come back to the host. */
  resident?: readonly string[];
}

/** An engine backend. */
export interface Executor {
  /** `cpu`, `wasm`, `webgpu` or `reference`. */
  readonly name: string;
  /** Copies host data into a new executor buffer. */
  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer;
  /** Copies a buffer back to the host (float32 for floats; float64 on the reference). */
  read(buf: Buffer): Promise<HostArray>;
  /** Frees a buffer. Disposing twice is an error. */
  dispose(buf: Buffer): void;
  /** Compiles a graph. */
  prepare(graph: Graph, opts?: PrepareOptions): Promise<Prepared>;
  /** Number of buffers allocated and not yet disposed (for leak tests). */
  liveBuffers(): number;
  /** Releases everything the executor holds. */
  close(): Promise<void>;
}

/** The executors the engine knows by name. */
export type ExecutorName = "cpu" | "wasm" | "webgpu" | "reference" | "auto";
