/**
 * What host and effect stages keep between steps, held by the run rather than by module-level tables: a stage's
 * `memo` (made once per run and remade after a resume: a bank its seed determines, a compiled graph) and its `state`
 * (named arrays a checkpoint saves under `stage.<stage>.<key>` in `state.safetensors` and a resume restores: what the
 * run cannot remake from its seed and step, such as targets remade from a model's weights part-way through).
 *
 * @module
 */

/** An array of stage state. */
export type StateArray = Float32Array | Int32Array;

/** One stage's view of its state. */
export interface StageState {
  /** The array last `set` under `key` (or restored by a resume); undefined before that. */
  get(key: string): StateArray | undefined;
  /** Stores `value` (not copied: do not change it afterwards); the next checkpoint saves it. */
  set(key: string, value: StateArray): void;
}

/** One stage's view of the run's memory. */
export interface StageMemory {
  /** The value `make` gives, made once per run (per stage and key); never saved. */
  memo<T>(key: string, make: () => Promise<T>): Promise<T>;
  /** Arrays that checkpoints save and a resume restores. */
  state: StageState;
}

const KEY = /^[A-Za-z0-9_]+$/;
const PREFIX = "stage.";

/** The memory of one run: every stage's memos and state. */
export class RunMemory {
  readonly #memos = new Map<string, Promise<unknown>>();
  readonly #state = new Map<string, StateArray>();

  /** The view a stage's context carries. */
  forStage(stage: string): StageMemory {
    const full = (key: string) => {
      if (!KEY.test(key)) throw new Error(`stage "${stage}": state key "${key}" must be letters, digits and _`);
      return `${PREFIX}${stage}.${key}`;
    };
    return {
      memo: <T>(key: string, make: () => Promise<T>): Promise<T> => {
        const k = full(key);
        let v = this.#memos.get(k) as Promise<T> | undefined;
        if (!v) {
          v = make();
          this.#memos.set(k, v);
          // A failed make is not remembered: the next step may try again.
          v.catch(() => this.#memos.get(k) === v && this.#memos.delete(k));
        }
        return v;
      },
      state: {
        get: (key) => this.#state.get(full(key)),
        set: (key, value) => void this.#state.set(full(key), value),
      },
    };
  }

  /** Every stage's state, by its checkpoint key (`stage.<stage>.<key>`). */
  entries(): [string, StateArray][] {
    return [...this.#state];
  }

  /** Restores state saved by `entries` (a resume); keys of other shapes are refused. */
  restore(entries: Iterable<[string, StateArray]>): void {
    for (const [k, v] of entries) {
      if (!RunMemory.isStateKey(k)) throw new Error(`"${k}" is not a stage-state key`);
      this.#state.set(k, v);
    }
  }

  /** Whether a checkpoint tensor's name is stage state. */
  static isStateKey(key: string): boolean {
    return key.startsWith(PREFIX) && key.split(".").length === 3;
  }
}
