// AutoencoderKL from a diffusers folder against the real diffusers v0.31.0 forward and autograd on a tiny config
// (tests/fixtures/diffusers/vae*, made by make_vae_fixtures.py): the F16 weights load under diffusers' key names, and
// the posterior's mean and log-variance, the reconstruction, the decoding of a given latent and the gradients of
// Σ mean · w_mean + Σ logvar · w_logvar + Σ decoded · w_decoded (engine rule table, cpu executor) match; the file
// under the old attention names loads to the same weights and outputs.
import { createExecutor } from "../../../engine/executors/auto.ts";
import { grad } from "../../../engine/grad.ts";
import { add, mul } from "../../../engine/math.ts";
import { sum } from "../../../engine/ops.ts";
import { readSafetensors, type SafeTensor, toFloat32 } from "../../../engine/safetensors.ts";
import { type Tensor, Trace } from "../../../engine/tensor.ts";
import {
  checkVaeWeights,
  renameOldVaeKeys,
  vaeDecode,
  vaeEncode,
  vaeFromLatent,
  vaeShapes,
  vaeToLatent,
} from "../../../models/diffusers/autoencoder_kl.ts";
import { type VaeConfig, vaeConfig } from "../../../models/diffusers/autoencoder_kl_config.ts";

const DIR = new URL("../../fixtures/diffusers/", import.meta.url).pathname;
const INPUTS = ["sample", "latent", "w_mean", "w_logvar", "w_decoded"];

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num = Math.max(num, Math.abs(a[i] - b[i])), den = Math.max(den, Math.abs(b[i]));
  return num / den;
}

async function load() {
  const cfg = vaeConfig(JSON.parse(await Deno.readTextFile(`${DIR}vae/config.json`)));
  const weights = (await readSafetensors(`${DIR}vae/diffusion_pytorch_model.safetensors`)).tensors;
  const io = (await readSafetensors(`${DIR}vae_io.safetensors`)).tensors;
  return { cfg, weights, io };
}

/** Traces encode, reconstruction and decode (with the gradients when `withGrads`), runs them on cpu, returns errors. */
async function runAgainstFixture(
  cfg: VaeConfig,
  weights: Record<string, SafeTensor>,
  io: Record<string, SafeTensor>,
  withGrads: boolean,
): Promise<Record<string, number>> {
  const shapes = vaeShapes(cfg), tr = new Trace();
  const p = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
  const v = Object.fromEntries(INPUTS.map((k) => [k, tr.input(k, io[k].shape)]));
  const { mean, logvar } = vaeEncode(cfg, p, v.sample);
  const decoded = vaeDecode(cfg, p, v.latent);
  const outputs: Record<string, Tensor> = {
    latent_mean: mean,
    latent_logvar: logvar,
    decoded,
    reconstruction: vaeDecode(cfg, p, mean),
  };
  if (withGrads) {
    const loss = add(add(sum(mul(mean, v.w_mean)), sum(mul(logvar, v.w_logvar))), sum(mul(decoded, v.w_decoded)));
    const names = Object.keys(io).filter((k) => k.startsWith("grad.")).map((k) => k.slice(5));
    const g = grad(loss, Object.fromEntries(names.map((k) => [k, v[k] ?? p[k]])));
    for (const k of names) outputs[`grad.${k}`] = g[k];
  }
  const ex = await createExecutor("cpu");
  try {
    const prepared = await ex.prepare(tr.build(outputs));
    const bufs = Object.fromEntries(prepared.inputNames.map((n) => {
      const t = weights[n] ?? io[n];
      return [n, ex.upload(toFloat32(t), [...t.shape], "f32")];
    }));
    const res = await prepared.run(bufs);
    const errs: Record<string, number> = {};
    for (const [name, buf] of Object.entries(res)) {
      errs[name] = maxRel(await ex.read(buf) as Float32Array, toFloat32(io[name]));
    }
    return errs;
  } finally {
    await ex.close();
  }
}

function expectClose(errs: Record<string, number>, tol: number) {
  const bad = Object.entries(errs).filter(([, e]) => !(e < tol)).map(([k, e]) => `${k}: ${e.toExponential(2)}`);
  if (bad.length) throw new Error(`differs from diffusers (max |Δ| / max |ref|): ${bad.join("; ")}`);
}

Deno.test("diffusers AutoencoderKL: the folder's keys and shapes are the ones the config implies", async () => {
  const { cfg, weights } = await load();
  const shapes = vaeShapes(cfg);
  const missing = Object.keys(shapes).filter((k) => !weights[k]);
  const extra = Object.keys(weights).filter((k) => !shapes[k]);
  if (missing.length || extra.length) throw new Error(`keys: missing ${missing}, unexpected ${extra}`);
  for (const [k, s] of Object.entries(shapes)) {
    if (weights[k].shape.join() !== s.join() || weights[k].dtype !== "F16") {
      throw new Error(`${k}: ${weights[k].dtype} [${weights[k].shape}], expected F16 [${s}]`);
    }
  }
  checkVaeWeights(cfg, weights, "vae");
  // Dropping the mid attention or the quant convs must drop exactly their keys.
  const lean = vaeShapes({ ...cfg, mid_block_add_attention: false, use_quant_conv: false, use_post_quant_conv: false });
  const gone = Object.keys(shapes).filter((k) => !lean[k]);
  if (gone.some((k) => !/(mid_block\.attentions\.0|^quant_conv|^post_quant_conv)\./.test(k)) || gone.length !== 24) {
    throw new Error(`unexpected keys dropped: ${gone}`);
  }
});

