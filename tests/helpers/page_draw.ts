// Draws in the served page (web/) through Chromium, as a person would: waits for the model, types the prompt and
// seed, picks the steps, presses Draw and reads back the state, the error line, the time and the canvas's pixels.
import type { Page } from "./cdp.ts";

/** What the page showed after loading (and drawing, when it loaded). */
export interface PageResult {
  state: "done" | "error";
  error: string;
  /** The time the page printed, in ms (generation only, as `deno task generate` times it). */
  ms: number;
  /** The canvas's RGBA pixels, row-major, `width`² of them. */
  rgba: number[];
  width: number;
}

const STATE = `document.body.dataset.state === "ready" || document.body.dataset.state === "error"
  ? document.body.dataset.state : ""`;

/** Waits for the page at its URL to load, then draws `prompt` at `seed` in `steps` steps. */
export async function drawInPage(
  page: Page,
  req: { prompt: string; seed: number; steps: number },
  timeoutMs = 120_000,
): Promise<PageResult> {
  const loaded = await page.waitFor<string>(STATE, timeoutMs);
  if (loaded === "ready") {
    await page.evaluate(`(() => {
      document.getElementById("prompt").value = ${JSON.stringify(req.prompt)};
      document.getElementById("seed").value = ${JSON.stringify(String(req.seed))};
      document.getElementById("steps").value = ${JSON.stringify(String(req.steps))};
      document.getElementById("draw").click();
    })()`);
    await page.waitFor(`["done", "error"].includes(document.body.dataset.state)`, timeoutMs);
  }
  return await page.evaluate<PageResult>(`(() => {
    const c = document.getElementById("canvas");
    const rgba = Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
    const e = document.getElementById("error");
    return {
      state: document.body.dataset.state,
      error: getComputedStyle(e).display === "none" ? "" : e.textContent,
      ms: Number(document.getElementById("time").dataset.ms ?? NaN),
      rgba, width: c.width,
    };
  })()`);
}
