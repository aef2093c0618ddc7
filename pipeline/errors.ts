/**
 * The run's user-facing failure.
 *
 * @module
 */

/** A clean, user-facing failure: printed as one line, exit code `code`. */
export class RunError extends Error {
  /** Set so printed errors and stack traces say RunError rather than Error. */
  override name = "RunError";
  /** A failure the CLI prints as `message` and exits with `code` (1 unless given; 2 for misuse of the options). */
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}
