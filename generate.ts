/**
 * `deno task generate --model dist/<name> --prompt "red apple" [--steps 1..4] [--seed N] [--executor cpu|wasm|webgpu]
 * [--scale K] --out x.png`: draws one image from an exported student folder alone (ship/generate_core.ts). Like that
 * module, it imports none of the training code.
 *
 * @module
 */
import { Command, Option } from "commander";
import { runCommand } from "./ship/run_command.ts";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { imageToPng, type ShipExecutor, ShippedGenerator } from "./ship/generate_core.ts";

function intOption(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`${name} ${v}: expected an integer ≥ ${min}`);
  return n;
}

/** Runs the generate CLI; returns the exit code. */
export async function generateCli(argv: readonly string[]): Promise<number> {
  const program = new Command()
    .name("deno task generate")
    .description("Draws one image from an exported student folder (deno task export) and writes it as PNG.")
    .exitOverride()
    .requiredOption("--model <dir>", "an exported folder (manifest.json, unet.onnx, text_encoder/)")
    .requiredOption("--prompt <text>", "what to draw")
    .option("--steps <n>", "sampler steps (the manifest's default when omitted)")
    .option("--seed <n>", "fixes the noise", "0")
    .addOption(new Option("--executor <name>", "where the UNet runs").choices(["cpu", "wasm", "webgpu"]).default("cpu"))
    .option("--scale <k>", "repeat each pixel k times each way", "1")
    .requiredOption("--out <file>", "the PNG to write")
    .action(async (o) => {
      const seed = intOption("--seed", o.seed, 0), scale = intOption("--scale", o.scale, 1);
      const steps = o.steps === undefined ? undefined : intOption("--steps", o.steps, 1);
      const g = await ShippedGenerator.load(pathToFileURL(resolve(o.model)), o.executor as ShipExecutor);
      try {
        g.timesteps(steps); // a bad --steps fails before any work
        const t0 = performance.now();
        const img = await g.generate({ prompt: o.prompt, steps, seed });
        const ms = performance.now() - t0;
        const { channels, size } = g.manifest.image;
        await Deno.mkdir(dirname(resolve(o.out)), { recursive: true });
        const tmp = `${o.out}.tmp-${crypto.randomUUID().slice(0, 8)}`;
        await Deno.writeFile(tmp, imageToPng(img, channels, size, scale));
        await Deno.rename(tmp, o.out);
        const n = g.timesteps(steps).length;
        console.log(
          `wrote ${o.out} (${g.manifest.name}, ${n} step${n === 1 ? "" : "s"}, seed ${seed}, ` +
            `${ms.toFixed(0)} ms on ${g.executor})`,
        );
      } finally {
        await g.dispose();
      }
    });
  return await runCommand(program, argv);
}

if (import.meta.main) Deno.exit(await generateCli(Deno.args));
