/**
 * `deno task sample --checkpoint <dir> --prompt "red apple" [--prompt …] [--steps 50] [--seeds 0,1,2,3]
 * [--sampler ddim|ddpm|euler|add] [--guidance 1] [--out grid.png] [--executor cpu]`: draws a grid of images (rows
 * prompts, columns seeds) from a UNet saved by a run (a checkpoint folder, or a shipped model folder holding the
 * run's `config.yaml` and `<model>.safetensors`), and writes the prompts and seeds beside it as JSON.
 *
 * @module
 */
import { Command, Option } from "commander";
import { runCommand } from "./pipeline/cli.ts";
import { parse } from "yaml";
import { createExecutor } from "./engine/executors/auto.ts";
import type { ExecutorName } from "./engine/executors/executor.ts";
import { readSafetensors, toFloat32 } from "./engine/safetensors.ts";
import { ScheduleSpec } from "./models/diffusers/schedule_param.ts";
import { choiceOf, type TextEncoderChoice } from "./models/text_encoder_spec.ts";
import { writeAtomic } from "./models/png_grid.ts";
import { unet, type UNetParams } from "./models/unet.ts";
import { sampleGrid } from "./models/diffusion/sample_grid.ts";
import { loraOf, type MergeConfig, mergedWeights } from "./pipeline/lora_merge.ts";

type Tensors = Awaited<ReturnType<typeof readSafetensors>>["tensors"];
const floats = (ts: Tensors) => Object.fromEntries(Object.entries(ts).map(([k, t]) => [k, toFloat32(t)]));

/** The tensors of `shapes` from a weights file, each checked. */
function fullWeights(file: string, tensors: Tensors, shapes: Record<string, number[]>): Record<string, Float32Array> {
  const weights: Record<string, Float32Array> = {};
  for (const [path, shape] of Object.entries(shapes)) {
    const t = tensors[path];
    if (!t || t.shape.join() !== shape.join()) throw new Error(`${file}: tensor "${path}" missing or not [${shape}]`);
    weights[path] = toFloat32(t);
  }
  return weights;
}

interface Found {
  u: UNetParams;
  weights: Record<string, Float32Array>;
  schedule: unknown;
  prediction: "eps" | "v" | "x0";
  /** The encoder the run's text_encode stage used (model, subfolder, variant, layer). */
  textEncoder: TextEncoderChoice;
  file: string;
}

/** Reads the UNet, its weights (EMA when saved) and its training schedule from a run's folder. */
export async function loadUnetFolder(dir: string, modelName?: string, preferEma = true): Promise<Found> {
  const cfgFile = `${dir}/config.yaml`;
  let cfg: MergeConfig & {
    models?: Record<string, { kind: string; params: unknown }>;
    stages?: Record<string, { kind: string; params?: Record<string, unknown> }>;
  };
  try {
    cfg = parse(await Deno.readTextFile(cfgFile));
  } catch (e) {
    throw new Error(`${cfgFile}: cannot read the run's config (${(e as Error).message.split("\n")[0]})`);
  }
  const unets = Object.entries(cfg.models ?? {}).filter(([, m]) => m.kind === "unet");
  const pick = modelName ? unets.find(([n]) => n === modelName) : unets[0];
  if (!pick) throw new Error(`${cfgFile}: no unet model${modelName ? ` named "${modelName}"` : ""} in the config`);
  const [name, m] = pick;
  const u = unet.params.parse(m.params);
  const stages = Object.values(cfg.stages ?? {});
  const noise = stages.find((s) => s.kind === "diffusion_noise")?.params ?? {};
  const text = stages.find((s) => s.kind === "text_encode")?.params ?? {};
  const candidates = preferEma
    ? [`${dir}/${name}.ema.safetensors`, `${dir}/${name}.safetensors`]
    : [`${dir}/${name}.safetensors`];
  for (const file of candidates) {
    try {
      const { tensors } = await readSafetensors(file);
      // A LoRA student's files hold its adapters: they are merged into its base's weights here, so that what
      // samples, evaluates or exports it sees a full UNet.
      const weights = loraOf(cfg, name)
        ? await mergedWeights(cfg, name, floats(tensors), { dir, def: unet }).catch((e) => {
          throw new Error(`${file}: ${(e as Error).message}`);
        })
        : fullWeights(file, tensors, unet.shapes(u));
      return {
        u,
        weights,
        schedule: ScheduleSpec.parse(noise.schedule ?? { kind: "cosine", zeroTerminalSnr: true }),
        prediction: (noise.prediction as "eps" | "v" | undefined) ?? "v",
        textEncoder: choiceOf(text),
        file,
      };
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  throw new Error(`${dir}: no ${candidates.map((c) => c.replace(/^.*\//, "")).join(" or ")}`);
}

/** Runs the sample CLI; returns the exit code. */
export async function sampleCli(argv: readonly string[]): Promise<number> {
  const program = new Command()
    .name("deno task sample")
    .description("Draws a prompts × seeds grid from a saved UNet and writes it as PNG with a JSON legend.")
    .exitOverride()
    .requiredOption("--checkpoint <dir>", "a checkpoint folder (or a shipped model folder) with config.yaml")
    .option("--prompt <text>", "a prompt (repeatable)", (v: string, a: string[]) => [...a, v], [] as string[])
    .option("--seeds <list>", "comma-separated seeds", "0,1,2,3")
    .option("--steps <n>", "sampler steps", "50")
    .addOption(new Option("--sampler <name>", "sampler").choices(["ddim", "ddpm", "euler", "add"]).default("ddim"))
    .option("--guidance <scale>", "classifier-free guidance scale (1: none)", "1")
    .option("--model <name>", "which unet of the config (default: the first)")
    .option("--no-ema", "use the raw weights even when an EMA was saved")
    .option("--out <file>", "output PNG", "samples.png")
    .addOption(
      new Option("--executor <name>", "executor").choices(["cpu", "wasm", "webgpu", "auto", "reference"]).default(
        "auto",
      ),
    )
    .action(async (o) => {
      const prompts = o.prompt.length ? o.prompt : ["red apple"];
      const seeds = String(o.seeds).split(",").map((s: string) => Number(s.trim()));
      const steps = Number(o.steps), guidance = Number(o.guidance);
      if (seeds.some((s: number) => !Number.isInteger(s) || s < 0)) {
        throw new Error(`--seeds ${o.seeds}: expected integers ≥ 0`);
      }
      if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps ${o.steps}: expected an integer ≥ 1`);
      if (!(guidance >= 1)) throw new Error(`--guidance ${o.guidance}: expected a number ≥ 1`);
      const found = await loadUnetFolder(o.checkpoint, o.model, o.ema);
      const ex = await createExecutor(o.executor as ExecutorName);
      try {
        const g = await sampleGrid(ex, found.u, found.weights, {
          prompts,
          seeds,
          steps,
          guidance,
          sampler: o.sampler,
          schedule: found.schedule as never,
          prediction: found.prediction,
          text_encoder: found.textEncoder,
        });
        await writeAtomic(o.out, g.png);
        const legend = { ...g.legend, weights: found.file, executor: ex.name };
        await writeAtomic(o.out.replace(/\.png$/i, "") + ".json", JSON.stringify(legend, null, 2) + "\n");
        console.log(
          `wrote ${o.out} (${prompts.length} prompts × ${seeds.length} seeds; ${
            (g.legend.ms_per_image as number).toFixed(1)
          } ms/image on ${ex.name})`,
        );
      } finally {
        await ex.close();
      }
    });
  return await runCommand(program, argv);
}

if (import.meta.main) Deno.exit(await sampleCli(Deno.args));
