/**
 * Config loading and validation in-process: defaults, `--set` overrides, did-you-mean, positions, warnings, and the
 * role rules no built-in stage kind can break (so the YAML corpus in `bad_configs_test.ts` cannot reach them).
 */
import assert from "node:assert/strict";
import "../../stages/mod.ts";
import {
  ConfigError,
  ConfigSchema,
  didYouMean,
  editDistance,
  keysAt,
  loadConfig,
  type LoadedConfig,
  zodIssues,
} from "../../pipeline/config.ts";
import { planPipeline } from "../../pipeline/plan.ts";
import { registerStage, type StageDef } from "../../pipeline/stage.ts";
import { z } from "zod";

const ROOT = decodeURIComponent(new URL("../..", import.meta.url).pathname);
const TOY = Deno.readTextFileSync(`${ROOT}configs/toy.yaml`);

/** The toy config with each `[from, to]` replaced once (each `from` must occur). */
function toy(...edits: [string, string][]): string {
  let text = TOY;
  for (const [from, to] of edits) {
    assert.ok(text.includes(from), `the toy config has no ${JSON.stringify(from)}`);
    text = text.replace(from, to);
  }
  return text;
}

/** The error lines of loading and planning `text`, or [] when it is valid. */
function errorsOf(text: string, overrides: string[] = []): string[] {
  try {
    planPipeline(loadConfig("c.yaml", text, overrides));
    return [];
  } catch (e) {
    if (e instanceof ConfigError) return e.lines;
    throw e;
  }
}

/** 1-based line and column of the `nth` occurrence of `needle` in `text`, as `c.yaml:L:C`. */
function at(text: string, needle: string, nth = 1): string {
  let i = -1;
  for (let k = 0; k < nth; k++) i = text.indexOf(needle, i + 1);
  assert.ok(i >= 0, `no ${JSON.stringify(needle)}`);
  const before = text.slice(0, i).split("\n");
  return `c.yaml:${before.length}:${before[before.length - 1].length + 1}`;
}

/** `c.yaml:L:C` of the character just after the first `needle`. */
function after(text: string, needle: string): string {
  const i = text.indexOf(needle);
  assert.ok(i >= 0, `no ${JSON.stringify(needle)}`);
  return at(text.slice(0, i + needle.length) + "\u0000", "\u0000");
}

Deno.test("editDistance: insertions, deletions, substitutions and adjacent transpositions", () => {
  assert.equal(editDistance("kitten", "sitting"), 3);
  assert.equal(editDistance("", "abc"), 3);
  assert.equal(editDistance("steps", "steps"), 0);
  assert.equal(editDistance("stesp", "steps"), 1);
  assert.equal(editDistance("ab", "ba"), 1);
  assert.equal(editDistance("abc", "ca"), 3);
});

Deno.test("didYouMean: suggests a close word, stays silent on a far one", () => {
  assert.equal(didYouMean("optimiser", ["optimizer", "model", "mse"]), ' (did you mean "optimizer"?)');
  assert.equal(didYouMean("lrr", ["models", "lr", "beta1"]), ' (did you mean "lr"?)');
  assert.equal(didYouMean("Steps", ["steps", "seed"]), ' (did you mean "steps"?)');
  assert.equal(didYouMean("warmup", ["models", "lr", "beta1"]), "");
  assert.equal(didYouMean("x", []), "");
});

Deno.test("keysAt: the keys a schema accepts through records, defaults and optionals", () => {
  assert.deepEqual(keysAt(ConfigSchema, []), ["version", "run", "models", "data", "stages"]);
  assert.deepEqual(keysAt(ConfigSchema, ["run"]), [
    "name",
    "seed",
    "executor",
    "steps",
    "out",
    "log_every",
    "cache",
    "fuse_phases",
  ]);
  assert.deepEqual(keysAt(ConfigSchema, ["stages", "anything"]), ["kind", "inputs", "params", "every", "at"]);
  assert.deepEqual(keysAt(ConfigSchema, ["version"]), []);
  assert.deepEqual(keysAt(z.strictObject({ a: z.strictObject({ b: z.number() }).optional() }), ["a"]), ["b"]);
});

