/**
 * `deno task bench:add` (and the last part of `deno task bench`): the default ADD run's training step (`configs/add.yaml`, both update phases, on the cpu
 * executor) as the run itself times it, against the same step of an earlier commit (`--baseline-ref`, default the
 * commit before this benchmark's speed work) run the same way in the same invocation, in a temporary git worktree.
 *
 * Each side is `deno task run configs/add.yaml --steps N` with the report, previews, plot and checkpoints left out and
 * the teacher pairs' bank read from the cache (the first side to run makes it); the run's closing `time:` line gives
 * each phase's share of the loop, from which its ms/step. The roofline share is the phases' contraction FLOPs (traced
 * here, bench/flops.ts) at the cpu executor's 1024³ GEMM rate over their measured time; the forward FLOPs of each
 * traced stage say which network the work is in (the backward follows the forward's split roughly, the teacher
 * having none).
 *
 *   RESULT add_step executor=cpu ms=<both phases> baseline_ms=<…> ratio=<ms/baseline_ms> roofline_share=<floor/ms>
 *
 * Flags: --add-steps N (default 30)  --add-rounds N (default 2; each side keeps its fastest)  --baseline-ref REF
 * (default 87857b3, the commit before any of its speed work)  --no-baseline
 *
 * @module
 */
import "../stages/mod.ts";
import type { Node } from "../engine/ir.ts";
import { loadConfig } from "../pipeline/config.ts";
import { planPipeline } from "../pipeline/plan.ts";
import type { Plan } from "../pipeline/plan_types.ts";
import type { TraceContext } from "../pipeline/stage.ts";
import { tracePhase } from "../pipeline/trace_phase.ts";
import { contractionFlops } from "./flops.ts";
import { gemmGflops } from "./gemm.ts";
import { findTimeLine } from "./time_line.ts";

const args = Deno.args;
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
// Its own names: `deno task bench` passes one set of flags to every benchmark.
const STEPS = Number(flag("add-steps") ?? 30), ROUNDS = Number(flag("add-rounds") ?? 2);
const BASELINE = args.includes("--no-baseline") ? null : flag("baseline-ref") ?? "87857b3";
const root = new URL("../", import.meta.url).pathname;
const CONFIG = "configs/add.yaml";
/** What the step is without the effects that are not training: the report, previews, the plot, checkpoints. */
const SETS = ["report", "progress_eval", "preview", "plot", "ckpt"].flatMap((s) => ["--set", `stages.${s}=null`]);

