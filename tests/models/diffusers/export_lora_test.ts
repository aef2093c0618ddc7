// deno task diffusers export of a LoRA student: a diffusers_unet student trained as rank-2 adapters on a frozen
// diffusers_unet base exports as a full UNet whose targeted weights are W + (alpha/rank)·B·A, computed here by hand
// from the checkpoint's adapters and the base folder's weights, and whose other weights are the base's own.
import assert from "node:assert/strict";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { exportDiffusers } from "../../../models/diffusers/export.ts";
import { loadWeights, weightMap } from "../../../models/diffusers/folder.ts";
import { diffusersUnet } from "../../../models/diffusers/unet_kind.ts";
import { cli, expectCode, tmp } from "../../helpers/cli_run.ts";
import { imageFolder, studentYaml, tinyUnetFolder } from "./tiny_run.ts";

/** A UNet folder's weights as the diffusers_unet kind reads them (the export's `unet/`, or the fp16 base folder). */
function unetOf(path: string, opts: { subfolder?: string; variant?: string }) {
  const shapes = diffusersUnet.shapes(diffusersUnet.params.parse({ path, ...opts }));
  const dir = opts.subfolder ? `${path}/${opts.subfolder}` : path;
  return { shapes, weights: loadWeights(weightMap(dir, opts.variant), shapes) };
}

Deno.test({
  name: "diffusers export: a LoRA student exports merged, W + (alpha/rank)·B·A on its targets and the base elsewhere",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_export_lora");
    await tinyUnetFolder(`${root}/unet`);
    await imageFolder(`${root}/images`);
    const yaml = studentYaml(`{ path: ${root}/unet, variant: fp16 }`, `${root}/images`).replace(
      "models:\n  unet:\n    kind: diffusers_unet\n",
      `models:\n  base:\n    kind: diffusers_unet\n    params: { path: ${root}/unet, variant: fp16 }\n` +
        `  unet:\n    lora: { rank: 2, alpha: 4, targets: ["attn1\\\\.to_q", "conv_in"], base: base }\n` +
        "    kind: diffusers_unet\n",
    );
    await Deno.writeTextFile(`${root}/lora.yaml`, yaml);
    expectCode(await cli([`${root}/lora.yaml`, "--out", `${root}/run`]), 0, "the LoRA student run");
    const ckpt = `${root}/run/checkpoints/step-00000002`;
    const adapters = (await readSafetensors(`${ckpt}/unet.ema.safetensors`)).tensors;
    assert.ok(Object.keys(adapters).every((k) => /\.lora_[AB]$/.test(k)), "the checkpoint holds adapters only");

    await exportDiffusers(`${root}/run`, `${root}/export`);
    const base = unetOf(`${root}/unet`, { variant: "fp16" }), got = unetOf(`${root}/export`, { subfolder: "unet" });
    assert.deepEqual(Object.keys(got.weights).sort(), Object.keys(base.weights).sort());
    let merged = 0;
    for (const [k, w0] of Object.entries(base.weights)) {
      const a = adapters[`${k}.lora_A`], b = adapters[`${k}.lora_B`];
      if (!a) {
        assert.deepEqual(got.weights[k], w0, `${k}: not targeted, the base's`);
        continue;
      }
      merged++;
      const A = toFloat32(a), B = toFloat32(b), out = base.shapes[k][0], rank = 2, inner = w0.length / out;
      let worst = 0, moved = 0;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inner; i++) {
          let d = 0;
          for (let r = 0; r < rank; r++) d += B[o * rank + r] * A[r * inner + i];
          const want = w0[o * inner + i] + (4 / rank) * d;
          worst = Math.max(worst, Math.abs(got.weights[k][o * inner + i] - want));
          moved = Math.max(moved, Math.abs(d));
        }
      }
      assert.ok(worst < 1e-6, `${k}: merged weight off by ${worst}`);
      assert.ok(moved > 0, `${k}: B·A is zero, so the test would not see a missing merge`);
    }
    assert.ok(merged >= 3, `only ${merged} targeted weights`);
  },
});
