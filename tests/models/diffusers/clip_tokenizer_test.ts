// A diffusers tokenizer/ folder (vocab.json + merges.txt, no tokenizer.json) as transformers.js's tokenizer.json: the
// ids equal the real transformers slow CLIPTokenizer's (tests/fixtures/diffusers/clip_tokens.json, made by
// make_clip_fixtures.py) for every fixture prompt, unpadded and padded/truncated to 77 as Stable Diffusion asks; a bad
// folder is one line naming the file.
import { AutoTokenizer, env } from "@huggingface/transformers";
import { clipTokenizerJson, readClipTokenizer, sdIds } from "../../../models/diffusers/clip_tokenizer.ts";
import { expectOneLine, FIXTURES } from "./diffusers_reference.ts";

env.allowRemoteModels = false;

interface Tokens {
  prompts: string[];
  max_length: number;
  tokenizers: Record<string, { pad_id: number; eos_id: number; ids: number[][]; padded: number[][] }>;
}
const TOKENS: Tokens = JSON.parse(await Deno.readTextFile(`${FIXTURES}clip_tokens.json`));

async function builtTokenizer(name: string) {
  const t = readClipTokenizer(`${FIXTURES}${name}/tokenizer`);
  const dir = await Deno.makeTempDir();
  for (const [f, text] of Object.entries(clipTokenizerJson(t, TOKENS.max_length))) {
    await Deno.writeTextFile(`${dir}/${f}`, text);
  }
  return { dir, tok: await AutoTokenizer.from_pretrained(dir, { local_files_only: true }) };
}

for (const name of ["clip", "clip_proj"]) {
  Deno.test(`diffusers CLIP tokenizer (${name}): transformers.js on the built tokenizer.json gives the slow CLIPTokenizer's ids`, async () => {
    const { dir, tok } = await builtTokenizer(name);
    try {
      const ref = TOKENS.tokenizers[name];
      const bad: string[] = [];
      TOKENS.prompts.forEach((p, i) => {
        const ids = tok.encode(p);
        const padded = sdIds(ids, TOKENS.max_length, ref.eos_id, ref.pad_id);
        if (ids.join() !== ref.ids[i].join()) bad.push(`${JSON.stringify(p)}: ${ids} vs ${ref.ids[i]}`);
        if (padded.join() !== ref.padded[i].join()) {
          bad.push(`${JSON.stringify(p)} padded: ${padded} vs ${ref.padded[i]}`);
        }
      });
      if (bad.length) throw new Error(bad.join("\n"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("diffusers CLIP tokenizer: the fixtures cover truncation, and SD 2.x's `!` pad splits out of `!!!`", () => {
  const { clip, clip_proj } = TOKENS.tokenizers;
  if (!clip.ids.some((ids) => ids.length > TOKENS.max_length)) throw new Error("no prompt is over 77 tokens");
  const i = TOKENS.prompts.findIndex((p) => p.includes("!!!"));
  if (clip.ids[i].join() === clip_proj.ids[i].join()) throw new Error("the two pads tokenize `!!!` alike");
});

Deno.test("diffusers CLIP tokenizer: a bad folder is one line naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    expectOneLine(() => readClipTokenizer(dir), `${dir}/vocab.json`, "not found");
    await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify({ a: 0, "<|startoftext|>": 1, "<|endoftext|>": 2 }));
    expectOneLine(() => readClipTokenizer(dir), `${dir}/merges.txt`, "not found");
    await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\na b c\n");
    expectOneLine(() => readClipTokenizer(dir), `${dir}/merges.txt`, "line 2 is not two symbols");
    await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\na b\n");
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify({ pad_token: "!" }));
    expectOneLine(() => readClipTokenizer(dir), `${dir}/vocab.json`, `has no pad_token "!"`);
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "{");
    expectOneLine(() => readClipTokenizer(dir), `${dir}/tokenizer_config.json`, "cannot parse");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