Deno.test({
  name: "diffusers AutoencoderKL: encode, decode, reconstruction and gradients equal diffusers' (float64 reference)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { cfg, weights, io } = await load();
    const errs = await runAgainstFixture(cfg, weights, io, true);
    const worst = Object.entries(errs).sort((a, b) => b[1] - a[1])[0];
    console.log(
      `  max relative error over ${Object.keys(errs).length} outputs: ${worst[1].toExponential(2)} (${worst[0]})`,
    );
    expectClose(errs, 5e-5);
  },
});

Deno.test({
  name: "diffusers AutoencoderKL: the old attention names (query/key/value/proj_attn, conv-shaped) load the same",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { cfg, weights, io } = await load();
    const raw = (await readSafetensors(`${DIR}vae_old_attn.safetensors`)).tensors;
    if (
      !raw["encoder.mid_block.attentions.0.query.weight"] ||
      raw["decoder.mid_block.attentions.0.key.weight"]?.shape.length !== 4
    ) {
      throw new Error("the old-names fixture does not hold old names with conv-shaped weights");
    }
    let msg = "";
    try {
      checkVaeWeights(cfg, raw, "old.safetensors");
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.startsWith("old.safetensors: missing 16 weights")) throw new Error(`unrenamed file: "${msg}"`);
    const old = renameOldVaeKeys(raw);
    checkVaeWeights(cfg, old, "old.safetensors");
    for (const k of Object.keys(weights)) {
      const a = toFloat32(old[k]), b = toFloat32(weights[k]);
      if (a.length !== b.length || a.some((x, i) => x !== b[i])) throw new Error(`${k}: renamed weights differ`);
    }
    if (
      renameOldVaeKeys(weights)["decoder.mid_block.attentions.0.to_out.0.weight"] !==
        weights["decoder.mid_block.attentions.0.to_out.0.weight"]
    ) {
      throw new Error("a current-names file must pass through unchanged");
    }
    expectClose(await runAgainstFixture(cfg, old, io, false), 5e-5);
  },
});

Deno.test("diffusers AutoencoderKL: scaling_factor and shift_factor to and from the latent space", async () => {
  const { cfg } = await load();
  const tr = new Trace(), shifted = { ...cfg, scaling_factor: 1.5305, shift_factor: 0.0609 };
  const z = tr.input("z", [2, 3]);
  const outs = {
    plain: vaeToLatent(cfg, z),
    shifted: vaeToLatent(shifted, z),
    back: vaeFromLatent(shifted, vaeToLatent(shifted, z)),
    from: vaeFromLatent(shifted, z),
  };
  const zs = new Float32Array([-2, -0.5, 0, 0.25, 1, 3]);
  const ex = await createExecutor("cpu");
  try {
    const prepared = await ex.prepare(tr.build(outs));
    const res = await prepared.run({ z: ex.upload(zs, [2, 3], "f32") });
    const want: Record<string, (x: number) => number> = {
      plain: (x) => x * cfg.scaling_factor,
      shifted: (x) => (x - 0.0609) * 1.5305,
      back: (x) => x,
      from: (x) => x / 1.5305 + 0.0609,
    };
    for (const [k, f] of Object.entries(want)) {
      const got = await ex.read(res[k]) as Float32Array;
      const err = maxRel(got, Array.from(zs, f));
      if (!(err < 1e-6)) throw new Error(`${k}: ${Array.from(got)} (error ${err})`);
    }
  } finally {
    await ex.close();
  }
});

Deno.test("diffusers AutoencoderKL: an unsupported config value is one line naming the key and the value", async () => {
  const base = JSON.parse(await Deno.readTextFile(`${DIR}vae/config.json`));
  const cases: [Record<string, unknown>, string][] = [
    [
      { ...base, down_block_types: ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"] },
      `down_block_types ["DownEncoderBlock2D","AttnDownEncoderBlock2D"] is not supported`,
    ],
    [{ ...base, up_block_types: ["UpDecoderBlock2D"] }, `up_block_types has 1 blocks but block_out_channels has 2`],
    [{ ...base, act_fn: "gelu" }, `act_fn "gelu" is not supported (expected "silu")`],
    [{ ...base, shift_factor: "0.1" }, `shift_factor "0.1" is not supported (expected null or a number)`],
    [{ ...base, latents_mean: [0.1, 0.2, 0.3, 0.4] }, `latents_mean [0.1,0.2,0.3,0.4] is not supported`],
    [{ ...base, norm_num_groups: 12 }, `norm_num_groups 12 does not divide block_out_channels 16`],
    [{ ...base, _class_name: "VQModel" }, `_class_name "VQModel" is not AutoencoderKL`],
    [{ ...base, foo: 1 }, `foo: unknown key (value 1)`],
  ];
  for (const [cfg, want] of cases) {
    let msg = "";
    try {
      vaeConfig(cfg, "my/config.json");
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.startsWith("my/config.json: ") || !msg.includes(want) || msg.includes("\n")) {
      throw new Error(`expected one line with "${want}", got "${msg}"`);
    }
  }
  const c = vaeConfig({ ...base, shift_factor: 0.1159, sample_size: [32, 48], use_quant_conv: false });
  if (c.shift_factor !== 0.1159 || c.sample_size !== 32 || c.use_quant_conv || !c.use_post_quant_conv) {
    throw new Error(`parsed ${JSON.stringify(c)}`);
  }
});
