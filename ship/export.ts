/**
 * `deno task export`'s work: a run's student as a self-contained folder — `unet.onnx` (the UNet traced with its
 * weights as initializers), `text_encoder/` (the encoder the run used, in transformers.js's layout), `manifest.json`
 * (sampler, schedule, noise; ship/manifest.ts) and a model card `README.md`. Everything is read and built in memory
 * first, then written into a temporary folder beside `--out` and renamed onto it, so a failure leaves nothing.
 *
 * @module
 */
import { basename, dirname, resolve } from "node:path";
import { makeSchedule, studentTimesteps } from "../models/diffusion/schedules.ts";
import { unet } from "../models/unet.ts";
import { type Manifest, MANIFEST_FORMAT, NOISE_DOC } from "./manifest.ts";
import { modelCard } from "./model_card.ts";
import { type ExportSource, readExportSource, readReport, shownPath } from "./source.ts";
import { copyFolder, type EncoderExport, resolveEncoder } from "./text_encoder.ts";
import { unetInputShapes, unetOnnx } from "./unet_onnx.ts";

/** Options of `exportStudent`. */
export interface ExportOptions {
  /** Store the UNet's weights as float16 (computed in float32). */
  fp16?: boolean;
  /** Use the EMA weights when the checkpoint has them (default true). */
  ema?: boolean;
}

/** What an export wrote. */
export interface ExportResult {
  out: string;
  manifest: Manifest;
  bytes: { unet: number; text_encoder: number };
}

/** The sampler's timesteps for 1–4 steps, as the project's ADD sampler picks them (trailing spacing from T−1). */
function samplerTimesteps(T: number): Record<string, number[]> {
  return Object.fromEntries([1, 2, 3, 4].map((k) => [String(k), Array.from(studentTimesteps(k, T, "trailing"))]));
}

/** The manifest of an export named `name`. */
export function buildManifest(src: ExportSource, enc: EncoderExport, name: string, fp16: boolean): Manifest {
  const { u } = src, s = makeSchedule(src.schedule);
  const parameters = Object.values(unet.shapes(u)).reduce((a, sh) => a + sh.reduce((p, d) => p * d, 1), 0);
  if (s.alphasCumprod[s.alphasCumprod.length - 1] !== 0) {
    throw new Error(
      `${src.checkpoint}/config.yaml: the schedule has ᾱ > 0 at T−1, so pure noise is not the student's first input ` +
        `(ADD needs zeroTerminalSnr: true)`,
    );
  }
  return {
    format: MANIFEST_FORMAT,
    name,
    image: { channels: u.in_channels, size: u.size },
    unet: {
      file: "unet.onnx",
      weights: fp16 ? "fp16" : "fp32",
      parameters,
      inputs: unetInputShapes(u, enc.section.length) as Manifest["unet"]["inputs"],
    },
    text_encoder: enc.section,
    sampler: {
      kind: "add",
      prediction: src.prediction,
      guidance: "none",
      default_steps: 1,
      timesteps: samplerTimesteps(src.schedule.T),
    },
    schedule: {
      kind: src.schedule.kind,
      T: src.schedule.T,
      zero_terminal_snr: src.schedule.zeroTerminalSnr,
      alphas_cumprod: Array.from(s.alphasCumprod),
    },
    noise: NOISE_DOC,
    source: {
      checkpoint: shownPath(src.checkpoint),
      run: src.runFolder && shownPath(src.runFolder),
      step: src.step,
      model: src.model,
      weights: shownPath(src.weightsFile),
      text_encoder: enc.name,
    },
  };
}

/** The manifest as JSON, two-space indented, with lists of numbers on one line each (the ᾱ table is 1,000 long). */
export function manifestJson(m: Manifest): string {
  return JSON.stringify(m, null, 2).replace(
    /\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]/g,
    (_, list: string) => `[${list.split(/,\s*/).join(", ")}]`,
  ) + "\n";
}

