/**
 * `deno task bench`: the block step (bench/block_step.ts), the teacher UNet step (bench/teacher_step.ts), then the
 * default ADD step against its baseline commit (bench/add_step.ts), one process, so that flags such as
 * `--executors cpu` reach each.
 *
 * @module
 */
await import("./block_step.ts");
await import("./teacher_step.ts");
await import("./add_step.ts");
await import("./ship_generate.ts");
