// Test helper: runs a loaded config through planning and the run loop with output captured rather than printed, and
// fails the calling test with that output when the run does not exit 0.
import assert from "node:assert/strict";
import type { LoadedConfig } from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { runPipeline } from "../../pipeline/run.ts";

/** Plans and runs `loaded` without a terminal; asserts exit code 0 (the message is the run's output). */
export async function runQuiet(loaded: LoadedConfig): Promise<string[]> {
  const lines: string[] = [];
  const code = await runPipeline(loaded, planPipeline(loaded), {
    tty: false,
    print: (l) => lines.push(l),
    warn: (l) => lines.push(l),
  });
  assert.equal(code, 0, lines.join("\n"));
  return lines;
}
