// Run by page_test.ts (and bench/ship_generate.ts) in a subprocess that may use loopback networking, which the test
// suite itself may not: serves web/ with an exported folder (`deno task serve`'s server), opens the page in headless
// Chromium on WASM, draws, and writes what the page showed as JSON.
//   deno run … tests/web/page_drive.ts <export folder> <prompt> <seed> <steps> <out.json> [repeats] [screenshot.png]
// With repeats > 1 the page draws that many times and `ms` is the list of the page's times (the first warms up).
import { Chromium, findChromium } from "../helpers/cdp.ts";
import { drawInPage, type PageResult } from "../helpers/page_draw.ts";
import { servePage } from "../../web/server.ts";

const [folder, prompt, seed, steps, out, repeats = "1", shot] = Deno.args;
const exe = await findChromium();
if (!exe) throw new Error("chromium not found");
const server = await servePage({ model: folder });
const browser = await Chromium.launch(exe);
try {
  const page = await browser.open(`${server.url}?executor=wasm`);
  const req = { prompt, seed: Number(seed), steps: Number(steps) };
  const runs: PageResult[] = [await drawInPage(page, req)];
  for (let i = 1; i < Number(repeats) && runs[0].state === "done"; i++) {
    // A new seed each time, so the page cannot hand back the previous canvas unchanged and still look right.
    await page.evaluate(`document.body.dataset.state = "ready"`);
    runs.push(await drawInPage(page, { ...req, seed: req.seed + i }));
  }
  if (shot) await Deno.writeFile(shot, await page.screenshot());
  await Deno.writeFile(out, new TextEncoder().encode(JSON.stringify({ ...runs[0], ms: runs.map((r) => r.ms) })));
} finally {
  await browser.close();
  await server.shutdown();
}
