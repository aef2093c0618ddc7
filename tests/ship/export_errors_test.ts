// Bad input to deno task export and generate: one line naming what is wrong, a non-zero exit, and nothing written.
import assert from "node:assert/strict";
import { cli, ROOT, tmp } from "../helpers/cli_run.ts";

const EXPORT = `${ROOT}export.ts`, GENERATE = `${ROOT}generate.ts`;

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** Runs the CLI, expects exit 1 with one stderr line matching `re`, and `dir` unchanged. */
async function refused(script: string, args: string[], re: RegExp, dir: string) {
  const before = await listing(dir);
  const r = await cli(args, script);
  const lines = r.stderr.trim().split("\n");
  assert.equal(r.code, 1, `exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], re);
  assert.deepEqual(await listing(dir), before, "nothing may be written");
}

Deno.test({
  name: "export refuses a missing folder, a config without a UNet, a checkpoint without weights, a bad --out",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("ship_errors"), out = `${root}/dist/x`;
    await refused(EXPORT, [`${root}/nope`, "--out", out], /nope: no such folder$/, root);
    await Deno.mkdir(`${root}/empty`);
    await refused(EXPORT, [`${root}/empty`, "--out", out], /neither a run folder .* nor a checkpoint folder/, root);
    await Deno.mkdir(`${root}/mlp`);
    await Deno.writeTextFile(`${root}/mlp/config.yaml`, "version: 1\nmodels:\n  net:\n    kind: mlp\n");
    await refused(EXPORT, [`${root}/mlp`, "--out", out], /mlp\/config\.yaml: no unet model in the config/, root);
    await Deno.mkdir(`${root}/noweights`);
    await Deno.copyFile(`${ROOT}models/teacher/config.yaml`, `${root}/noweights/config.yaml`);
    await refused(
      EXPORT,
      [`${root}/noweights`, "--out", out],
      /noweights: no unet\.ema\.safetensors or unet\.safetensors/,
      root,
    );
    await Deno.mkdir(`${root}/run/checkpoints`, { recursive: true });
    await refused(EXPORT, [`${root}/run`, "--out", out], /run\/checkpoints: no complete checkpoint/, root);
    // --out under a file cannot be made; --out a folder of other files is not overwritten.
    await Deno.writeTextFile(`${root}/file`, "x");
    await refused(
      EXPORT,
      [`${ROOT}models/teacher`, "--out", `${root}/file/dist/x`],
      /--out .*: cannot write the export/,
      root,
    );
    // Outside what the process may write (its permissions are the temporary root): refused at the write, nothing made.
    const denied = `/ship-export-test-${crypto.randomUUID().slice(0, 8)}`;
    await refused(
      EXPORT,
      [`${ROOT}models/teacher`, "--out", `${denied}/x`],
      /cannot write the export \(.*write access/,
      root,
    );
    assert.equal(await Deno.stat(denied).then(() => true, () => false), false);
    await Deno.mkdir(`${root}/busy`);
    await Deno.writeTextFile(`${root}/busy/notes.txt`, "mine");
    await refused(EXPORT, [`${ROOT}models/teacher`, "--out", `${root}/busy`], /busy: a folder with other files/, root);
    assert.deepEqual(await listing(`${root}/busy`), ["notes.txt"]);
  },
});

Deno.test({
  name: "generate refuses a folder without a manifest, steps it has no timesteps for, a bad seed",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("ship_errors_gen"), dist = `${root}/dist`, png = `${root}/x.png`;
    const ok = await cli([`${ROOT}models/teacher`, "--out", dist], EXPORT);
    assert.equal(ok.code, 0, ok.stderr);
    const base = ["--prompt", "red apple", "--out", png];
    await refused(
      GENERATE,
      ["--model", `${root}/none`, ...base],
      /none\/manifest\.json: cannot read the manifest/,
      root,
    );
    await refused(
      GENERATE,
      ["--model", dist, "--steps", "9", ...base],
      /^steps 9: this export samples in 1, 2, 3, 4 steps$/,
      root,
    );
    await refused(GENERATE, ["--model", dist, "--seed", "-1", ...base], /^--seed -1: expected an integer ≥ 0$/, root);
    const m = JSON.parse(await Deno.readTextFile(`${dist}/manifest.json`));
    m.sampler.timesteps["2"] = [999, 999];
    await Deno.writeTextFile(`${dist}/manifest.json`, JSON.stringify(m));
    await refused(GENERATE, ["--model", dist, ...base], /"sampler\.timesteps\.2" must be 2 strictly decreasing/, root);
  },
});
