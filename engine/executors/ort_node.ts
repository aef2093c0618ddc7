/**
 * The `cpu` executor: lowered ONNX graphs on onnxruntime-node's native CPU execution provider, multi-threaded.
 *
 * Buffers are ort CPU tensors wrapping host typed arrays. Import this module lazily (see `auto.ts`) so processes on
 * another executor never load the native addon.
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { type DType, type Graph, graphInputs, size } from "../ir.ts";
import { type GradWeightLowering, lowerToOnnx } from "../onnx/lower.ts";
import { hostData, ortType, sessionPrepared } from "./ort_shared.ts";
import {
  type Buffer,
  CPU_CONSTANT_LIMIT,
  CPU_PACK_LIMIT,
  type Executor,
  type HostArray,
  type Prepared,
  type PrepareOptions,
} from "./executor.ts";

/** Prefix of onnxruntime profile files, from the environment (unset: no profiling). */
const PROFILE = Deno.env.get("ADD_ORT_PROFILE") ?? "";

/**
 * The conv weight-gradient lowering, from the environment for measurements (`ADD_GRAD_WEIGHT=gemm|matmul|conv`;
 * unset: the cpu default). Every choice is tested against the reference interpreter.
 */
function gradWeightFromEnv(): GradWeightLowering | undefined {
  const v = Deno.env.get("ADD_GRAD_WEIGHT");
  if (v === undefined || v === "") return undefined;
  if (v === "gemm" || v === "matmul" || v === "conv") return v;
  throw new Error(`ADD_GRAD_WEIGHT=${v}: expected gemm, matmul or conv`);
}
const GRAD_WEIGHT = gradWeightFromEnv();

/** Graphs whose inputs (weights, state, batch) hold more than this run without onnxruntime's CPU arena. */
export const ARENA_LIMIT_BYTES = 2 ** 30;

/**
 * Whether onnxruntime's CPU arena serves a graph whose inputs hold `inputBytes` (`ADD_CPU_ARENA=0|1` forces it; unset:
 * on below `ARENA_LIMIT_BYTES`). The arena keeps every chunk it took and grows by powers of two: at Stable Diffusion
 * 1.5's size (3.4 GB of weights) it held about 5 GB past its use, so a second ADD step peaked at 19.8 GB against 14.8
 * GB without it, for a step about 13% slower (bench:sd15, docs/benchmarks.md); small graphs keep its speed.
 */
export function cpuArena(inputBytes: number, v = Deno.env.get("ADD_CPU_ARENA")): boolean {
  if (v === undefined || v === "") return inputBytes <= ARENA_LIMIT_BYTES;
  if (v === "0" || v === "1") return v === "1";
  throw new Error(`ADD_CPU_ARENA=${v}: expected 0 or 1`);
}

const DTYPE_BYTES: Record<DType, number> = { f32: 4, i32: 4, bool: 1 };

/**
 * Intra-op threads from the environment (`ADD_CPU_THREADS=N`; unset: every core). Jobs that share a machine each
 * take their share: onnxruntime's threads spin while they wait, so two jobs with a thread per core each slow both.
 */
export function cpuThreadsFromEnv(v = Deno.env.get("ADD_CPU_THREADS")): number {
  if (v === undefined || v === "") return navigator.hardwareConcurrency || 1;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`ADD_CPU_THREADS=${v}: expected an integer ≥ 1`);
  return n;
}

class NodeBuffer implements Buffer {
  disposed = false;
  constructor(
    readonly owner: object,
    readonly tensor: ort.Tensor,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {}
}

/** The `cpu` executor (onnxruntime-node). */
export class OrtNodeExecutor implements Executor {
  readonly name = "cpu";
  readonly packLimit = CPU_PACK_LIMIT;
  readonly constantLimit = CPU_CONSTANT_LIMIT;
  private live = 0;
  private readonly sessions = new Set<ort.InferenceSession>();

  /** @param threads intra-op threads; defaults to `ADD_CPU_THREADS`, else every core. */
  constructor(private readonly threads = cpuThreadsFromEnv()) {}

  private wrap(t: ort.Tensor, shape: readonly number[], dtype: DType): NodeBuffer {
    this.live++;
    return new NodeBuffer(this, t, [...shape], dtype);
  }

  private own(buf: Buffer): NodeBuffer {
    if (!(buf instanceof NodeBuffer) || buf.owner !== this) {
      throw new Error("cpu executor: buffer from another executor");
    }
    if (buf.disposed) throw new Error("cpu executor: buffer already disposed");
    return buf;
  }

  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer {
    return this.wrap(new ort.Tensor(ortType(dtype), hostData(data, shape, dtype), [...shape]), shape, dtype);
  }

  read(buf: Buffer): Promise<HostArray> {
    const data = this.own(buf).tensor.data as Float32Array | Int32Array | Uint8Array;
    return Promise.resolve(data.slice());
  }

  dispose(buf: Buffer): void {
    const b = this.own(buf);
    b.disposed = true;
    this.live--;
    // Drops the tensor's reference to its data, so a Buffer object the caller still holds does not pin it.
    b.tensor.dispose();
  }

  async prepare(graph: Graph, _opts?: PrepareOptions): Promise<Prepared> {
    const session = await ort.InferenceSession.create(lowerToOnnx(graph, "cpu", { gradWeight: GRAD_WEIGHT }), {
      executionProviders: ["cpu"],
      graphOptimizationLevel: "all",
      intraOpNumThreads: this.threads,
      interOpNumThreads: 1,
      enableCpuMemArena: cpuArena(graphInputs(graph).reduce((b, i) => b + size(i.shape) * DTYPE_BYTES[i.dtype], 0)),
      // Where the time goes, per node: ADD_ORT_PROFILE=<prefix> writes onnxruntime's JSON trace when the executor
      // closes (one file per session).
      ...(PROFILE ? { enableProfiling: true, profileFilePrefix: PROFILE } : {}),
    });
    return sessionPrepared<ort.Tensor>(
      graph,
      session,
      this.sessions,
      (b) => this.own(b),
      (t, shape, dtype) => this.wrap(t, shape, dtype),
    );
  }

  liveBuffers(): number {
    return this.live;
  }

  async close(): Promise<void> {
    for (const s of this.sessions) {
      if (PROFILE) (s as unknown as { endProfiling(): void }).endProfiling();
      await s.release();
    }
    this.sessions.clear();
  }
}
