/**
 * A compiled step with resident state: graph inputs paired with the outputs that replace them after each run
 * (parameters, optimizer moments, EMA). State stays on the executor between steps; only what the caller asks for
 * (usually a few scalar losses) is read back.
 *
 * @module
 */
import type { Buffer, Executor, HostArray, Prepared } from "./executors/executor.ts";
import { type Graph, graphInputs } from "./ir.ts";

/** Options of `StepProgram.create`. */
export interface StepOptions {
  /** Input name → name of the output that becomes that input at the next run. */
  state: Record<string, string>;
}

/** A graph compiled on one executor, holding its state buffers. */
export class StepProgram {
  private readonly buffers = new Map<string, Buffer>();

  private constructor(
    readonly executor: Executor,
    readonly graph: Graph,
    private readonly prepared: Prepared,
    private readonly state: Record<string, string>,
  ) {}

  /** Compiles `graph` on `executor`. Every state pair must name an input and an output of equal shape. */
  static async create(executor: Executor, graph: Graph, opts: StepOptions): Promise<StepProgram> {
    const inputs = new Map(graphInputs(graph).map((i) => [i.name, i]));
    for (const [inp, out] of Object.entries(opts.state)) {
      const i = inputs.get(inp), o = graph.outputs.find((x) => x.name === out);
      if (!i) throw new Error(`StepProgram: state input "${inp}" is not a graph input`);
      if (!o) throw new Error(`StepProgram: state output "${out}" is not a graph output`);
      const os = graph.nodes[o.node].shape;
      if (os.join(",") !== i.shape.join(",")) {
        throw new Error(`StepProgram: state "${inp}" is [${i.shape}] but output "${out}" is [${os}]`);
      }
    }
    const prepared = await executor.prepare(graph, { resident: Object.values(opts.state) });
    return new StepProgram(executor, graph, prepared, { ...opts.state });
  }

  /** Sets (uploads) a state input, replacing any buffer it had. */
  setState(name: string, data: HostArray): void {
    const info = graphInputs(this.graph).find((i) => i.name === name);
    if (!info || !(name in this.state)) throw new Error(`StepProgram: "${name}" is not a state input`);
    const old = this.buffers.get(name);
    if (old) this.executor.dispose(old);
    this.buffers.set(name, this.executor.upload(data, info.shape, info.dtype));
  }

  /** Reads a state input's current value back to the host. */
  readState(name: string): Promise<HostArray> {
    const b = this.buffers.get(name);
    if (!b) throw new Error(`StepProgram: state "${name}" was never set`);
    return this.executor.read(b);
  }

  /**
   * Runs one step with the given non-state inputs, advances the state, and returns the outputs named in `read`
   * (all non-state outputs when omitted) as host arrays.
   */
  async run(feeds: Record<string, HostArray>, read?: readonly string[]): Promise<Record<string, HostArray>> {
    const ins: Record<string, Buffer> = {};
    const uploaded: Buffer[] = [];
    for (const info of graphInputs(this.graph)) {
      if (info.name in this.state) {
        const b = this.buffers.get(info.name);
        if (!b) throw new Error(`StepProgram: state "${info.name}" was never set`);
        ins[info.name] = b;
      } else {
        const d = feeds[info.name];
        if (!d) throw new Error(`StepProgram: missing input "${info.name}"`);
        const b = this.executor.upload(d, info.shape, info.dtype);
        uploaded.push(b);
        ins[info.name] = b;
      }
    }
    let outs: Record<string, Buffer>;
    try {
      outs = await this.prepared.run(ins);
    } finally {
      for (const b of uploaded) this.executor.dispose(b);
    }
    const stateOuts = new Set(Object.values(this.state));
    for (const [inp, out] of Object.entries(this.state)) {
      this.executor.dispose(this.buffers.get(inp)!);
      this.buffers.set(inp, outs[out]);
    }
    const want = read ?? this.prepared.outputNames.filter((n) => !stateOuts.has(n));
    const result: Record<string, HostArray> = {};
    for (const name of want) result[name] = await this.executor.read(outs[name]);
    for (const [name, b] of Object.entries(outs)) if (!stateOuts.has(name)) this.executor.dispose(b);
    return result;
  }

  /** Frees the state buffers and the compiled graph. */
  async dispose(): Promise<void> {
    for (const b of this.buffers.values()) this.executor.dispose(b);
    this.buffers.clear();
    await this.prepared.dispose();
  }
}
