// The page in a real browser: headless Chromium opens the served page (web/), types a prompt and a seed, waits for
// the image and its pixels must be `deno task generate --executor wasm`'s PNG for the same prompt, seed and steps
// (within 1/255: both round the same float32 image, but WASM in Chromium and in Deno may differ in the last bits).
// A missing model folder must give a visible error line. Skipped, saying so, where Chromium is not installed.
import assert from "node:assert/strict";
import { decode } from "fast-png";
import { findChromium } from "../helpers/cdp.ts";
import { cli, expectCode, ROOT, tmp } from "../helpers/cli_run.ts";

const chromium = await findChromium();
if (!chromium) console.warn("tests/web: chromium not found (apt-get install chromium): the browser tests are skipped");

interface Shown {
  state: string;
  error: string;
  ms: number[];
  rgba: number[];
  width: number;
}

/** The page's result for an export folder, from tests/web/page_drive.ts in a subprocess with loopback access. */
async function inPage(folder: string, root: string, prompt: string, seed: number, steps: number): Promise<Shown> {
  const out = `${root}/page-${seed}-${steps}.json`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", `--config=${ROOT}deno.json`, "--allow-net=127.0.0.1", "--allow-read", `--allow-write=${root}`]
      .concat(["--allow-env", "--allow-run", "--allow-sys", `${ROOT}tests/web/page_drive.ts`])
      .concat([folder, prompt, String(seed), String(steps), out]),
    env: { TMPDIR: root },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  return JSON.parse(await Deno.readTextFile(out));
}

async function exported(root: string): Promise<string> {
  const dist = `${root}/dist`;
  if (!(await Deno.stat(`${dist}/manifest.json`).catch(() => null))) {
    expectCode(await cli([`${ROOT}models/teacher`, "--out", dist], `${ROOT}export.ts`), 0, "export");
  }
  return dist;
}

Deno.test({
  name: "the page in Chromium (WASM) draws deno task generate's image for the same prompt, seed and steps",
  ignore: !chromium,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = await tmp("web_page"), dist = await exported(root);
    for (const [seed, steps] of [[5, 1], [7, 2]]) {
      const png = `${root}/gen-${seed}-${steps}.png`;
      const args = ["--model", dist, "--prompt", "red apple", "--seed", String(seed), "--steps", String(steps)];
      expectCode(await cli([...args, "--executor", "wasm", "--out", png], `${ROOT}generate.ts`), 0, "generate");
      const want = decode(await Deno.readFile(png)), got = await inPage(dist, root, "red apple", seed, steps);
      assert.equal(got.state, "done", `the page: ${got.error}`);
      assert.equal(got.error, "");
      assert.ok(got.ms[0] > 0, "the page shows no time");
      assert.equal(got.width, want.width);
      let worst = 0;
      for (let i = 0; i < want.width * want.height; i++) {
        for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(got.rgba[i * 4 + c] - want.data[i * 3 + c]));
      }
      assert.ok(worst <= 1, `seed ${seed}, ${steps} steps: pixels differ by up to ${worst}/255`);
      const levels = new Set(got.rgba.filter((_, i) => i % 4 !== 3));
      assert.ok(levels.size > 16, "the canvas is (nearly) flat: nothing was drawn");
    }
  },
});

Deno.test({
  name: "the page shows a visible error line for a missing model folder",
  ignore: !chromium,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = await tmp("web_missing");
    const got = await inPage(`${root}/no_such_export`, root, "red apple", 0, 1);
    assert.equal(got.state, "error");
    assert.match(got.error, /\/model\/manifest\.json: cannot read the manifest \(.*404 Not Found\)$/);
  },
});
