// The run's closing "time:" line: shares of the wall time by phase and stage, largest first, small ones left out.
import assert from "node:assert/strict";
import { timeLine } from "../../pipeline/run.ts";

Deno.test("timeLine: shares largest first, under 1% left out, minutes past 60 s", () => {
  const times = new Map([["report", 30_000], ["opt_d", 150_000], ["pairs", 900], ["opt_g", 300_000]]);
  assert.equal(timeLine(times, 500_000, 500), "time: 8m 20s for 500 steps — opt_g 60%, opt_d 30%, report 6%");
  assert.equal(timeLine(new Map([["opt", 1234]]), 2468, 1), "time: 2.5 s for 1 step — opt 50%");
  assert.equal(timeLine(new Map(), 59_400, 3), "time: 59.4 s for 3 steps");
});
