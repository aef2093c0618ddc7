// A stage's `schedule: { diffusers: <folder> }`: the tiny pipeline folder's scheduler_config.json reads as exactly
// the schedule configs/add_diffusers.yaml used to write by hand (the same settings, so the same ᾱ bits and cache
// keys), on every stage of that config; linear and cosine schedulers read as theirs; a missing folder, a refused key
// or trained_betas is one positioned config line; a misspelt hand-written key still gets its did-you-mean.
import assert from "node:assert/strict";
import "../../../stages/mod.ts";
import { buildTinyDiffusers } from "../../../models/diffusers/build_tiny.ts";
import { scheduleSettingsFromDiffusers } from "../../../models/diffusers/schedule_param.ts";
import { readSchedulerConfig } from "../../../models/diffusers/scheduler_config.ts";
import { makeSchedule, type ScheduleOptions } from "../../../models/diffusion/schedules.ts";
import { loadConfig } from "../../../pipeline/config.ts";
import { planPipeline } from "../../../pipeline/plan.ts";
import { ROOT, tmp } from "../../helpers/cli_run.ts";

const CONFIG = `${ROOT}configs/add_diffusers.yaml`;
const HAND_WRITTEN: ScheduleOptions = { kind: "scaled_linear", T: 1000, zeroTerminalSnr: true };

/** The planning error's lines, or [] when it plans. */
function planLines(file: string, yaml: string): string[] {
  try {
    planPipeline(loadConfig(file, yaml));
    return [];
  } catch (e) {
    return (e as Error).message.split("\n").filter((l) => l.trim());
  }
}

Deno.test("schedule_param: the tiny folder's scheduler reads as the hand-written schedule on every stage", async () => {
  const root = await tmp("schedule_param"), folder = `${root}/tiny`;
  await buildTinyDiffusers(folder);
  for (const at of [folder, `${folder}/scheduler`, `${folder}/scheduler/scheduler_config.json`]) {
    assert.deepEqual(scheduleSettingsFromDiffusers(at), HAND_WRITTEN, at);
  }
  const read = await readSchedulerConfig(folder);
  assert.deepEqual(makeSchedule(HAND_WRITTEN).alphasCumprod, read.alphasCumprod);
  const file = `${root}/add_diffusers.yaml`;
  const plan = planPipeline(
    loadConfig(file, Deno.readTextFileSync(CONFIG).replaceAll(".cache/tiny_diffusers", folder)),
  );
  for (const s of ["noise", "distill", "preview", "report"]) {
    assert.deepEqual((plan.stages[s].params as { schedule: unknown }).schedule, HAND_WRITTEN, s);
  }
});

Deno.test("schedule_param: linear and squaredcos_cap_v2 schedulers read as theirs, with the same ᾱ", async () => {
  const root = await tmp("schedule_param_kinds");
  const cases: [Record<string, unknown>, ScheduleOptions][] = [
    [{ beta_schedule: "linear", beta_start: 0.0002, beta_end: 0.02, num_train_timesteps: 500 }, {
      kind: "linear",
      T: 500,
      betaStart: 0.0002,
      zeroTerminalSnr: false,
    }],
    [{ beta_schedule: "squaredcos_cap_v2", rescale_betas_zero_snr: true }, {
      kind: "cosine",
      T: 1000,
      zeroTerminalSnr: true,
    }],
  ];
  for (const [i, [cfg, want]] of cases.entries()) {
    const file = `${root}/${i}.json`;
    await Deno.writeTextFile(file, JSON.stringify({ _class_name: "DDPMScheduler", ...cfg }));
    assert.deepEqual(scheduleSettingsFromDiffusers(file), want);
    assert.deepEqual(makeSchedule(want).alphasCumprod, (await readSchedulerConfig(file)).alphasCumprod);
  }
});

Deno.test("schedule_param: a missing, refused or trained_betas scheduler is one positioned line", async () => {
  const root = await tmp("schedule_param_bad"), file = `${root}/bad.yaml`;
  // The models' folder exists, so that the schedule's line is the only error (a fresh clone has no .cache/).
  await buildTinyDiffusers(`${root}/tiny`);
  const base = Deno.readTextFileSync(CONFIG).replaceAll(".cache/tiny_diffusers", `${root}/tiny`);
  const lineOf = (yaml: string) => yaml.split("\n").findIndex((l) => l.includes("schedule: &schedule")) + 1;
  const refused = `${root}/refused.json`, trained = `${root}/trained.json`;
  await Deno.writeTextFile(refused, JSON.stringify({ _class_name: "DDIMScheduler", thresholding: true }));
  await Deno.writeTextFile(
    trained,
    JSON.stringify({ _class_name: "DDIMScheduler", num_train_timesteps: 2, trained_betas: [0.1, 0.2] }),
  );
  const cases: [string, RegExp][] = [
    [`${root}/nowhere`, /nowhere: no scheduler_config\.json \(looked for .*nowhere\/scheduler_config\.json/],
    [refused, /refused\.json: thresholding true is not supported/],
    [trained, /trained\.json: trained_betas cannot be a stage's schedule/],
  ];
  for (const [path, want] of cases) {
    // The other stages' *schedule aliases name the same written value: one line for all of them.
    const yaml = base.replace("{ diffusers: *pipeline }", `{ diffusers: ${path} }`);
    const lines = planLines(file, yaml).filter((l) => l.includes("schedule"));
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0], new RegExp(`^${file}:${lineOf(yaml)}:\\d+: `));
    assert.match(lines[0], want);
  }
  const misspelt = base.replace("{ diffusers: *pipeline }", "{ kind: cosine, zeroTerminalSNR: true }");
  const lines = planLines(file, misspelt).filter((l) => l.includes("zeroTerminalSNR"));
  assert.equal(lines.length, 1, lines.join("\n"));
  assert.match(lines[0], /unknown key "zeroTerminalSNR".*zeroTerminalSnr/);
});
