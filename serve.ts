/**
 * `deno task serve [--model dist/<name>] [--port N]`: serves the web page (web/) that draws from an exported student
 * folder in the browser, on onnxruntime-web (WebGPU where the browser has an adapter, WASM otherwise), on 127.0.0.1.
 *
 * @module
 */
import { Command } from "commander";
import { runCommand } from "./ship/run_command.ts";
import { resolve } from "node:path";
import { servePage } from "./web/server.ts";

/** The only export under dist/ when `--model` is not given: with several, the user must say which. */
async function defaultModel(): Promise<string> {
  const found: string[] = [];
  try {
    for await (const e of Deno.readDir("dist")) {
      if (e.isDirectory && (await Deno.stat(`dist/${e.name}/manifest.json`).catch(() => null))) found.push(e.name);
    }
  } catch {
    // No dist/ yet: the same error as an empty one.
  }
  if (found.length !== 1) {
    const have = found.length ? `dist/ holds ${found.sort().join(", ")}` : "dist/ holds no export";
    throw new Error(`--model: pass the exported folder to serve (${have}; deno task export writes one)`);
  }
  return `dist/${found[0]}`;
}

/** Runs the serve CLI until the server stops; returns the exit code. */
export async function serveCli(argv: readonly string[]): Promise<number> {
  const program = new Command()
    .name("deno task serve")
    .description("Serves the web page that draws from an exported student folder, on 127.0.0.1.")
    .exitOverride()
    .option("--model <dir>", "the exported folder (deno task export); the only one under dist/ when omitted")
    .option("--port <n>", "the port (0 picks a free one)", "8000")
    .action(async (o: { model?: string; port: string }) => {
      const port = Number(o.port);
      if (!Number.isSafeInteger(port) || port < 0 || port > 65535) {
        throw new Error(`--port ${o.port}: expected 0–65535`);
      }
      const model = resolve(o.model ?? await defaultModel());
      if (!(await Deno.stat(`${model}/manifest.json`).catch(() => null))) {
        console.error(`warning: ${model} has no manifest.json; the page will show the error`);
      }
      const s = await servePage({ model, port });
      console.log(`serving ${model} at ${s.url}`);
      await s.finished; // until interrupted
    });
  return await runCommand(program, argv);
}

if (import.meta.main) Deno.exit(await serveCli(Deno.args));
