/**
 * Compiled graphs with resident state. A `ResidentStore` holds named buffers on one executor (parameters, optimizer
 * moments, EMAs, a frozen model's weights); a `Program` is a graph compiled on that executor whose inputs are bound
 * either to store entries or to host data fed at each run, and whose bound outputs replace store entries after it.
 * Several programs may share one store (a training run's phases read and update the same models), and state never
 * leaves the executor unless asked for: only what the caller reads (usually a few scalar losses) comes back.
 *
 * `StepProgram` is the common case of one program that owns its store, each state input paired with the output that
 * replaces it.
 *
 * @module
 */
import type { Buffer, Executor, HostArray, Prepared } from "./executors/executor.ts";
import { type DType, type Graph, graphInputs } from "./ir.ts";

/** Named buffers kept on one executor. */
export class ResidentStore {
  readonly #buffers = new Map<string, Buffer>();

  /** An empty store; every buffer it will hold lives on `executor`. */
  constructor(readonly executor: Executor) {}

  /** Uploads `data` under `key` (a flat f32 vector unless `shape`/`dtype` say otherwise), replacing any entry. */
  set(key: string, data: HostArray, shape: readonly number[] = [data.length], dtype: DType = "f32"): void {
    this.replace(key, this.executor.upload(data, shape, dtype));
  }

  /** Puts a buffer under `key`, freeing the one it replaces; the store owns it from now on. */
  replace(key: string, buf: Buffer): void {
    const old = this.#buffers.get(key);
    if (old && old !== buf) this.executor.dispose(old);
    this.#buffers.set(key, buf);
  }

  /** Whether an entry exists under `key`. */
  has(key: string): boolean {
    return this.#buffers.has(key);
  }

  /** The buffer under `key` (still owned by the store). */
  buffer(key: string): Buffer {
    const b = this.#buffers.get(key);
    if (!b) throw new Error(`store: nothing stored under "${key}"`);
    return b;
  }

  /** Reads an entry back to the host. */
  read(key: string): Promise<HostArray> {
    return this.executor.read(this.buffer(key));
  }

