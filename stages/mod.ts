/**
 * Registers the built-in stage, model and dataset kinds (`builtins.ts`): import it for that effect, as main.ts and
 * the tests do.
 *
 * @module
 */
import { registerBuiltins } from "./builtins.ts";

registerBuiltins();
