// A host stage's context for tests that call a stage's `host` directly: what a run would give, with the run's memory
// of its own unless `memory` says otherwise (the same memory across calls is the same run).
import type { HostContext } from "../../pipeline/stage.ts";
import { RunMemory } from "../../pipeline/stage_state.ts";
import { Rng } from "../../engine/rng.ts";

/** A context for `stage` at `step`, with `over` replacing the defaults. */
export function hostContext(
  stage: string,
  over: Partial<HostContext> & { memory?: RunMemory } = {},
): HostContext {
  const { memory = new RunMemory(), ...rest } = over;
  return {
    stage,
    seed: 0,
    step: 1,
    rng: new Rng(0),
    out: "out/unused",
    cache: ".cache",
    dataset: (name) => Promise.reject(new Error(`no dataset ${name}`)),
    executor: null as unknown as HostContext["executor"],
    models: {},
    readModel: (name) => Promise.reject(new Error(`${stage} reads no model (asked for ${name})`)),
    log: () => {},
    ...memory.forStage(stage),
    ...rest,
  };
}
