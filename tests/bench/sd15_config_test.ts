import assert from "node:assert/strict";
import { SD15_UNET_CONFIG, SD15_UNET_PARAMS, SD15_VAE_CONFIG, SD15_VAE_PARAMS } from "../../bench/sd15_config.ts";
import { unetShapes } from "../../models/diffusers/unet2d_condition.ts";
import { unetConfig } from "../../models/diffusers/unet2d_condition_config.ts";
import { vaeShapes } from "../../models/diffusers/autoencoder_kl.ts";
import { vaeConfig } from "../../models/diffusers/autoencoder_kl_config.ts";

const count = (s: Record<string, number[]>) => Object.values(s).reduce((a, x) => a + x.reduce((p, q) => p * q, 1), 0);

// Shapes only: nothing is allocated, so the 859.5 M-parameter config is checked in milliseconds.
Deno.test("bench/sd15_config: SD 1.5's UNet and VAE configs give the published parameter counts", () => {
  assert.equal(count(unetShapes(unetConfig(SD15_UNET_CONFIG))), SD15_UNET_PARAMS);
  assert.equal(count(vaeShapes(vaeConfig(SD15_VAE_CONFIG))), SD15_VAE_PARAMS);
});
