/**
 * The bad-config corpus: every `tests/pipeline/bad_configs/*.yaml` is the toy config with one problem. Run through
 * the real command line, each must exit 2 before anything is written, and its first stderr line must be exactly the
 * one its `# expect:` line gives (`{file}` standing for its path), with no stack trace anywhere. A `# args:` line
 * adds command-line arguments. The toy config itself, run the same way, is the control: it writes its output folder.
 */
import assert from "node:assert/strict";

const ROOT = decodeURIComponent(new URL("../..", import.meta.url).pathname);
const DIR = "tests/pipeline/bad_configs";
/** Subprocesses at once: enough to hide each one's start-up, few enough for a shared 2-core machine. */
const CONCURRENCY = 4;

interface Case {
  name: string;
  file: string;
  expect: string;
  args: string[];
}

interface Outcome {
  code: number;
  stderr: string;
  wrote: boolean;
}

function readCases(): Case[] {
  const cases: Case[] = [];
  for (const e of Deno.readDirSync(`${ROOT}${DIR}`)) {
    if (!e.isFile || !e.name.endsWith(".yaml")) continue;
    const file = `${DIR}/${e.name}`;
    const lines = Deno.readTextFileSync(`${ROOT}${file}`).split("\n");
    const m = /^# expect: (.+)$/.exec(lines[0]);
    if (!m) throw new Error(`${file}:1:1: the first line must be "# expect: <the expected first error line>"`);
    const argLine = lines.slice(1, 4).find((l) => l.startsWith("# args: "));
    cases.push({
      name: e.name.replace(/\.yaml$/, ""),
      file,
      expect: m[1].replaceAll("{file}", file),
      args: argLine ? argLine.slice("# args: ".length).trim().split(/\s+/) : [],
    });
  }
  return cases.sort((a, b) => a.name.localeCompare(b.name));
}

/** Runs `main.ts` on a config as `deno task run` would, but free to write into a fresh temp folder. */
async function runMain(file: string, args: string[]): Promise<Outcome> {
  const tmp = await Deno.makeTempDir({ prefix: "bad_config_" });
  const out = `${tmp}/out`;
  try {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        // The temp folder is writable, so "nothing was written" is the program's doing, not the sandbox's.
        `--allow-read=.,${tmp}`,
        `--allow-write=.,${tmp}`,
        "--allow-env",
        "--allow-ffi",
        "--allow-sys",
        "main.ts",
        file,
        "--out",
        out,
        ...args,
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    });
    const r = await cmd.output();
    const wrote = await Deno.stat(out).then(() => true, () => false);
    return { code: r.code, stderr: new TextDecoder().decode(r.stderr), wrote };
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/** Maps `f` over `items`, at most `n` at a time, keeping order. */
async function pool<T, R>(items: T[], n: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await f(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return results;
}

Deno.test("bad configs: each exits 2 with its one-line error and writes nothing", async (t) => {
  const cases = readCases();
  assert.ok(cases.length >= 30, `only ${cases.length} bad configs in ${DIR}`);
  const outcomes = await pool(cases, CONCURRENCY, (c) => runMain(c.file, c.args));
  for (const [i, c] of cases.entries()) {
    await t.step(c.name, () => {
      const o = outcomes[i];
      const first = o.stderr.split("\n")[0];
      assert.equal(first, c.expect, `${c.file}: first stderr line\n${o.stderr}`);
      assert.equal(o.code, 2, `${c.file}: exit code\n${o.stderr}`);
      assert.doesNotMatch(o.stderr, /^\s+at /m, `${c.file}: a stack trace on stderr\n${o.stderr}`);
      assert.equal(o.wrote, false, `${c.file}: the output folder was created`);
    });
  }
});

Deno.test("bad configs: every expected line is distinct and names a position or a flag", () => {
  const cases = readCases();
  const seen = new Map<string, string>();
  for (const c of cases) {
    assert.match(c.expect, /^(tests\/pipeline\/bad_configs\/[\w-]+\.yaml:\d+:\d+|--[a-z]+ \S+): \S/, c.file);
    assert.ok(!seen.has(c.expect), `${c.file} expects the same line as ${seen.get(c.expect)}`);
    seen.set(c.expect, c.file);
  }
});

Deno.test("bad configs: the control — the toy config, run the same way, exits 0 and writes its output", async () => {
  const o = await runMain("configs/toy.yaml", ["--steps", "2"]);
  assert.equal(o.code, 0, o.stderr);
  assert.equal(o.wrote, true);
  assert.equal(o.stderr, "", "a valid config prints no warnings");
});