  /** The keys of every entry, in the order they were first stored. */
  keys(): string[] {
    return [...this.#buffers.keys()];
  }

  /** Frees every entry. */
  dispose(): void {
    for (const b of this.#buffers.values()) this.executor.dispose(b);
    this.#buffers.clear();
  }
}

/** How a program's graph meets its store. */
export interface ProgramBindings {
  /** Graph input name → store key it reads. Every other input is fed from the host at each run. */
  inputs?: Record<string, string>;
  /** Graph output name → store key it replaces after each run (it stays on the executor). */
  updates?: Record<string, string>;
}

/** A graph compiled on a store's executor, bound to the store. */
export class Program {
  readonly #inputs: Record<string, string>;
  readonly #updates: Record<string, string>;
  readonly #fed: { name: string; shape: number[]; dtype: DType }[];

  private constructor(
    readonly store: ResidentStore,
    readonly graph: Graph,
    private readonly prepared: Prepared,
    bindings: ProgramBindings,
  ) {
    this.#inputs = { ...bindings.inputs };
    this.#updates = { ...bindings.updates };
    this.#fed = graphInputs(graph).filter((i) => !(i.name in this.#inputs));
  }

  /** Compiles `graph` for `store`'s executor; bound names must be the graph's inputs and outputs. */
  static async create(store: ResidentStore, graph: Graph, bindings: ProgramBindings): Promise<Program> {
    const inputs = new Set(graphInputs(graph).map((i) => i.name));
    for (const name of Object.keys(bindings.inputs ?? {})) {
      if (!inputs.has(name)) throw new Error(`Program: bound input "${name}" is not a graph input`);
    }
    for (const name of Object.keys(bindings.updates ?? {})) {
      if (!graph.outputs.some((o) => o.name === name)) throw new Error(`Program: "${name}" is not a graph output`);
    }
    const prepared = await store.executor.prepare(graph, { resident: Object.keys(bindings.updates ?? {}) });
    return new Program(store, graph, prepared, bindings);
  }

  /** Names and shapes of the inputs fed from the host. */
  get fedInputs(): readonly { name: string; shape: number[]; dtype: DType }[] {
    return this.#fed;
  }

  /**
   * Runs once with `feeds` for the unbound inputs, replaces the bound store entries by their outputs, and returns
   * the outputs named in `read` (all unbound outputs when omitted) as host arrays.
   */
  async run(feeds: Record<string, HostArray>, read?: readonly string[]): Promise<Record<string, HostArray>> {
    const ex = this.store.executor;
    const ins: Record<string, Buffer> = {};
    const uploaded: Buffer[] = [];
    for (const [input, key] of Object.entries(this.#inputs)) ins[input] = this.store.buffer(key);
    let outs: Record<string, Buffer>;
    try {
      for (const info of this.#fed) {
        const d = feeds[info.name];
        if (!d) throw new Error(`Program: missing input "${info.name}"`);
        const b = ex.upload(d, info.shape, info.dtype);
        uploaded.push(b);
        ins[info.name] = b;
      }
      outs = await this.prepared.run(ins);
    } finally {
      for (const b of uploaded) ex.dispose(b);
    }
    for (const [output, key] of Object.entries(this.#updates)) this.store.replace(key, outs[output]);
    const want = read ?? this.prepared.outputNames.filter((n) => !(n in this.#updates));
    const result: Record<string, HostArray> = {};
    try {
      for (const name of want) result[name] = await ex.read(outs[name]);
    } finally {
      for (const [name, b] of Object.entries(outs)) if (!(name in this.#updates)) ex.dispose(b);
    }
    return result;
  }

  /** Frees the compiled graph (the store keeps its entries). */
  dispose(): Promise<void> {
    return this.prepared.dispose();
  }
}

/** Options of `StepProgram.create`. */
export interface StepOptions {
  /** Input name → name of the output that becomes that input at the next run. */
  state: Record<string, string>;
}

/** A graph compiled on one executor, holding its state: a `Program` that owns its store. */
export class StepProgram {
  private constructor(
    readonly executor: Executor,
    readonly graph: Graph,
    private readonly program: Program,
    private readonly store: ResidentStore,
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
    // The store's keys are the state inputs' names: each output replaces the input it is paired with.
    const store = new ResidentStore(executor);
    const inputsBound = Object.fromEntries(Object.keys(opts.state).map((i) => [i, i]));
    const updates = Object.fromEntries(Object.entries(opts.state).map(([i, o]) => [o, i]));
    const program = await Program.create(store, graph, { inputs: inputsBound, updates });
    return new StepProgram(executor, graph, program, store, { ...opts.state });
  }

  /** Sets (uploads) a state input, replacing any buffer it had. */
  setState(name: string, data: HostArray): void {
    const info = graphInputs(this.graph).find((i) => i.name === name);
    if (!info || !(name in this.state)) throw new Error(`StepProgram: "${name}" is not a state input`);
    this.store.set(name, data, info.shape, info.dtype);
  }

  /** Reads a state input's current value back to the host. */
  readState(name: string): Promise<HostArray> {
    if (!this.store.has(name)) throw new Error(`StepProgram: state "${name}" was never set`);
    return this.store.read(name);
  }

  /**
   * Runs one step with the given non-state inputs, advances the state, and returns the outputs named in `read`
   * (all non-state outputs when omitted) as host arrays.
   */
  run(feeds: Record<string, HostArray>, read?: readonly string[]): Promise<Record<string, HostArray>> {
    for (const name of Object.keys(this.state)) {
      if (!this.store.has(name)) throw new Error(`StepProgram: state "${name}" was never set`);
    }
    return this.program.run(feeds, read);
  }

  /** Frees the state buffers and the compiled graph. */
  async dispose(): Promise<void> {
    this.store.dispose();
    await this.program.dispose();
  }
}
