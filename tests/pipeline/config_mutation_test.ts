/**
 * Config mutation: the shipped configs (configs/*.yaml, all of them: `--dry-run` needs no data), each changed in one
 * place — a key deleted, a value of the wrong type, a number out of range (1e12, -1, 0), an empty string or list, a
 * reference to a stage, model or dataset that does not exist — and run through the command line's `--dry-run`
 * in-process. Every mutant must either validate or fail with exit code 2 and only one-line errors that start with a
 * `file:line:col` of an existing file: never an uncaught exception, a stack trace, or a written output folder.
 *
 * The mutants are enumerated deterministically and a fixed-size sample is drawn with Philox (counter-based, so the
 * sample is the same on every machine), after the mutants of the crashes the first mutation run found. Set
 * `ADD_MUTANTS=all` (or a number) to run every mutant (or that many) instead, about 40 s for all ~3,200, and
 * `ADD_MUTANTS_VERBOSE=1` to print each mutant and its outcome.
 *
 * The other tests here pin what the harness cannot: the wording of trace and memory errors, and that one mistake
 * which several errors follow from is said once.
 */
import assert from "node:assert/strict";
import { isAlias, isMap, isScalar, isSeq, type Node, parseDocument } from "yaml";
import "../../stages/mod.ts";
import { runCli } from "../../pipeline/cli.ts";
import { ConfigError, loadConfig } from "../../pipeline/config.ts";
import { type Plan, planPipeline } from "../../pipeline/plan.ts";
import { tracePhase } from "../../pipeline/trace_phase.ts";
import { philox4x32 } from "../../engine/rng.ts";

const ROOT = decodeURIComponent(new URL("../..", import.meta.url).pathname);
/** Mutants sampled by default: about 10 s on a loaded 2-core machine, so the test stays well under a minute. */
const SAMPLE = 800;
const SEED = 20240601;

type Path = (string | number)[];

interface Mutant {
  config: string;
  path: Path;
  op: string;
  /** The value set at `path`; `undefined` deletes it. */
  value?: unknown;
}

/** The config's text with `extends` and relative `init` paths made absolute, so a copy elsewhere still resolves. */
function rooted(file: string): string {
  const doc = parseDocument(Deno.readTextFileSync(`${ROOT}${file}`));
  const ext = doc.get("extends");
  if (typeof ext === "string") doc.set("extends", `${ROOT}configs/${ext}`);
  const models = doc.get("models");
  if (isMap(models)) {
    for (const pair of models.items) {
      const init = isMap(pair.value) ? pair.value.get("init") : undefined;
      if (typeof init === "string" && !init.startsWith("/")) {
        doc.setIn(["models", (pair.key as { value: string }).value, "init"], `${ROOT}configs/${init}`);
      }
    }
  }
  return String(doc);
}

/** Every (path, node) of a document below its root, skipping aliases (their anchor is mutated instead). */
function sites(node: unknown, path: Path = [], out: { path: Path; node: Node | null }[] = []) {
  if (isMap(node)) {
    for (const pair of node.items) {
      if (!isScalar(pair.key)) continue;
      const p = [...path, String(pair.key.value)];
      if (isAlias(pair.value)) continue;
      out.push({ path: p, node: pair.value as Node | null });
      sites(pair.value, p, out);
    }
  } else if (isSeq(node)) {
    node.items.forEach((item, i) => {
      if (isAlias(item)) return;
      out.push({ path: [...path, i], node: item as Node });
      sites(item, [...path, i], out);
    });
  }
  return out;
}

const isInput = (p: Path) => p.length === 4 && p[0] === "stages" && p[2] === "inputs";