/** The per-phase ms/step of one side: `deno task run` in `dir`, its `time:` line parsed. */
async function runSide(dir: string, out: string): Promise<{ total: number; phases: Record<string, number> }> {
  const r = await new Deno.Command("deno", {
    args: ["task", "run", CONFIG, "--out", out, "--steps", String(STEPS), "--executor", "cpu", ...SETS],
    cwd: dir,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(r.stdout);
  const time = findTimeLine(text);
  if (!r.success || !time) {
    throw new Error(`${dir}: the run failed:\n${text}\n${new TextDecoder().decode(r.stderr).slice(-2000)}`);
  }
  return time;
}

/** Contraction FLOPs of every phase, and the forward FLOPs of each traced stage (by its raw trace nodes). */
function stepFlops(plan: Plan): { phases: Record<string, number>; stages: Record<string, number> } {
  const stages: Record<string, number> = {}, phases: Record<string, number> = {};
  const wrapped: Plan = {
    ...plan,
    stages: Object.fromEntries(
      Object.entries(plan.stages).map(([n, s]) => {
        const trace = s.def.trace;
        if (!trace) return [n, s];
        const measured = (ctx: TraceContext, params: unknown, inputs: Parameters<typeof trace>[2]) => {
          const nodes = ctx.step.trace.nodes, from = nodes.length;
          const out = trace(ctx, params, inputs);
          const made = nodes.slice(from);
          stages[n] = (stages[n] ?? 0) + contractionFlops({ nodes: nodesWithin(nodes, made) });
          return out;
        };
        return [n, { ...s, def: { ...s.def, trace: measured } }];
      }),
    ),
  };
  for (const phase of plan.phases) phases[phase.optimizer] = contractionFlops(tracePhase(wrapped, phase).graph);
  return { phases, stages };
}

/** `made` with its inputs resolvable: the whole node list, but only `made`'s contractions counted. */
function nodesWithin(all: Node[], made: Node[]): Node[] {
  const keep = new Set(made);
  return all.map((n) => (keep.has(n) ? n : { ...n, op: "const" } as Node));
}

const loaded = loadConfig(`${root}${CONFIG}`, await Deno.readTextFile(`${root}${CONFIG}`), [
  ...SETS.filter((s) => s !== "--set"),
]);
const flops = stepFlops(planPipeline(loaded));
const tmp = await Deno.makeTempDir({ prefix: "add_step_" });
try {
  console.log(`add step: ${CONFIG}, ${STEPS} steps per side and round, ${ROUNDS} rounds, cpu executor`);
  // Inside each tree: `deno task run` may write only there.
  const side = (dir: string) =>
    runSide(dir, "out/bench_add_step").finally(() =>
      Deno.remove(`${dir}/out/bench_add_step`, { recursive: true }).catch(() => {})
    );
  const wt = `${tmp}/baseline`;
  const git = (a: string[]) =>
    new Deno.Command("git", { args: a, cwd: root, stdout: "null", stderr: "piped" }).output();
  if (BASELINE) {
    if (!(await git(["worktree", "add", "-f", wt, BASELINE])).success) throw new Error(`no commit ${BASELINE}`);
    // The baseline reads the same cached bank and text encoder instead of making them again.
    await Deno.mkdir(`${wt}/.cache`, { recursive: true });
    for (const d of ["teacher_pairs", "text_encoder_use"]) {
      await new Deno.Command("cp", { args: ["-r", `${root}.cache/${d}`, `${wt}/.cache/`] }).output();
    }
    await new Deno.Command("deno", { args: ["install", "--frozen"], cwd: wt, stdout: "null", stderr: "null" }).output();
  }
  // Rounds alternate the sides, and each side keeps its fastest round: a neighbour's burst on a shared machine slows
  // one run, never speeds one up.
  type Side = Awaited<ReturnType<typeof runSide>>;
  const best = (a: Side | null, b: Side) => (a && a.total <= b.total ? a : b);
  let now: Side | null = null, base: Side | null = null;
  try {
    for (let r = 0; r < ROUNDS; r++) {
      if (BASELINE) base = best(base, await side(wt));
      now = best(now, await side(root.replace(/\/$/, "")));
    }
  } finally {
    if (BASELINE) await git(["worktree", "remove", "--force", wt]);
  }
  if (!now) throw new Error("no round ran");
  const gflops = await gemmGflops(10);
  const names = Object.keys(flops.phases);
  // A run with run.fuse_phases times its phases as one ("opt_d+opt_g"); the FLOPs are those of the unfused graphs.
  const groups = (s: Side) => Object.keys(s.phases).filter((k) => k.split("+").every((p) => names.includes(p)));
  const phaseMs = (s: Side) => groups(s).reduce((a, k) => a + s.phases[k], 0);
  const ms = phaseMs(now), baseMs = base ? phaseMs(base) : NaN;
  const total = names.reduce((a, n) => a + flops.phases[n], 0);
  for (const side of base ? [now, base] : [now]) {
    for (const g of groups(side)) {
      const f = g.split("+").reduce((a, n) => a + flops.phases[n], 0), floor = f / (gflops * 1e9) * 1000;
      console.log(
        `${side === now ? "" : "baseline "}phase ${g}: ${side.phases[g].toFixed(1)} ms/step, ` +
          `${(f / 1e9).toFixed(2)} GFLOP unfused, roofline share ${(floor / side.phases[g]).toFixed(3)}`,
      );
    }
  }
  const fwd = Object.values(flops.stages).reduce((a, b) => a + b, 0);
  console.log(
    "forward FLOPs by traced stage: " +
      Object.entries(flops.stages).sort((a, b) => b[1] - a[1])
        .map(([n, f]) => `${n} ${(100 * f / fwd).toFixed(0)}%`).join(", "),
  );
  console.log(
    `whole step (host stages too): ${now.total.toFixed(1)} ms${base ? `, baseline ${base.total.toFixed(1)}` : ""}`,
  );
  const floorMs = total / (gflops * 1e9) * 1000;
  console.log(
    `RESULT add_step executor=cpu ms=${ms.toFixed(1)} baseline_ms=${baseMs.toFixed(1)} ratio=${
      (ms / baseMs).toFixed(3)
    } roofline_share=${(floorMs / ms).toFixed(3)} baseline_ref=${BASELINE ?? "none"}`,
  );
} finally {
  await Deno.remove(tmp, { recursive: true });
}
