/**
 * `deno task diffusers <command>`: diffusers model folders on the project's engine.
 *
 * - `forward --model DIR|org/name [--subfolder S] [--variant V] --inputs IN.safetensors --out OUT.safetensors
 *   [--executor cpu|wasm|webgpu|reference]`: the model's forward pass on the named tensors of IN (for a
 *   UNet2DConditionModel: `sample`, `timestep`, `encoder_hidden_states` → `sample`), written to OUT whole or not at all.
 * - `fetch org/name [--subfolder S] [--variant V]`: downloads a hub model into `.cache/hub/` (online), where the
 *   `diffusers_unet` model kind and `forward` then read it offline; `--subfolder text_encoder` (or `text_encoder_2`)
 *   fetches a pipeline's text encoder with its tokenizer, for `text_encode` and the stages that encode prompts.
 * - `export <run or checkpoint folder> --out DIR [--fp16] [--no-ema] [--model NAME]`: the run's `diffusers_unet`
 *   student as a folder diffusers' `from_pretrained` loads (unet/, scheduler/, the text encoder when the run used a
 *   diffusers pipeline's, model_index.json when the parts make a pipeline, README.md); models/diffusers/export.ts.
 *
 * @module
 */
import { Command, Option } from "commander";
import { decodeSafetensors, type SafeTensor, writeSafetensors } from "./engine/safetensors.ts";
import type { ExecutorName } from "./engine/executors/executor.ts";
import { DiffusersFolderError, downloadHubFolder, HUB_CACHE, isHubId } from "./models/diffusers/folder.ts";
import { checkInputs, loadModel, runForward } from "./models/diffusers/forward.ts";
import { downloadHubTextEncoder } from "./models/diffusers/clip_text_hub.ts";
import { exportDiffusers } from "./models/diffusers/export.ts";
import { runCommand } from "./ship/run_command.ts";

interface ModelFlags {
  subfolder?: string;
  variant?: string;
}

async function readInputs(file: string): Promise<Record<string, SafeTensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new DiffusersFolderError(file, `cannot read the inputs (${(e as Error).message.split("\n")[0]})`);
  }
  return decodeSafetensors(bytes, file).tensors;
}

async function forward(o: ModelFlags & { model: string; inputs: string; out: string; executor: ExecutorName }) {
  const t0 = performance.now();
  const model = await loadModel(o.model, o);
  const inputs = await readInputs(o.inputs);
  checkInputs(model, inputs, o.inputs);
  const outs = await runForward(model, inputs, o.executor);
  try {
    await writeSafetensors(o.out, outs, { source: model.folder.dir, class: model.folder.className });
  } catch (e) {
    throw new DiffusersFolderError(`--out ${o.out}`, `cannot write it (${(e as Error).message.split("\n")[0]})`);
  }
  const shapes = Object.entries(outs).map(([k, v]) => `${k} [${v.shape}]`).join(", ");
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(
    `wrote ${o.out} (${shapes}; ${model.folder.className} from ${model.folder.dir}, ${s} s on ${o.executor})`,
  );
}

async function exportRun(dir: string, o: { out: string; fp16?: boolean; ema: boolean; model?: string }) {
  const t0 = performance.now();
  const r = await exportDiffusers(dir, o.out, o);
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  const mb = (r.bytes / 1e6).toFixed(2);
  console.log(
    `wrote ${r.out}/ (${r.source.folder.className} "${r.source.model}" from ${r.source.weightsFile}; ` +
      `${r.files.length} files, ${mb} MB, ${s} s): ${r.files.join(", ")}`,
  );
}

async function fetchHub(id: string, o: ModelFlags) {
  if (!isHubId(id)) throw new DiffusersFolderError(`hub id "${id}"`, "expected org/name");
  // A text encoder is a transformers model (model.safetensors) and is read with its tokenizer beside it.
  const dir = /^text_encoder/.test(o.subfolder ?? "")
    ? await downloadHubTextEncoder(id, o)
    : await downloadHubFolder(id, o);
  console.log(`${id}${o.subfolder ? ` (${o.subfolder})` : ""}: in ${dir}/`);
}

const modelOptions = (c: Command) =>
  c.option("--subfolder <dir>", "the model's folder inside it, e.g. unet")
    .option("--variant <name>", "weights diffusion_pytorch_model.<name>.safetensors, e.g. fp16");

/** Runs the diffusers CLI; returns the exit code. */
export async function diffusersCli(argv: readonly string[]): Promise<number> {
  const program = new Command()
    .name("deno task diffusers")
    .description("diffusers model folders on the project's engine")
    .exitOverride();
  modelOptions(
    program.command("forward")
      .description("runs a model folder's forward pass on named input tensors")
      .requiredOption("--model <dir>", "a diffusers model folder, or a hub id org/name"),
  )
    .requiredOption("--inputs <file>", "a safetensors file of the inputs by name (sample, timestep, ...)")
    .requiredOption("--out <file>", "the safetensors file of the outputs to write")
    .addOption(
      new Option("--executor <name>", "where it runs").choices(["cpu", "wasm", "webgpu", "reference"]).default("cpu"),
    )
    .action(forward);
  modelOptions(
    program.command("fetch")
      .description(`downloads a hub model into ${HUB_CACHE}/ (online), for offline use afterwards`)
      .argument("<id>", "the hub id, org/name"),
  ).action(fetchHub);
  program.command("export")
    .description("writes a run's diffusers_unet student as a folder diffusers' from_pretrained loads")
    .argument("<dir>", "a run folder (its newest checkpoint) or a checkpoint folder")
    .requiredOption("--out <dir>", "the folder to write (absent, empty, or an earlier export)")
    .option("--fp16", "write the weights as float16 (the fp16 variant's file names)")
    .option("--no-ema", "the trained weights even when the checkpoint kept an EMA")
    .option("--model <name>", "the config's model to export (default: the student)")
    .action(exportRun);
  return await runCommand(program, argv);
}

if (import.meta.main) Deno.exit(await diffusersCli(Deno.args));
