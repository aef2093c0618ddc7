// UNet2DModel (diffusers' unconditional UNet) from a diffusers folder against the real diffusers v0.31.0 forward and
// autograd on a tiny config with the DDPM ports' settings (tests/fixtures/diffusers/unet2d*, made by make_fixtures.py):
// the fp16 weights load under diffusers' key names, and the output and the gradients of Σ out · w match.
import { unet2dModelForward, unet2dModelShapes } from "../../../models/diffusers/unet2d_model.ts";
import { unet2dModelConfig, unet2dModelPlan } from "../../../models/diffusers/unet2d_model_config.ts";
import { assertClose, compareWithDiffusers, expectOneLine, FIXTURES } from "./diffusers_reference.ts";

const readConfig = async () => JSON.parse(await Deno.readTextFile(`${FIXTURES}unet2d/config.json`));

Deno.test({
  name: "diffusers UNet2DModel: forward and gradients equal diffusers' (fp16 weights)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const cfg = unet2dModelConfig(await readConfig());
    assertClose(
      await compareWithDiffusers({
        weights: "unet2d/diffusion_pytorch_model.fp16.safetensors",
        dtype: "F16",
        io: "unet2d_io.safetensors",
        shapes: unet2dModelShapes(cfg),
        inputs: ["sample", "timestep"],
        forward: (p, [x, t]) => unet2dModelForward(cfg, p, x, t),
      }),
    );
  },
});

Deno.test("diffusers UNet2DModel: the config's attention levels and head counts", async () => {
  const cfg = unet2dModelConfig(await readConfig());
  const plan = unet2dModelPlan(cfg);
  const heads = [...plan.down, plan.mid, ...plan.up].map((b) => b.attentions.map((a) => a.heads).join("") || "-");
  if (heads.join(" ") !== "- 44 4 444 -" || cfg.attn_norm_num_groups !== 4 || cfg.downsample_padding !== 0) {
    throw new Error(`read as ${heads.join(" ")}, ${JSON.stringify(cfg)}`);
  }
  const none = unet2dModelPlan(
    unet2dModelConfig({ ...(await readConfig()), attention_head_dim: null, add_attention: false }),
  );
  if (none.mid.attentions.length || none.down[1].attentions[0].heads !== 1) throw new Error("attention_head_dim null");
});

Deno.test("diffusers UNet2DModel: an unsupported config value is one line naming the key and the value", async () => {
  const base = await readConfig();
  const cases: [Record<string, unknown>, string][] = [
    [
      { ...base, down_block_types: ["SkipDownBlock2D", "AttnDownBlock2D"] },
      `down_block_types ["SkipDownBlock2D","AttnDownBlock2D"] is not supported`,
    ],
    [{ ...base, time_embedding_type: "fourier" }, `time_embedding_type "fourier" is not supported`],
    [{ ...base, class_embed_type: "timestep" }, `class_embed_type "timestep" is not supported`],
    [{ ...base, resnet_time_scale_shift: "scale_shift" }, `resnet_time_scale_shift "scale_shift" is not supported`],
    [{ ...base, add_attention: 1 }, `add_attention 1 is not supported (expected true or false)`],
    [{ ...base, freq_shift: -1 }, `freq_shift -1 is not supported`],
    [{ ...base, attention_head_dim: 5 }, `attention_head_dim 5 does not divide block_out_channels 32`],
    [{ ...base, norm_num_groups: 3 }, `norm_num_groups 3 does not divide block_out_channels 16`],
    [{ ...base, up_block_types: ["UpBlock2D"] }, `up_block_types has 1 blocks but block_out_channels has 2`],
    [{ ...base, _class_name: "UNet2DConditionModel" }, `_class_name "UNet2DConditionModel" is not UNet2DModel`],
    [{ ...base, cross_attention_dim: 8 }, `cross_attention_dim: unknown key (value 8)`],
  ];
  for (const [cfg, want] of cases) {
    expectOneLine(() => unet2dModelConfig(cfg, "my/config.json"), "my/config.json", want);
  }
});