/**
 * Checks `--out` before any work: absent (below a folder), an empty folder, or an earlier export (replaced). Whether
 * it can be written shows only when it is: `writeFolder` reports that the same way.
 */
async function checkOut(out: string): Promise<void> {
  const cannot = (why: string) => new Error(`--out ${out}: cannot write the export (${why})`);
  const stat = (p: string) =>
    Deno.stat(p).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return null;
      throw cannot((e as Error).message.split("\n")[0]);
    });
  const st = await stat(out);
  if (st && !st.isDirectory) throw cannot("it is a file");
  if (st) {
    const names = [];
    for await (const e of Deno.readDir(out)) names.push(e.name);
    if (names.length && !names.includes("manifest.json")) {
      throw new Error(`--out ${out}: a folder with other files in it (not an earlier export); choose another`);
    }
    return;
  }
  let up = dirname(out), above = await stat(up);
  while (!above && up !== dirname(up)) above = await stat(up = dirname(up));
  if (above && !above.isDirectory) throw cannot(`${up} is a file`);
}

/** Makes `dir` and its missing parents; returns the ones it made, outermost first, so a failure can remove them. */
async function mkdirs(dir: string): Promise<string[]> {
  const made: string[] = [];
  for (let d = dir; !(await Deno.stat(d).then(() => true, () => false)); d = dirname(d)) made.unshift(d);
  for (const d of made) await Deno.mkdir(d);
  return made;
}

/** Writes the files into a temporary folder beside `out` and renames it onto `out`. */
async function writeFolder(out: string, files: Record<string, Uint8Array | string>, encoderDir: string) {
  let made: string[] = [];
  const tmp = `${dirname(out)}/.${basename(out)}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const aside = `${tmp}-old`;
  try {
    made = await mkdirs(dirname(out));
    await Deno.mkdir(tmp);
    for (const [name, data] of Object.entries(files)) {
      if (typeof data === "string") await Deno.writeTextFile(`${tmp}/${name}`, data);
      else await Deno.writeFile(`${tmp}/${name}`, data);
    }
    const encBytes = await copyFolder(encoderDir, `${tmp}/text_encoder`);
    const replaced = await Deno.rename(out, aside).then(() => true, () => false);
    await Deno.rename(tmp, out);
    if (replaced) await Deno.remove(aside, { recursive: true });
    return encBytes;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    for (const d of made.reverse()) await Deno.remove(d).catch(() => {});
    throw new Error(`--out ${out}: cannot write the export (${(e as Error).message.split("\n")[0]})`);
  }
}

/** Exports the student of the run or checkpoint folder `dir` into `out`. */
export async function exportStudent(dir: string, out: string, opts: ExportOptions = {}): Promise<ExportResult> {
  out = resolve(out.replace(/\/+$/, ""));
  await checkOut(out);
  const src = await readExportSource(dir, { ema: opts.ema });
  const enc = await resolveEncoder(src.textEncoder, src.config.run?.cache);
  const { u } = src;
  if (
    (u.context_dim && u.context_dim !== enc.section.width) || (u.pooled_dim && u.pooled_dim !== enc.section.projection)
  ) {
    throw new Error(
      `${src.checkpoint}: the UNet takes text of width ${u.context_dim}/${u.pooled_dim}, the encoder ` +
        `"${enc.name}" gives ${enc.section.width}/${enc.section.projection}`,
    );
  }
  const manifest = buildManifest(src, enc, basename(out), opts.fp16 ?? false);
  const onnx = unetOnnx(u, src.weights, enc.section.length, { fp16: opts.fp16 });
  const report = await readReport(src);
  const files = {
    "unet.onnx": onnx,
    "manifest.json": manifestJson(manifest),
    "README.md": modelCard(src, manifest, enc.name, report),
  };
  const encBytes = await writeFolder(out, files, enc.dir);
  return { out, manifest, bytes: { unet: onnx.length, text_encoder: encBytes } };
}
