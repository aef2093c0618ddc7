// deno task serve's bad input: one line and exit 1, before anything is bundled or served.
import assert from "node:assert/strict";
import { ROOT, tmp } from "../helpers/cli_run.ts";

async function serve(args: string[], cwd: string): Promise<{ code: number; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${ROOT}deno.json`, "--allow-read", "--allow-env", `${ROOT}serve.ts`, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: r.code, stderr: new TextDecoder().decode(r.stderr) };
}

Deno.test("serve: a bad --port is one line, exit 1", async () => {
  const r = await serve(["--model", "dist/x", "--port", "70000"], ROOT);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, "--port 70000: expected 0–65535\n");
});

Deno.test("serve: without --model it needs exactly one export under dist/", async () => {
  const dir = await tmp("serve_cli");
  const none = await serve([], dir);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /^--model: pass the exported folder to serve \(dist\/ holds no export; [^\n]*\)\n$/);
  for (const name of ["a", "b"]) {
    await Deno.mkdir(`${dir}/dist/${name}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/dist/${name}/manifest.json`, "{}");
  }
  const two = await serve([], dir);
  assert.equal(two.code, 1);
  assert.match(two.stderr, /\(dist\/ holds a, b; /);
});
