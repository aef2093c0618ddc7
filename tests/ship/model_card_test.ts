// ship/model_card.ts: the card carries the run's report table when there is one, and the licences of each dataset
// and encoder the config names.
import assert from "node:assert/strict";
import { unet } from "../../models/unet.ts";
import { modelCard } from "../../ship/model_card.ts";
import type { Manifest } from "../../ship/manifest.ts";
import type { ExportSource } from "../../ship/source.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function fixture(data: ExportSource["config"]["data"]): { src: ExportSource; m: Manifest } {
  const src = {
    checkpoint: "out/add/checkpoints/step-00000500",
    runFolder: "out/add",
    step: 500,
    config: {
      run: { name: "add", steps: 500, seed: 0 },
      models: { student: { kind: "unet" }, teacher: { kind: "unet", init: "../models/teacher/unet.safetensors" } },
      data,
    },
    model: "student",
    u: unet.params.parse({}),
    weights: {},
    weightsFile: "out/add/checkpoints/step-00000500/student.ema.safetensors",
    schedule: { kind: "cosine", T: 1000, zeroTerminalSnr: true },
    prediction: "v",
    textEncoder: "models/text_encoder",
    trainedTimesteps: [999, 749, 499, 249],
  } as ExportSource;
  const m = {
    name: "emoji-student",
    image: { channels: 3, size: 32 },
    unet: { file: "unet.onnx", weights: "fp32", parameters: 1286243 },
    text_encoder: { folder: "text_encoder" },
    sampler: { prediction: "v", default_steps: 1, timesteps: { 1: [999], 4: [999, 749, 499, 249] } },
    schedule: { kind: "cosine", T: 1000, zero_terminal_snr: true },
    noise: { generator: "Philox4x32-10", x_T: "seed.fold(xT)", portability: "the same bits" },
    source: { weights: src.weightsFile },
  } as unknown as Manifest;
  return { src, m };
}

Deno.test("the model card copies the report's table and floors, and names teacher, steps and timesteps", async () => {
  const md = await Deno.readTextFile(`${ROOT}docs/add_report.md`);
  const { src, m } = fixture({ emoji: { kind: "emoji" } });
  const card = modelCard(src, m, "models/text_encoder", { md });
  const table = md.split("\n").filter((l) => l.startsWith("|"));
  assert.ok(table.length >= 7, "the shipped report should have a table");
  for (const row of table) assert.ok(card.includes(row), `missing report row ${row}`);
  assert.ok(card.includes(md.split("\n").find((l) => l.startsWith("Real-vs-real floors"))!));
  assert.match(card, /Teacher: `teacher` \(init `\.\.\/models\/teacher\/unet\.safetensors`\)/);
  assert.match(card, /step 500 of run `add`; 1,286,243 parameters/);
  assert.match(card, /student timesteps 999, 749, 499, 249/);
  assert.match(card, /1: 999; 4: 999, 749, 499, 249/);
  assert.doesNotMatch(card, /CC BY-SA/);
});

Deno.test("the model card's licences follow the datasets: each emoji artist, Fashion-MNIST, an image folder", () => {
  const { src, m } = fixture({
    emoji: { kind: "emoji", params: { artists: ["noto", "openmoji", "fluent"] } },
    fashion: { kind: "fashion_mnist" },
    mine: { kind: "image_folder", params: { dir: "pics" } },
  });
  const card = modelCard(src, m, "use-lite", null);
  for (const want of [/Apache License 2\.0/, /OpenMoji.*CC BY-SA 4\.0/, /Fluent Emoji.*MIT/, /Zalando SE, MIT/]) {
    assert.match(card, want);
  }
  assert.match(card, /`mine`: a folder of your own images \(pics\); their licence is yours to state/);
  assert.match(card, /Universal Sentence Encoder lite.*Apache License 2\.0/);
  assert.match(card, /The run wrote no report/);
  assert.match(card, /share alike/);
});