Deno.test("zodIssues: wrong values are shown as written, next to what was expected", () => {
  const S = z.strictObject({
    a: z.string().regex(/^x/),
    f: z.string().regex(/\.svg$/, "a file name ending in .svg"),
    s: z.string().min(1),
    t: z.array(z.number()).max(2),
    n: z.number().int().min(0),
    k: z.enum(["sin", "cos"]),
    m: z.strictObject({ need: z.boolean() }),
  });
  const v = { a: "y", f: "a.png", s: "", t: [1, 2, 3], n: null, k: 3, m: { ned: true } };
  const r = S.safeParse(v);
  assert.ok(!r.success);
  assert.deepEqual(zodIssues(r.error, S, ["p"], v).map((i) => i.message), [
    '"p.a": expected a string matching /^x/, got "y"',
    '"p.f": expected a file name ending in .svg, got "a.png"',
    '"p.s": must not be empty',
    '"p.t": expected at most 2 items, got 3',
    '"p.n": expected a number, got an empty value',
    '"p.k": expected one of "sin", "cos", got 3',
    // The misspelt key alone: "missing need" would say the same thing again.
    '"p.m": unknown key "ned" (did you mean "need"?)',
  ]);
});

Deno.test("loadConfig: defaults are filled in, name and out come from the file", () => {
  const text = "version: 1\nstages:\n  plot: { kind: metrics }\n";
  const { config } = loadConfig("configs/my-run.v2.yaml", text);
  assert.deepEqual(config.run, {
    seed: 0,
    executor: "auto",
    steps: 1000,
    log_every: 10,
    cache: ".cache",
    fuse_phases: true,
    name: "my-run_v2",
    out: "out/my-run_v2",
  });
  assert.deepEqual(config.models, {});
  assert.deepEqual(config.stages.plot, { kind: "metrics", inputs: {}, params: {} });
  // Stage params get their kind's defaults when planned.
  const plan = planPipeline(loadConfig("c.yaml", text));
  assert.deepEqual(plan.stages.plot.params, { file: "metrics.svg", keys: [] });
  assert.equal(plan.stages.plot.every, 1);
});

Deno.test("loadConfig: --set overrides values, parses them as YAML, and is named in errors", () => {
  const loaded = loadConfig("c.yaml", TOY, ["run.steps=7", "stages.opt.params.lr=0.5", "run.executor=wasm"]);
  assert.equal(loaded.config.run.steps, 7);
  assert.equal(loaded.config.run.executor, "wasm");
  assert.equal((loaded.config.stages.opt.params as { lr: number }).lr, 0.5);
  assert.equal(loaded.where(["run", "steps"]), "--set run.steps=7");
  assert.equal(loaded.where(["run", "seed"]), after(TOY, "seed: "), "paths not overridden stay in the file");
  // A whole list, and a new key that then fails validation, both through --set.
  const l2 = loadConfig("c.yaml", TOY, ["stages.opt.params.models=[net]"]);
  assert.deepEqual((l2.config.stages.opt.params as { models: string[] }).models, ["net"]);
  assert.deepEqual(errorsOf(TOY, ["run.stesp=3"]), [
    '--set run.stesp=3: "run": unknown key "stesp" (did you mean "steps"?)',
  ]);
  assert.deepEqual(errorsOf(TOY, ["run.steps"]), ["--set run.steps: expected path=value (e.g. run.steps=10)"]);
  assert.deepEqual(errorsOf(TOY, ["run.steps.x=1"]), [
    '--set run.steps.x=1: "run.steps" is not a mapping, so "run.steps.x" cannot be set',
  ]);
  // The command line's own flags are named as typed.
  try {
    loadConfig("c.yaml", TOY, [{ set: "run.steps=abc", from: "--steps abc" }]);
    assert.fail("accepted steps=abc");
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    assert.deepEqual(e.lines, ['--steps abc: "run.steps": expected a number, got "abc"']);
  }
});

