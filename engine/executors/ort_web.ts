/**
 * The `wasm` and `webgpu` executors on onnxruntime-web.
 *
 * `wasm` uses the package's bare entry (in Deno that resolves to its Node build) with one thread, since multi-threaded
 * wasm failed or hung in Deno. `webgpu` uses the `onnxruntime-web/webgpu` bundle on Deno's `navigator.gpu`: uploads
 * are GPU buffers on ort's own device, outputs named resident stay on the GPU, the rest come back to the host.
 * Each entry is a separate module instance with its own wasm heap; both load lazily and can share one process.
 *
 * @module
 */
import type * as OrtWeb from "onnxruntime-web";
import type { DType, Graph } from "../ir.ts";
import { size } from "../ir.ts";
import { lowerToOnnx, onnxOutputNames, type OnnxTarget } from "../onnx/lower.ts";
import { hostData, ortType, sessionPrepared } from "./ort_shared.ts";
import {
  type Buffer,
  type Executor,
  type HostArray,
  type Prepared,
  type PrepareOptions,
  WASM_CONSTANT_LIMIT,
  WASM_PACK_LIMIT,
  webGpuPackLimit,
} from "./executor.ts";

type Ort = typeof OrtWeb;
type Tensor = OrtWeb.Tensor;

/** Points ort at the wasm files of the package's dist/ folder, next to the entry module it resolved to. */
function configure(ort: Ort, entry: string): Ort {
  ort.env.wasm.numThreads = 1;
  let resolved = "";
  try {
    resolved = import.meta.resolve(entry);
  } catch {
    // An unresolvable entry leaves ort's default, which is the same folder.
  }
  if (resolved.startsWith("file:")) ort.env.wasm.wasmPaths = new URL("./", resolved).href;
  return ort;
}

let wasmOrt: Promise<Ort> | undefined;
let gpuOrt: Promise<Ort> | undefined;

function loadWasmOrt(): Promise<Ort> {
  return wasmOrt ??= import("onnxruntime-web").then((m) => configure(m, "onnxruntime-web"));
}

function loadGpuOrt(): Promise<Ort> {
  return gpuOrt ??= import("onnxruntime-web/webgpu").then((m) => configure(m as Ort, "onnxruntime-web/webgpu"));
}

class WebBuffer implements Buffer {
  disposed = false;
  constructor(
    readonly owner: object,
    readonly tensor: Tensor,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {}
}

/** Bytes of one element as ort stores it, on the host and on the GPU alike. */
function elemBytes(d: DType): number {
  return d === "bool" ? 1 : 4;
}

/** Shared body of both executors: buffers, sessions, runs. Subclasses differ in uploads, reads and session options. */
abstract class OrtWebExecutor implements Executor {
  abstract readonly name: string;
  protected live = 0;
  private readonly sessions = new Set<OrtWeb.InferenceSession>();

  constructor(protected readonly ort: Ort, private readonly target: OnnxTarget) {}

  abstract upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer;
  abstract read(buf: Buffer): Promise<HostArray>;
  protected abstract sessionOptions(graph: Graph, opts?: PrepareOptions): OrtWeb.InferenceSession.SessionOptions;

  protected wrap(t: Tensor, shape: readonly number[], dtype: DType): WebBuffer {
    this.live++;
    return new WebBuffer(this, t, [...shape], dtype);
  }

  protected own(buf: Buffer): WebBuffer {
    if (!(buf instanceof WebBuffer) || buf.owner !== this) {
      throw new Error(`${this.name} executor: buffer from another executor`);
    }
    if (buf.disposed) throw new Error(`${this.name} executor: buffer already disposed`);
    return buf;
  }

  dispose(buf: Buffer): void {
    const b = this.own(buf);
    b.disposed = true;
    this.live--;
    // Frees the GPU buffer of a gpu-located tensor; a no-op apart from dropping data for host tensors.
    b.tensor.dispose();
  }

  async prepare(graph: Graph, opts?: PrepareOptions): Promise<Prepared> {
    const session = await this.ort.InferenceSession.create(lowerToOnnx(graph, this.target), {
      graphOptimizationLevel: "all",
      ...this.sessionOptions(graph, opts),
    });
    return sessionPrepared<Tensor>(
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
    for (const s of this.sessions) await s.release();
    this.sessions.clear();
  }
}

/** The `wasm` executor: onnxruntime-web's wasm backend, one thread, host tensors. */
export class OrtWasmExecutor extends OrtWebExecutor {
  readonly name = "wasm";
  readonly packLimit = WASM_PACK_LIMIT;
  readonly constantLimit = WASM_CONSTANT_LIMIT;

  constructor(ort: Ort) {
    super(ort, "wasm");
  }

  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer {
    return this.wrap(new this.ort.Tensor(ortType(dtype), hostData(data, shape, dtype), [...shape]), shape, dtype);
  }

  read(buf: Buffer): Promise<HostArray> {
    return Promise.resolve((this.own(buf).tensor.data as Float32Array | Int32Array | Uint8Array).slice());
  }

