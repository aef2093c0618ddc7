/**
 * `deno task bench`: the block step (bench/block_step.ts), then the teacher UNet step (bench/teacher_step.ts), one
 * process, so that flags such as `--executors cpu` reach both.
 *
 * @module
 */
await import("./block_step.ts");
await import("./teacher_step.ts");
