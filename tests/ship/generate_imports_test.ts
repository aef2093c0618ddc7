// The generator must run from an exported folder with none of the training code, so that a browser page can use
// ship/generate_core.ts as it is: its module graph (and the generate CLI's) is checked with `deno info`.
import assert from "node:assert/strict";
import { ROOT } from "../helpers/cli_run.ts";

async function moduleGraph(entry: string): Promise<string[]> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `--config=${ROOT}deno.json`, entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  const info = JSON.parse(new TextDecoder().decode(r.stdout)) as { modules: { specifier: string }[] };
  return info.modules.map((m) => m.specifier.replace(`file://${ROOT}`, "./")).sort();
}

Deno.test("generate.ts and ship/generate_core.ts import only ship's generation modules, onnxruntime, transformers.js and fast-png", async () => {
  const allowedNpm = /^npm:\/(onnxruntime-(node|web)|@huggingface\/transformers|fast-png|commander)@/;
  for (
    const [entry, own] of [
      ["./ship/generate_core.ts", ["./ship/generate_core.ts", "./ship/manifest.ts", "./ship/philox.ts"]],
      [
        "./generate.ts",
        ["./generate.ts", "./ship/generate_core.ts", "./ship/manifest.ts", "./ship/philox.ts", "./ship/run_command.ts"],
      ],
    ] as const
  ) {
    const mods = await moduleGraph(entry);
    assert.deepEqual(mods.filter((m) => m.startsWith("./") || m.startsWith("file:")), [...own].sort(), entry);
    const other = mods.filter((m) => !m.startsWith("./") && !m.startsWith("node:") && !allowedNpm.test(m));
    assert.deepEqual(other, [], `${entry} imports more than it may`);
    if (entry.includes("core")) assert.ok(!mods.some((m) => m.includes("commander")), "the core needs no CLI parser");
  }
});