  protected sessionOptions(): OrtWeb.InferenceSession.SessionOptions {
    return { executionProviders: ["wasm"] };
  }
}

/** Creates the `wasm` executor, loading onnxruntime-web on first use. */
export async function createWasmExecutor(): Promise<OrtWasmExecutor> {
  return new OrtWasmExecutor(await loadWasmOrt());
}

/**
 * The `webgpu` executor: onnxruntime-web's WebGPU execution provider. Buffers are GPU tensors on ort's device, except
 * non-resident outputs, which ort returns on the host.
 */
export class OrtWebGpuExecutor extends OrtWebExecutor {
  readonly name = "webgpu";
  /** The largest buffer `device` binds, in f32 elements (`webGpuPackLimit`): 33,554,432 on llvmpipe's 128 MiB. */
  readonly packLimit: number;

  /** @param keep a session held open so ort keeps `device` alive (see `createWebGpuExecutor`). */
  constructor(ort: Ort, readonly device: GPUDevice, private keep: OrtWeb.InferenceSession | null) {
    super(ort, "webgpu");
    this.packLimit = webGpuPackLimit(device.limits);
  }

  override async close(): Promise<void> {
    await super.close();
    await this.keep?.release();
    this.keep = null;
  }

  upload(data: HostArray, shape: readonly number[], dtype: DType): Buffer {
    const host = hostData(data, shape, dtype);
    // ort's shaders bind whole vec4s, so its buffers are 16-byte multiples; an exact-size one fails validation.
    const bytes = Math.max(16, Math.ceil(host.byteLength / 16) * 16);
    const buffer = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const padded = new Uint8Array(bytes);
    padded.set(new Uint8Array(host.buffer, host.byteOffset, host.byteLength));
    this.device.queue.writeBuffer(buffer, 0, padded);
    const tensor = this.ort.Tensor.fromGpuBuffer(buffer, {
      dataType: ortType(dtype),
      dims: [...shape],
      dispose: () => buffer.destroy(),
    });
    return this.wrap(tensor as Tensor, shape, dtype);
  }

  async read(buf: Buffer): Promise<HostArray> {
    const b = this.own(buf);
    if (b.tensor.location !== "gpu-buffer") {
      return (b.tensor.data as Float32Array | Int32Array | Uint8Array).slice();
    }
    // Copy through a staging buffer rather than tensor.getData(), which would turn the tensor into a host tensor and
    // so cost an upload every later step it is fed back.
    const n = size(b.shape) * elemBytes(b.dtype);
    const bytes = Math.max(4, Math.ceil(n / 4) * 4);
    const staging = this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    try {
      const enc = this.device.createCommandEncoder();
      enc.copyBufferToBuffer(b.tensor.gpuBuffer as GPUBuffer, 0, staging, 0, bytes);
      this.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const raw = staging.getMappedRange(0, bytes).slice(0, n);
      staging.unmap();
      return b.dtype === "f32" ? new Float32Array(raw) : b.dtype === "i32" ? new Int32Array(raw) : new Uint8Array(raw);
    } finally {
      staging.destroy();
    }
  }

  protected sessionOptions(graph: Graph, opts?: PrepareOptions): OrtWeb.InferenceSession.SessionOptions {
    const resident = new Set(opts?.resident ?? []);
    const where: Record<string, "gpu-buffer" | "cpu"> = {};
    const onnxNames = onnxOutputNames(graph);
    graph.outputs.forEach((o, i) => (where[onnxNames[i]] = resident.has(o.name) ? "gpu-buffer" : "cpu"));
    return { executionProviders: ["webgpu"], preferredOutputLocation: where };
  }
}

/**
 * Creates the `webgpu` executor. ort's WebGPU EP creates its device on a session's creation, requesting the adapter's
 * maximum limits (on llvmpipe the device's maxBufferSize is the adapter's 2 GiB, not WebGPU's 256 MiB default;
 * tests/engine/pack_chunks_test.ts checks it), so the packing limit read from the device is the adapter's own. It
 * publishes the device as `ort.env.webgpu.device` and destroys it when its last session is released. So a one-node
 * session is created first and kept open until `close()`: uploads then allocate on the device every later session
 * runs on, and that device outlives the caller's sessions.
 */
export async function createWebGpuExecutor(): Promise<OrtWebGpuExecutor> {
  if (!(globalThis.navigator as { gpu?: GPU } | undefined)?.gpu) throw new Error("webgpu executor: no navigator.gpu");
  const ort = await loadGpuOrt();
  const warm: Graph = {
    nodes: [
      { op: "input", inputs: [], attrs: { name: "x" }, shape: [1], dtype: "f32" },
      { op: "neg", inputs: [0], attrs: {}, shape: [1], dtype: "f32" },
    ],
    outputs: [{ name: "y", node: 1 }],
  };
  const keep = await ort.InferenceSession.create(lowerToOnnx(warm, "webgpu"), { executionProviders: ["webgpu"] });
  const device = (await ort.env.webgpu.device) as unknown as GPUDevice | undefined;
  if (!device) {
    await keep.release();
    throw new Error("webgpu executor: onnxruntime-web did not expose its GPUDevice");
  }
  return new OrtWebGpuExecutor(ort, device, keep);
}