Deno.test("positions: a wrong value points at the value, an unknown key at the key, a missing one at its parent", () => {
  const bad = toy(["steps: 500", "steps: -1"], ["log_every: 50", "log_evry: 50"], ["{ in: 1, hidden", "{ hidden"]);
  const lines = errorsOf(bad);
  assert.deepEqual(lines, [
    `${at(bad, "-1")}: "run.steps": must be > 0, got -1`,
    `${at(bad, "log_evry")}: "run": unknown key "log_evry" (did you mean "log_every"?)`,
  ]);
  // Model params are checked in the second pass, once the first is clean.
  const bad2 = toy(["{ in: 1, hidden", "{ hidden"]);
  assert.deepEqual(errorsOf(bad2), [
    `${at(bad2, "params", 1)}: "models.net.params": missing key "in"; expected a number`,
  ]);
  // An item of a list: the model an optimizer names twice over.
  const bad3 = toy([
    "  ema:\n",
    "  opt2:\n    kind: optimizer\n    inputs: { loss: loss.loss }\n    params: { models: [net] }\n  ema:\n",
  ]);
  assert.deepEqual(errorsOf(bad3), [
    `${at(bad3, "net]", 2)}: optimizer "opt2": model "net" is already updated by optimizer "opt"; ` +
    "each model has at most one optimizer",
  ]);
});

Deno.test("validation: every independent problem is reported, each once, without follow-on errors", () => {
  const two = toy(["steps: 500", "steps: ten"], ["seed: 0", "seed: -1"]);
  assert.deepEqual(errorsOf(two), [
    `${at(two, "-1")}: "run.seed": must be ≥ 0, got -1`,
    `${at(two, "ten")}: "run.steps": expected a number, got "ten"`,
  ]);
  // A shape mismatch in mse leaves its loss untyped: the optimizer reading it is not blamed as well.
  const shape = toy(["out: 1, activation", "out: 2, activation"]);
  assert.deepEqual(errorsOf(shape), [
    `${at(shape, "batch.y }")}: stage "loss" (mse): input "target" is f32[64,1], expected f32[64,2]`,
  ]);
  // A misspelt required key is one error, not also "missing".
  assert.deepEqual(errorsOf(toy(["stages:", "stagse:"])).length, 1);
});

Deno.test("cycles are named from their first-declared stage, at the input that loops back", () => {
  // Declared c, a, b; data flows a → b → c → a.
  const text = `version: 1
models:
  net: { kind: mlp, params: { in: 1, hidden: [4], out: 1 } }
stages:
  c:
    kind: model
    inputs: { x: b.y }
    params: { model: net }
  a:
    kind: model
    inputs: { x: c.y }
    params: { model: net }
  b:
    kind: model
    inputs: { x: a.y }
    params: { model: net }
`;
  assert.deepEqual(errorsOf(text), [`${at(text, "b.y")}: cycle: c → a → b → c`]);
});

Deno.test("phases run in the optimizers' declaration order, whatever the order of their losses", () => {
  // opt_a is declared first but its loss last: data-flow order alone would run opt_b first.
  const text = `version: 1
models:
  a: { kind: mlp, params: { in: 1, hidden: [4], out: 1 } }
  b: { kind: mlp, params: { in: 1, hidden: [4], out: 1 } }
data:
  sine: { kind: toy_function, params: { fn: sin, size: 8 } }
stages:
  batch:
    kind: data
    params: { dataset: sine, batch: 4 }
  pb:
    kind: model
    inputs: { x: batch.x }
    params: { model: b }
  opt_a:
    kind: optimizer
    inputs: { loss: loss_a.loss }
    params: { models: [a] }
  loss_b:
    kind: mse
    inputs: { pred: pb.y, target: batch.y }
  opt_b:
    kind: optimizer
    inputs: { loss: loss_b.loss }
    params: { models: [b] }
  pa:
    kind: model
    inputs: { x: batch.x }
    params: { model: a }
  loss_a:
    kind: mse
    inputs: { pred: pa.y, target: batch.y }
`;
  const plan = planPipeline(loadConfig("c.yaml", text));
  assert.ok(plan.order.indexOf("opt_b") < plan.order.indexOf("opt_a"), "the data-flow order puts opt_b first");
  assert.deepEqual(plan.phases.map((p) => [p.optimizer, p.stages]), [["opt_a", ["pa", "loss_a"]], ["opt_b", [
    "pb",
    "loss_b",
  ]]]);
});

