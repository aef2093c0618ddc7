/**
 * `deno task run <config>`: the pipeline CLI with the built-in stage, model and dataset kinds registered.
 *
 * @module
 */
import "./stages/mod.ts";
import { runCli } from "./pipeline/cli.ts";

if (import.meta.main) Deno.exit(await runCli(Deno.args));
