// The page draws through the generator `deno task generate` uses, not a copy: web/app.ts's own modules are ship's
// generation core and nothing else of the project (its npm packages are the core's).
import assert from "node:assert/strict";
import { ROOT } from "../helpers/cli_run.ts";

Deno.test("web/app.ts imports ship/generate_core.ts and no other project code", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `--config=${ROOT}deno.json`, "./web/app.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  const mods = (JSON.parse(new TextDecoder().decode(r.stdout)) as { modules: { specifier: string }[] }).modules
    .map((m) => m.specifier.replace(`file://${ROOT}`, "./")).filter((m) => m.startsWith("./")).sort();
  assert.deepEqual(mods, ["./ship/generate_core.ts", "./ship/manifest.ts", "./ship/philox.ts", "./web/app.ts"]);
});