/** The mutations of one site, in a fixed order. */
function mutationsOf(config: string, path: Path, node: Node | null): Mutant[] {
  const m = (op: string, value?: unknown): Mutant => ({ config, path, op, value });
  const out = [m("delete")];
  if (isScalar(node)) {
    const v = node.value;
    if (typeof v === "number") out.push(m("1e12", 1e12), m("-1", -1), m("0", 0), m("wrong type", "abc"));
    else if (typeof v === "boolean") out.push(m("wrong type", 42));
    else if (typeof v === "string") {
      out.push(m("empty string", ""), m("wrong type", 42));
      if (isInput(path)) out.push(m("unknown stage", `nowhere.${v.split(".")[1] ?? "x"}`));
      else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(v)) out.push(m("unknown name", "nowhere"));
    }
  } else if (isMap(node)) {
    out.push(m("wrong type", 42));
  } else if (isSeq(node)) {
    out.push(m("wrong type", "abc"), m("empty list", []));
  }
  return out;
}

/** Every mutant of every shipped config, in a fixed order. */
function allMutants(): { mutants: Mutant[]; texts: Map<string, string> } {
  const texts = new Map<string, string>();
  const mutants: Mutant[] = [];
  const files = [...Deno.readDirSync(`${ROOT}configs`)].filter((e) => e.isFile && e.name.endsWith(".yaml"))
    .map((e) => `configs/${e.name}`).sort();
  for (const file of files) {
    const text = rooted(file);
    texts.set(file, text);
    for (const s of sites(parseDocument(text).contents)) mutants.push(...mutationsOf(file, s.path, s.node));
  }
  return { mutants, texts };
}

