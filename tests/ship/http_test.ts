// A web page reads an export over http: the generator loaded by an http URL (a local server in a subprocess that may
// use the network, which the test suite itself may not) draws the same image as from the folder on disk.
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { ShippedGenerator } from "../../ship/generate_core.ts";
import { cli, expectCode, ROOT, tmp } from "../helpers/cli_run.ts";

Deno.test({
  name: "generate over http (every file fetched by URL, as in a page) equals generate from the folder",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = await tmp("ship_http"), dist = `${root}/dist`, out = `${root}/img.f32`;
    expectCode(await cli([`${ROOT}models/teacher`, "--out", dist], `${ROOT}export.ts`), 0, "export");
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", `--config=${ROOT}deno.json`, "--allow-net=127.0.0.1", "--allow-read", `--allow-write=${root}`]
        .concat(["--allow-env", "--allow-ffi", "--allow-sys", `${ROOT}tests/ship/http_generate.ts`])
        .concat([dist, "red apple", "4", "11", out]),
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    const got = new Float32Array((await Deno.readFile(out)).buffer);
    const g = await ShippedGenerator.load(pathToFileURL(dist));
    const want = await g.generate({ prompt: "red apple", steps: 4, seed: 11 });
    await g.dispose();
    assert.equal(got.length, 3 * 32 * 32);
    assert.ok(got.every((v, i) => Math.abs(v - want[i]) <= 1e-6), "the images differ");
  },
});
