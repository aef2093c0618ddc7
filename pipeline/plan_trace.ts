/**
 * Planning's trace check: every update phase traced before step 1, so that what a stage throws while tracing is a
 * config error at the stage, and the traced graphs give the step's memory estimate.
 *
 * @module
 */
import type { Node } from "../engine/ir.ts";
import { type Issues, oneLine } from "./plan_issues.ts";
import { type Culprit, heaviest, peakLive } from "./plan_memory.ts";
import type { PhaseTracer, Plan, PlannedStage } from "./plan_types.ts";
import type { TraceContext } from "./stage.ts";

/** What tracing one update phase found: its size, its peak of live values, and what weighs most. */
export interface PhaseFootprint {
  optimizer: string;
  nodes: number;
  /** Peak bytes of live values (see `MemoryEstimate`). */
  peak: number;
  culprit?: Culprit;
}

/** Thrown out of a stage's wrapped `trace`, so that planning knows which stage threw. */
/** `ADD_DEBUG=1` prints the stack of what a stage threw while traced, beside its one-line error. */
const DEBUG = (() => {
  try {
    return Deno.env.get("ADD_DEBUG") === "1";
  } catch {
    return false; // no env permission: the one line only
  }
})();

class StageTraceFailure extends Error {
  constructor(readonly stage: string, readonly error: unknown) {
    super(`stage "${stage}" threw while tracing`);
  }
}

/**
 * Traces every update phase with `tracer`, each traced stage wrapped so that what it throws becomes one error at the
 * stage (anything thrown outside the stages — the gradient, the update — at the phase's optimizer). Records which raw
 * trace nodes each stage made, to say which stage's tensors weigh most.
 */
export function traceCheck(plan: Plan, tracer: PhaseTracer, issues: Issues): PhaseFootprint[] {
  let spans = new Map<string, Node[]>();
  const wrap = (s: PlannedStage): PlannedStage => {
    const trace = s.def.trace;
    if (!trace) return s;
    const wrapped = (ctx: TraceContext, params: unknown, inputs: Parameters<typeof trace>[2]) => {
      const nodes = ctx.step.trace.nodes, from = nodes.length;
      try {
        const out = trace(ctx, params, inputs);
        spans.set(s.name, nodes.slice(from));
        return out;
      } catch (e) {
        throw new StageTraceFailure(s.name, e);
      }
    };
    return { ...s, def: { ...s.def, trace: wrapped } };
  };
  const wrapped: Plan = {
    ...plan,
    stages: Object.fromEntries(Object.entries(plan.stages).map(([n, s]) => [n, wrap(s)])),
  };
  const out: PhaseFootprint[] = [];
  const reported = new Set<string>();
  for (const phase of plan.phases) {
    spans = new Map();
    let t;
    try {
      t = tracer(wrapped, phase);
    } catch (e) {
      const [stage, msg] = e instanceof StageTraceFailure
        ? [e.stage, `stage "${e.stage}" (${plan.stages[e.stage].def.kind}): ${oneLine(e.error)}`]
        : [phase.optimizer, `optimizer "${phase.optimizer}": tracing its update phase failed: ${oneLine(e)}`];
      // A stage shared by two phases throws the same in both.
      if (!reported.has(msg)) issues.add(["stages", stage], msg);
      // One line is what a user needs; the author of a stage kind chasing a bug asks for the stack.
      if (DEBUG && !reported.has(msg)) {
        const err = e instanceof StageTraceFailure ? e.error : e;
        console.error(err instanceof Error ? err.stack : String(err));
      }
      reported.add(msg);
      continue;
    }
    out.push({
      optimizer: phase.optimizer,
      nodes: t.graph.nodes.length,
      peak: peakLive(t.graph, new Set(Object.keys(t.stateIn))),
      culprit: heaviest(plan, t.graph, t.feeds, spans),
    });
  }
  return out;
}