/** `n` distinct indices below `total`, by a Philox-driven partial Fisher–Yates shuffle. */
function sample(total: number, n: number, seed: number): number[] {
  const idx = Array.from({ length: total }, (_, i) => i);
  for (let i = 0; i < Math.min(n, total); i++) {
    const r = philox4x32([i, 0, 0, 0], [seed, 0])[0];
    const j = i + (r % (total - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, Math.min(n, total));
}

/** The mutant's text, or null when the mutation cannot be applied (a path through an alias). */
function apply(text: string, mu: Mutant): string | null {
  const doc = parseDocument(text);
  try {
    if (mu.value === undefined) doc.deleteIn(mu.path);
    else doc.setIn(mu.path, doc.createNode(mu.value));
    // Deleting an anchor leaves its aliases unresolved, which only writing the text finds.
    return String(doc);
  } catch {
    return null;
  }
}

interface Outcome {
  code: number | "threw";
  lines: string[];
  ms: number;
  wrote: boolean;
}

/** Runs `--dry-run` in-process on `file`, with stderr captured. */
async function dryRun(file: string, out: string): Promise<Outcome> {
  const lines: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => lines.push(a.map(String).join(" "));
  const t0 = performance.now();
  let code: Outcome["code"];
  try {
    code = await runCli([file, "--dry-run", "--out", out], () => {});
  } catch (e) {
    code = "threw";
    lines.push(String((e as Error)?.stack ?? e));
  } finally {
    console.error = error;
  }
  const wrote = await Deno.stat(out).then(() => true, () => false);
  return { code, lines, ms: performance.now() - t0, wrote };
}

const POSITION = /^(\/[^:]+):(\d+):(\d+): \S/;

/** Why an outcome breaks the rule for bad input, or null when it keeps it. */
function verdict(o: Outcome): string | null {
  if (o.code === "threw") {
    return `uncaught exception: ${o.lines[o.lines.length - 1].split("\n").slice(0, 3).join(" | ")}`;
  }
  if (o.wrote) return "wrote its output folder";
  if (o.code !== 0 && o.code !== 2) return `exit code ${o.code}`;
  if (o.code === 2 && !o.lines.some((l) => !l.includes(": warning: "))) return "exit 2 without an error line";
  for (const l of o.lines) {
    if (l.includes("\n") || /^\s+at /m.test(l)) return `multi-line error: ${JSON.stringify(l.slice(0, 200))}`;
    const m = POSITION.exec(l);
    if (!m) return `error without a file:line:col: ${JSON.stringify(l.slice(0, 200))}`;
    if (!Deno.statSync(m[1]).isFile) return `position in a file that does not exist: ${l}`;
  }
  return null;
}

/**
 * The crashes of the first mutation runs: a feature level that is empty or not a layer name, channel counts and
 * repeat counts of 1e12, a schedule of 1e12 timesteps, a batch that cannot fit, heads whose widths disagree with the
 * feature network (thrown while tracing), and `--out` into a `run` that is not a mapping.
 */
const REGRESSIONS: Mutant[] = [
  { config: "configs/add_paper.yaml", path: ["models", "features", "params", "levels"], op: "empty list", value: [] },
  { config: "configs/add_paper.yaml", path: ["models", "features", "params", "levels", 0], op: "empty", value: "" },
  { config: "configs/add_paper.yaml", path: ["models", "features", "params", "levels", 1], op: "name", value: "x y" },
  { config: "configs/add_paper.yaml", path: ["models", "student", "params", "channels", 0], op: "1e12", value: 1e12 },
  { config: "configs/add_paper.yaml", path: ["models", "disc", "params", "channels", 0], op: "1e12", value: 1e12 },
  { config: "configs/add_paper.yaml", path: ["models", "disc", "params", "channels", 0], op: "25", value: 25 },
  { config: "configs/add_dmd.yaml", path: ["models", "fake", "params", "blocks"], op: "1e12", value: 1e12 },
  { config: "configs/teacher.yaml", path: ["stages", "noise", "params", "schedule", "T"], op: "1e12", value: 1e12 },
  { config: "configs/toy.yaml", path: ["stages", "batch", "params", "batch"], op: "1e12", value: 1e12 },
  { config: "configs/toy.yaml", path: ["run"], op: "wrong type", value: 42 },
];

/** Runs the mutants, returning what broke the rule and a tally. */
async function runMutants(chosen: Mutant[], texts: Map<string, string>, verbose: boolean) {
  const tmp = await Deno.makeTempDir({ prefix: "config_mutation_" });
  const failures: string[] = [];
  const tally = { valid: 0, rejected: 0, skipped: 0 };
  let slowest = { ms: 0, what: "" };
  try {
    for (const mu of chosen) {
      const text = apply(texts.get(mu.config)!, mu);
      if (text === null) {
        tally.skipped++;
        continue;
      }
      const file = `${tmp}/${mu.config.replace(/^.*\//, "")}`;
      await Deno.writeTextFile(file, text);
      const what = `${mu.config} ${mu.path.join(".")} ← ${mu.op}`;
      if (verbose) console.log(what);
      const o = await dryRun(file, `${tmp}/out`);
      if (verbose) console.log(`  ${o.code} ${o.ms.toFixed(0)} ms ${o.lines.join(" // ").slice(0, 300)}`);
      if (o.ms > slowest.ms) slowest = { ms: o.ms, what };
      const bad = verdict(o);
      if (bad) failures.push(`${what}: ${bad}`);
      else tally[o.code === 0 ? "valid" : "rejected"]++;
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return { failures, tally, slowest };
}

Deno.test("config mutation: every mutant of the shipped configs validates or fails with one-line positioned errors", async () => {
  const { mutants, texts } = allMutants();
  const want = Deno.env.get("ADD_MUTANTS");
  const n = want === "all" ? mutants.length : want ? Number(want) : SAMPLE;
  const chosen = [...REGRESSIONS, ...sample(mutants.length, n, SEED).map((i) => mutants[i])];
  const { failures, tally, slowest } = await runMutants(chosen, texts, Deno.env.get("ADD_MUTANTS_VERBOSE") === "1");
  console.log(
    `${chosen.length} mutants (${REGRESSIONS.length} regressions, ${n} of ${mutants.length} sampled): ` +
      `${tally.valid} valid, ${tally.rejected} rejected, ${tally.skipped} not applicable, ${failures.length} broke ` +
      `the rule; slowest ${slowest.ms.toFixed(0)} ms (${slowest.what})`,
  );
  assert.deepEqual(failures, []);
});

/**
 * The error lines of `--dry-run` on `text`, written as `name` in a temp folder: `{file}` in them stands for the file,
 * `{tmp}` for the folder.
 */
async function dryRunErrors(name: string, text: string, args: string[] = []): Promise<string[]> {
  const tmp = await Deno.makeTempDir({ prefix: "config_mutation_" });
  try {
    const file = `${tmp}/${name}`;
    await Deno.writeTextFile(file, text);
    const lines: string[] = [];
    const error = console.error;
    console.error = (...a: unknown[]) => lines.push(a.map(String).join(" "));
    try {
      const code = await runCli([file, "--dry-run", "--out", `${tmp}/out`, ...args], () => {});
      assert.equal(code, lines.some((l) => !l.includes(": warning: ")) ? 2 : 0);
    } finally {
      console.error = error;
    }
    return lines.filter((l) => !l.includes(": warning: ")).map((l) =>
      l.replaceAll(file, "{file}").replaceAll(tmp, "{tmp}")
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/** `{file}:L:C` of the first `needle` in `text`, plus `offset` columns. */
function at(text: string, needle: string, offset = 0): string {
  const i = text.indexOf(needle);
  assert.ok(i >= 0, `no ${JSON.stringify(needle)}`);
  const before = text.slice(0, i).split("\n");
  return `{file}:${before.length}:${before[before.length - 1].length + 1 + offset}`;
}

const TOY = Deno.readTextFileSync(`${ROOT}configs/toy.yaml`);
/** A shipped config's own text, with its `extends` and `init` paths made absolute (as written, unlike `rooted`). */
const shipped = (name: string) =>
  Deno.readTextFileSync(`${ROOT}configs/${name}`).replace(/^(extends| {4}init): (?!\/)/gm, `$1: ${ROOT}configs/`);
const PAPER = shipped("add_paper.yaml");

/** `text` with `from` replaced (it must occur). */
function edit(text: string, from: string | RegExp, to: string): string {
  assert.ok(typeof from === "string" ? text.includes(from) : from.test(text), `no ${from}`);
  return text.replace(from, to);
}

Deno.test("tracing: what a stage throws while its phase is traced is one line at the stage", async () => {
  // The heads read 25 channels where MobileNetV2's first level has 24: only the traced conv finds it.
  const text = edit(PAPER, "channels: [24, 32, 96, 320]", "channels: [25, 32, 96, 320]");
  assert.deepEqual(await dryRunErrors("paper.yaml", text), [
    `${at(text, "  adversarial:", 2)}: stage "adversarial" (add_discriminator): conv2d: input [16,24,16,16] and ` +
    `weight [64,25,1,1] do not fit groups=1`,
  ]);
});

Deno.test("tracing with ADD_DEBUG=1: the one line, and then the stack of what the stage threw", async () => {
  const text = edit(PAPER, "channels: [24, 32, 96, 320]", "channels: [25, 32, 96, 320]");
  const tmp = await Deno.makeTempDir({ prefix: "config_mutation_debug_" });
  try {
    await Deno.writeTextFile(`${tmp}/paper.yaml`, text);
    const run = (debug: boolean) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}main.ts`, `${tmp}/paper.yaml`, "--dry-run", "--out", `${tmp}/out`],
        env: { NO_COLOR: "1", ...(debug ? { ADD_DEBUG: "1" } : {}) },
        stdout: "null",
        stderr: "piped",
      }).output();
    const [plain, debug] = [await run(false), await run(true)];
    const dec = (b: Uint8Array) => new TextDecoder().decode(b).split("\n").filter((l) => !l.includes(": warning: "));
    const one = dec(plain.stderr).filter((l) => l.trim());
    assert.equal(plain.code, 2);
    assert.equal(one.length, 1, one.join("\n"));
    assert.match(one[0], /stage "adversarial" \(add_discriminator\): conv2d: /);
    const lines = dec(debug.stderr);
    assert.equal(debug.code, 2);
    assert.ok(lines.some((l) => /^\s+at .*ops\.ts:\d+:\d+/.test(l)), `no stack in:\n${lines.join("\n")}`);
    assert.ok(lines.includes(one[0]), "the one line is still there");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("memory: a model or a batch that cannot fit is one line with the estimate, before anything is allocated", async () => {
  const batch = edit(TOY, "batch: 64", "batch: 1000000000000");
  const [line, ...rest] = await dryRunErrors("toy.yaml", batch);
  assert.deepEqual(rest, []);
  assert.match(
    line,
    /^\{file\}:21:3: stage "batch": the run needs about 12 TB \(models 14 kB, one step's tensors 12 TB\), more than this machine's [\d.]+ [kMGT]B of memory; its largest tensor is "batch.(x|y)" f32\[1000000000000,1\]$/,
  );
  // A machine of 10 kB cannot hold the 14 kB of the net's values and Adam's moments.
  const loaded = loadConfig("c.yaml", TOY);
  assert.throws(() => planPipeline(loaded, { machineMemory: 10_000 }), (e: unknown) => {
    assert.ok(e instanceof ConfigError);
    assert.deepEqual(e.lines, [
      `c.yaml:13:5: model "net" (mlp) needs about 14 kB for its parameters, more than this machine's 10 kB of memory ` +
      `(1,153 parameters × 4 bytes × 3: its values and the optimizer's "m", "v")`,
    ]);
    return true;
  });
  // The traced graph's peak is what a traced plan is checked against: a byte less than it is an error.
  const tracer = (p: Plan, phase: Plan["phases"][number]) => tracePhase(p, phase, 10);
  const traced = planPipeline(loaded, { tracer, machineMemory: 1e12 }).memory;
  assert.equal(traced.basis, "traced");
  assert.ok(traced.step > 0 && traced.total === traced.step + 1153 * 12, JSON.stringify(traced));
  assert.throws(
    () => planPipeline(loaded, { tracer, machineMemory: traced.total - 1 }),
    (e: unknown) => e instanceof ConfigError && e.lines.length === 1 && /: stage "\w+": the run needs/.test(e.lines[0]),
  );
});

/** The error lines of planning `text` as `c.yaml`, or [] when it is valid. */
function planErrors(text: string, overrides: string[] = []): string[] {
  try {
    planPipeline(loadConfig("c.yaml", text, overrides));
    return [];
  } catch (e) {
    if (e instanceof ConfigError) return e.lines.map((l) => l.replace(/^c\.yaml/, "{file}"));
    throw e;
  }
}

Deno.test("causes once: a deleted stage, model or dataset, or deleted params, is one error however often it is named", () => {
  const noBatch = edit(TOY, / {2}batch:\n.*\n.*\n/, "");
  assert.deepEqual(planErrors(noBatch), [
    `${at(noBatch, "batch.x")}: stage "batch" is not defined (referenced by predict, loss); stages: predict, loss, ` +
    `opt, ema, ckpt, plot`,
  ]);
  const noNet = edit(TOY, /models:\n {2}net:\n.*\n.*\n/, "");
  assert.deepEqual(planErrors(noNet), [
    `${at(noNet, "model: net", 7)}: model "net" is not declared (used by predict, opt, ema); declared models: (none)`,
  ]);
  const noInputs = edit(TOY, "    inputs: { pred: predict.y, target: batch.y }\n", "");
  assert.deepEqual(planErrors(noInputs), [
    `${at(noInputs, "  loss:", 2)}: stage "loss" (mse) needs inputs "pred", "target"`,
  ]);
  const noParams = edit(shipped("add.yaml"), /( {2}pairs:\n {4}kind: teacher_pairs\n) {4}params:\n( {6}.*\n)+/, "$1");
  assert.deepEqual(planErrors(noParams), [
    `${at(noParams, "  pairs:", 2)}: "stages.pairs.params": missing keys "model", "dataset"; expected a string each`,
  ]);
});

Deno.test("causes once: a value shared through a YAML alias is one error naming each path", () => {
  const text = edit(PAPER, "channels: [32, 64, 64]", "channels: [0, 64, 64]");
  assert.deepEqual(planErrors(text), [
    `${at(text, "[0, 64, 64]", 1)}: "models.student.params.channels.0" (and "models.teacher.params.channels.0": the ` +
    `same value): must be > 0, got 0`,
  ]);
});

Deno.test("--out into a run that is not a mapping is an error at the file's run, not at the flag", async () => {
  const text = edit(TOY, /run:\n( {2}.*\n)+/, "run: 42\n");
  assert.deepEqual(await dryRunErrors("toy.yaml", text), [
    `${at(text, "42")}: "run": expected a mapping, got 42 (--out {tmp}/out sets "run.out" in it)`,
  ]);
});