Deno.test("warnings: unused outputs and traced stages feeding no optimizer are warnings, not errors", () => {
  const text = toy([
    "  ema:\n",
    "  probe:\n    kind: model\n    inputs: { x: batch.x }\n    params: { model: net }\n  ema:\n",
  ]);
  const plan = planPipeline(loadConfig("c.yaml", text));
  assert.deepEqual(plan.warnings, [
    `${at(text, "probe:")}: warning: output "probe.y" is not used`,
    `${at(text, "probe:")}: warning: traced stage "probe" feeds no optimizer and never runs`,
  ]);
  assert.deepEqual(planPipeline(loadConfig("c.yaml", TOY)).warnings, []);
});

Deno.test("warnings: printed on stderr by the command line, which still succeeds", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    const file = `${tmp}/warn.yaml`;
    const text = toy([
      "  ema:\n",
      "  probe:\n    kind: model\n    inputs: { x: batch.x }\n    params: { model: net }\n  ema:\n",
    ]);
    await Deno.writeTextFile(file, text);
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        `--allow-read=.,${tmp}`,
        `--allow-write=.,${tmp}`,
        "--allow-env",
        "--allow-ffi",
        "--allow-sys",
        "main.ts",
        file,
        "--dry-run",
        "--out",
        `${tmp}/out`,
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(r.stderr), stdout = new TextDecoder().decode(r.stdout);
    assert.equal(r.code, 0, stderr);
    assert.equal(
      stderr.split("\n")[0],
      `${file}${at(text, "probe:").slice("c.yaml".length)}: warning: output "probe.y" is not used`,
    );
    assert.match(stdout, /^pipeline: 8 stages/);
    assert.ok(!stdout.includes("warning"), "warnings go to stderr only");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

// Stage kinds that read inputs in roles no built-in kind has, to reach the role rules.
const hostReader: StageDef<Record<string, never>> = {
  kind: "test_host_reader",
  doc: "a host stage with an input (test only)",
  role: "host",
  params: z.strictObject({}),
  inputs: ["x"],
  types: ({ inputs }) => ({ y: inputs.x }),
};
const effectReader: StageDef<Record<string, never>> = {
  kind: "test_effect_reader",
  doc: "an effect stage with an input (test only)",
  role: "effect",
  params: z.strictObject({}),
  inputs: ["x"],
  types: () => ({}),
};
registerStage(hostReader);
registerStage(effectReader);

Deno.test("roles: host and effect stages may read host outputs only", () => {
  const withStage = (kind: string, ref: string) =>
    toy(["  ema:\n", `  reader:\n    kind: ${kind}\n    inputs: { x: ${ref} }\n  ema:\n`]);
  const host = withStage("test_host_reader", "predict.y");
  assert.deepEqual(errorsOf(host), [
    `${at(host, "predict.y }")}: "predict.y" is a traced output; a host stage can only read host outputs`,
  ]);
  const effect = withStage("test_effect_reader", "loss.loss");
  assert.deepEqual(errorsOf(effect), [
    `${at(effect, "loss.loss }", 2)}: "loss.loss" is a traced output; ` +
    "an effect stage can only read host outputs (it reads models itself)",
  ]);
  // Reading a host output is fine for both (the host reader's own output then goes unused: a warning).
  assert.deepEqual(errorsOf(withStage("test_effect_reader", "batch.x")), []);
  const plan = planPipeline(loadConfig("c.yaml", withStage("test_host_reader", "batch.x")));
  assert.deepEqual(plan.warnings.map((w) => w.replace(/^\S+ /, "")), ['warning: output "reader.y" is not used']);
});

Deno.test("LoadedConfig.where: values, keys, list items, and the nearest existing key for missing paths", () => {
  const loaded: LoadedConfig = loadConfig("c.yaml", TOY);
  assert.equal(loaded.where(["stages", "opt", "params", "lr"]), at(TOY, "0.01"));
  assert.equal(loaded.where(["stages", "opt", "params", "lr"], true), at(TOY, "lr:"));
  assert.equal(loaded.where(["stages", "opt", "params", "models", 0]), at(TOY, "net]"));
  // A path below a missing key lands on the nearest key that exists.
  assert.equal(loaded.where(["stages", "opt", "params", "nope", "deeper"]), at(TOY, "params: { models"));
  assert.equal(loaded.where(["nope"]), at(TOY, "version"));
});
