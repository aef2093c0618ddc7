// UNet2DConditionModel from a diffusers folder against the real diffusers v0.31.0 forward and autograd on a tiny
// SD 1.x-layout config (tests/fixtures/diffusers/unet_sd1*, made by make_fixtures.py): the bf16 weights load under
// diffusers' key names, and the output and the gradients of Σ out · w (engine rule table, cpu executor) match.
import { createExecutor } from "../../../engine/executors/auto.ts";
import { grad } from "../../../engine/grad.ts";
import { mul } from "../../../engine/math.ts";
import { sum } from "../../../engine/ops.ts";
import { readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { Trace } from "../../../engine/tensor.ts";
import { unet2dConditionForward, unetShapes } from "../../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../../models/diffusers/unet2d_condition_config.ts";

const DIR = new URL("../../fixtures/diffusers/", import.meta.url).pathname;

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num = Math.max(num, Math.abs(a[i] - b[i])), den = Math.max(den, Math.abs(b[i]));
  return num / den;
}

Deno.test({
  name: "diffusers UNet2DConditionModel: forward and gradients equal diffusers' (SD 1.x layout, bf16 weights)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const cfg = unetConfig(JSON.parse(await Deno.readTextFile(`${DIR}unet_sd1/config.json`)));
    const weights = (await readSafetensors(`${DIR}unet_sd1/diffusion_pytorch_model.bf16.safetensors`)).tensors;
    const io = (await readSafetensors(`${DIR}unet_sd1_io.safetensors`)).tensors;
    const shapes = unetShapes(cfg);
    const missing = Object.keys(shapes).filter((k) => !weights[k]),
      extra = Object.keys(weights).filter((k) => !shapes[k]);
    if (missing.length || extra.length) throw new Error(`keys: missing ${missing}, unexpected ${extra}`);
    for (const [k, s] of Object.entries(shapes)) {
      if (weights[k].shape.join() !== s.join() || weights[k].dtype !== "BF16") {
        throw new Error(`${k}: ${weights[k].shape}`);
      }
    }
    const tr = new Trace();
    const p = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
    const x = tr.input("sample", io.sample.shape), t = tr.input("timestep", io.timestep.shape);
    const ctx = tr.input("encoder_hidden_states", io.encoder_hidden_states.shape);
    const w = tr.input("loss_weight", io.loss_weight.shape);
    const out = unet2dConditionForward(cfg, p, x, t, ctx);
    const gradNames = Object.keys(io).filter((k) => k.startsWith("grad.")).map((k) => k.slice(5));
    const wrt = Object.fromEntries(
      gradNames.map((k) => [k, k === "sample" ? x : k === "encoder_hidden_states" ? ctx : p[k]]),
    );
    const g = grad(sum(mul(out, w)), wrt);
    const outputs = { out, ...Object.fromEntries(gradNames.map((k) => [`grad.${k}`, g[k]])) };
    const ex = await createExecutor("cpu");
    try {
      const prepared = await ex.prepare(tr.build(outputs));
      const feeds: Record<string, Float32Array> = {};
      for (const k of Object.keys(shapes)) feeds[k] = toFloat32(weights[k]);
      for (const k of ["sample", "timestep", "encoder_hidden_states", "loss_weight"]) feeds[k] = toFloat32(io[k]);
      const bufs = Object.fromEntries(
        prepared.inputNames.map((n) => [n, ex.upload(feeds[n], [...(shapes[n] ?? io[n].shape)], "f32")]),
      );
      const res = await prepared.run(bufs);
      const errs: string[] = [];
      for (const [name, buf] of Object.entries(res)) {
        const err = maxRel(await ex.read(buf) as Float32Array, toFloat32(io[name]));
        if (!(err < 1e-4)) errs.push(`${name}: ${err.toExponential(2)}`);
      }
      if (errs.length) throw new Error(`differs from diffusers (max |Δ| / max |ref|): ${errs.join("; ")}`);
    } finally {
      await ex.close();
    }
  },
});

Deno.test("diffusers UNet2DConditionModel: an unsupported config value is one line naming the key and the value", async () => {
  const base = JSON.parse(await Deno.readTextFile(`${DIR}unet_sd1/config.json`));
  const cases: [Record<string, unknown>, string][] = [
    [
      { ...base, down_block_types: ["AttnDownBlock2D", "DownBlock2D"] },
      `down_block_types ["AttnDownBlock2D","DownBlock2D"] is not supported`,
    ],
    [{ ...base, class_embed_type: "timestep" }, `class_embed_type "timestep" is not supported`],
    [{ ...base, transformer_layers_per_block: 2 }, `transformer_layers_per_block 2 is not supported`],
    [{ ...base, norm_num_groups: 5 }, `norm_num_groups 5 does not divide block_out_channels 16`],
    [{ ...base, foo: 1 }, `foo: unknown key (value 1)`],
  ];
  for (const [cfg, want] of cases) {
    let msg = "";
    try {
      unetConfig(cfg, "my/config.json");
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.startsWith("my/config.json: ") || !msg.includes(want) || msg.includes("\n")) {
      throw new Error(`expected one line with "${want}", got "${msg}"`);
    }
  }
});
