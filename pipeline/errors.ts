/**
 * The run's user-facing failure.
 *
 * @module
 */

/** A clean, user-facing failure: printed as one line, exit code `code`. */
export class RunError extends Error {
  override name = "RunError";
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}
