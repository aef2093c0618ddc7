/**
 * How every command of the project ends: commander parses `argv` and the action does the work. It imports nothing but
 * commander, so the shipped generator's CLI (generate.ts), which may not import training code, shares it with the
 * training commands.
 *
 * @module
 */
import { type Command, CommanderError } from "commander";

/**
 * Parses `argv` with a commander program whose action does the work: 0 when it succeeds, 2 for usage errors (commander
 * prints them), 1 with the error's first line for anything the action throws.
 */
export async function runCommand(program: Command, argv: readonly string[]): Promise<number> {
  try {
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    console.error((e as Error).message.split("\n")[0]);
    return 1;
  }
}
