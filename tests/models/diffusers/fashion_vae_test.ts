// fashion_report's `vae`: a latent denoiser (the tiny diffusers folder's UNet on 4×4×4 latents) is judged on what the
// VAE decodes its samples into (3×32×32, the Fashion-MNIST judge's input): a 1-step teacher row of 10 images with a
// finite FD; without the vae the same config is one line at the teacher saying it makes 4×4×4 images.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { stringify } from "yaml";
import "../../../stages/mod.ts";
import { FASHION_MNIST_DIR } from "../../../datasets/fashion_mnist.ts";
import type { FashionReport } from "../../../evaluation/fashion_eval.ts";
import { buildTinyDiffusers } from "../../../models/diffusers/build_tiny.ts";
import { ConfigError, loadConfig } from "../../../pipeline/config.ts";
import { planPipeline } from "../../../pipeline/plan.ts";
import { runQuiet } from "../../helpers/run_quiet.ts";
import { tmp } from "../../helpers/cli_run.ts";

const haveFashion = existsSync(`${FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz`);

function configText(folder: string, out: string, report: Record<string, unknown>): string {
  return stringify({
    version: 1,
    run: { seed: 0, executor: "cpu", steps: 1, out, log_every: 1, cache: `${out}/../cache` },
    models: {
      teacher: { kind: "diffusers_unet", params: { path: folder, subfolder: "unet" } },
      vae: { kind: "diffusers_vae", params: { path: folder, subfolder: "vae" } },
    },
    stages: {
      fashion_report: {
        kind: "fashion_report",
        at: "end",
        params: {
          teacher: "teacher",
          teacher_steps: [1],
          per_class: 1,
          batch: 10,
          text_encoder: folder,
          schedule: { diffusers: folder },
          ...report,
        },
      },
    },
  });
}

Deno.test({
  name: "fashion_report: vae decodes a latent teacher's samples for the judge; without it, one line",
  ignore: !haveFashion,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = await tmp("fashion_vae"), folder = `${root}/tiny`, out = `${root}/out`;
    await buildTinyDiffusers(folder);
    const bare = configText(folder, out, {});
    assert.throws(() => planPipeline(loadConfig("fashion.yaml", bare)), (e) => {
      assert.ok(e instanceof ConfigError && e.lines.length === 1, String(e));
      assert.match(e.lines[0], /^fashion\.yaml:\d+:\d+: .*"teacher" makes 4×4×4 images; .* takes 3×32×32/);
      return true;
    });
    await runQuiet(loadConfig("fashion.yaml", configText(folder, out, { vae: "vae" })));
    const r = JSON.parse(await Deno.readTextFile(`${out}/fashion_report.json`)) as FashionReport;
    assert.deepEqual(r.rows.map((x) => [x.name, x.n]), [["teacher 1-step", 10]]);
    assert.ok(Number.isFinite(r.rows[0].fd) && r.rows[0].fd > 0, `fd ${r.rows[0].fd}`);
  },
});
