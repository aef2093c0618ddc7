// UNet2DConditionModel from a diffusers folder against the real diffusers v0.31.0 forward and autograd on two tiny
// configs (tests/fixtures/diffusers/unet_sd*, made by make_fixtures.py): the SD 1.x layout with bf16 weights and the
// SD 2.x layout (linear projections, a head count per block, upcast_attention) with fp32 weights. The weights load
// under diffusers' key names, and the output and the gradients of Σ out · w (engine rule table, cpu executor) match.
import { unet2dConditionForward, unetShapes } from "../../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../../models/diffusers/unet2d_condition_config.ts";
import { assertClose, compareWithDiffusers, expectOneLine, FIXTURES } from "./diffusers_reference.ts";

async function checkCase(name: string, weightsFile: string, dtype: string) {
  const cfg = unetConfig(JSON.parse(await Deno.readTextFile(`${FIXTURES}${name}/config.json`)));
  assertClose(
    await compareWithDiffusers({
      weights: `${name}/${weightsFile}`,
      dtype,
      io: `${name}_io.safetensors`,
      shapes: unetShapes(cfg),
      inputs: ["sample", "timestep", "encoder_hidden_states"],
      forward: (p, [x, t, ctx]) => unet2dConditionForward(cfg, p, x, t, ctx),
    }),
  );
}

const opts = { sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "diffusers UNet2DConditionModel: forward and gradients equal diffusers' (SD 1.x layout, bf16 weights)",
  ...opts,
  fn: () => checkCase("unet_sd1", "diffusion_pytorch_model.bf16.safetensors", "BF16"),
});

Deno.test({
  name: "diffusers UNet2DConditionModel: forward and gradients equal diffusers' (SD 2.x layout, fp32 weights)",
  ...opts,
  fn: () => checkCase("unet_sd2", "diffusion_pytorch_model.safetensors", "F32"),
});

Deno.test("diffusers UNet2DConditionModel: the SD 2.x config reads as linear projections with a head count per block", async () => {
  const cfg = unetConfig(JSON.parse(await Deno.readTextFile(`${FIXTURES}unet_sd2/config.json`)));
  if (!cfg.use_linear_projection || cfg.heads.join() !== "2,4,4" || cfg.cross_attention_dim !== 12) {
    throw new Error(`read as ${JSON.stringify(cfg)}`);
  }
});

Deno.test("diffusers UNet2DConditionModel: an unsupported config value is one line naming the key and the value", async () => {
  const base = JSON.parse(await Deno.readTextFile(`${FIXTURES}unet_sd1/config.json`));
  const cases: [Record<string, unknown>, string][] = [
    [
      { ...base, down_block_types: ["AttnDownBlock2D", "DownBlock2D"] },
      `down_block_types ["AttnDownBlock2D","DownBlock2D"] is not supported`,
    ],
    [{ ...base, class_embed_type: "timestep" }, `class_embed_type "timestep" is not supported`],
    [{ ...base, transformer_layers_per_block: 2 }, `transformer_layers_per_block 2 is not supported`],
    [{ ...base, num_attention_heads: [2, 4] }, `num_attention_heads [2,4] is not supported`],
    [{ ...base, attention_head_dim: [4, 4, 4] }, `attention_head_dim [4,4,4] needs 2 values`],
    [{ ...base, norm_num_groups: 5 }, `norm_num_groups 5 does not divide block_out_channels 16`],
    [{ ...base, foo: 1 }, `foo: unknown key (value 1)`],
  ];
  for (const [cfg, want] of cases) expectOneLine(() => unetConfig(cfg, "my/config.json"), "my/config.json", want);
});
