/**
 * `deno task export <run folder or checkpoint folder> --out dist/<name>/ [--fp16] [--no-ema]`: writes the student of
 * a run as a folder that needs none of the training code — `unet.onnx`, `text_encoder/`, `manifest.json` and a model
 * card `README.md` (ship/export.ts). `deno task generate --model dist/<name>` draws from it.
 *
 * @module
 */
import { Command } from "commander";
import { runCommand } from "./pipeline/cli.ts";
import { exportStudent } from "./ship/export.ts";

/** Runs the export CLI; returns the exit code. */
export async function exportCli(argv: readonly string[]): Promise<number> {
  const program = new Command()
    .name("deno task export")
    .description(
      "Exports a run's student (UNet, text encoder, sampler settings, model card) as a self-contained folder.",
    )
    .exitOverride()
    .argument("<folder>", "a run folder (its newest checkpoint) or a checkpoint or shipped model folder")
    .requiredOption("--out <dir>", "the folder to write, e.g. dist/emoji-student/")
    .option("--fp16", "store the UNet's weights as float16 (half the file; it still computes in float32)")
    .option("--no-ema", "export the raw weights even when an EMA was saved")
    .action(async (folder: string, o: { out: string; fp16?: boolean; ema: boolean }) => {
      const r = await exportStudent(folder, o.out, { fp16: o.fp16, ema: o.ema });
      const mb = (n: number) => (n / 2 ** 20).toFixed(1);
      console.log(
        `wrote ${r.out}/ (unet.onnx ${mb(r.bytes.unet)} MB ${r.manifest.unet.weights}, text_encoder/ ` +
          `${mb(r.bytes.text_encoder)} MB, ${r.manifest.unet.parameters.toLocaleString("en")} parameters, from ` +
          `${r.manifest.source.weights})`,
      );
    });
  return await runCommand(program, argv);
}

if (import.meta.main) Deno.exit(await exportCli(Deno.args));
