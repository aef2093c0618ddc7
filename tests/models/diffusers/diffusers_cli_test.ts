// deno task diffusers in subprocesses (no network permission): `forward` on the tiny SD 1.x fixture folder with its
// io file's inputs reproduces the real diffusers' output; bad input (a missing folder, a missing input tensor, a wrong
// shape, an id that is not downloaded) is one line, exit 1, and nothing written (export: export_test.ts).
import assert from "node:assert/strict";
import { decodeSafetensors, encodeSafetensors, readSafetensors, toFloat32 } from "../../../engine/safetensors.ts";
import { cli, expectCode, ROOT, tmp } from "../../helpers/cli_run.ts";

const CLI = `${ROOT}diffusers.ts`;
const FIXTURE = `${ROOT}tests/fixtures/diffusers/unet_sd1`;
const IO = `${ROOT}tests/fixtures/diffusers/unet_sd1_io.safetensors`;

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** Runs the CLI, expects exit 1 with one stderr line matching `re`, and `dir` unchanged. */
async function refused(args: string[], re: RegExp, dir: string) {
  const before = await listing(dir);
  const r = await cli(args, CLI);
  const lines = r.stderr.trim().split("\n");
  assert.equal(r.code, 1, `exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], re);
  assert.deepEqual(await listing(dir), before, "nothing may be written");
}

Deno.test({
  name:
    "diffusers forward: the fixture UNets' (both classes) outputs from their io files' inputs equal diffusers' to 1e-4",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_cli");
    // SD 1.x layout from its bf16 variant; SD 2.x layout (linear projections, heads per block) from plain fp32; the
    // unconditional UNet2DModel (sample and timestep only) from its fp16 variant.
    const cases = [["unet_sd1", ["--variant", "bf16"]], ["unet_sd2", []], ["unet2d", ["--variant", "fp16"]]] as const;
    for (const [name, variant] of cases) {
      const out = `${root}/${name}.safetensors`, io = `${ROOT}tests/fixtures/diffusers/${name}_io.safetensors`;
      const args = ["forward", "--model", `${ROOT}tests/fixtures/diffusers/${name}`, ...variant];
      const r = await cli([...args, "--inputs", io, "--out", out], CLI);
      expectCode(r, 0, `diffusers forward ${name}`);
      assert.match(r.stdout, /^wrote .*\.safetensors \(sample \[2,\d,(8,8|16,16)\]; UNet2D\w*Model from .* on cpu\)$/m);
      const got = toFloat32((await readSafetensors(out)).tensors.sample);
      const want = toFloat32((await readSafetensors(io)).tensors.out);
      assert.equal(got.length, want.length);
      let err = 0, ref = 0;
      for (let i = 0; i < want.length; i++) {
        err = Math.max(err, Math.abs(got[i] - want[i])), ref = Math.max(ref, Math.abs(want[i]));
      }
      assert.ok(err / ref < 1e-4, `${name}: max |Δ| / max |ref| = ${err / ref}`);
    }
    assert.deepEqual(await listing(root), ["unet2d.safetensors", "unet_sd1.safetensors", "unet_sd2.safetensors"]);
  },
});

Deno.test({
  name: "diffusers forward: a missing folder, input tensor or variant, a wrong shape, an id not downloaded: one line",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_cli_errors"), out = `${root}/out.safetensors`;
    const io = decodeSafetensors(await Deno.readFile(IO), IO).tensors;
    const write = async (name: string, keys: Record<string, { data: Float32Array; shape: number[] }>) => {
      await Deno.writeFile(`${root}/${name}`, encodeSafetensors(keys));
      return `${root}/${name}`;
    };
    const f = (k: string) => ({ data: io[k].data as Float32Array, shape: io[k].shape });
    const noT = await write("no_t.safetensors", {
      sample: f("sample"),
      encoder_hidden_states: f("encoder_hidden_states"),
    });
    const wide = await write("wide.safetensors", {
      sample: f("sample"),
      timestep: f("timestep"),
      encoder_hidden_states: { data: new Float32Array(2 * 5 * 8), shape: [2, 5, 8] },
    });
    const run = (
      model: string,
      inputs: string,
      ...more: string[]
    ) => ["forward", "--model", model, "--inputs", inputs, "--out", out, ...more];
    await refused(run(`${root}/nope`, IO), /\/nope: no such folder$/, root);
    await refused(run(FIXTURE, IO), /unet_sd1: no diffusion_pytorch_model\.safetensors .*has the variant bf16$/, root);
    await refused(
      run(FIXTURE, noT, "--variant", "bf16"),
      /no_t\.safetensors: no tensor "timestep" \(a UNet2DConditionModel takes sample, timestep, encoder_hidden_states\)$/,
      root,
    );
    await refused(
      run(FIXTURE, wide, "--variant", "bf16"),
      /wide\.safetensors: tensor "encoder_hidden_states" is \[2,5,8\], expected \[2,L,16\]$/,
      root,
    );
    await refused(
      run(FIXTURE, `${root}/none.safetensors`, "--variant", "bf16"),
      /none\.safetensors: cannot read/,
      root,
    );
    await refused(
      run("nobody/nothing-here", IO),
      /^hub id "nobody\/nothing-here": no network permission to download https:\/\/huggingface\.co\/nobody\/nothing-here\/resolve\/main\/config\.json/,
      root,
    );
    await refused(["fetch", "nobody/nothing-here"], /^hub id "nobody\/nothing-here": no network permission/, root);
    // A text encoder is fetched with its pipeline's model_index.json and its tokenizer (clip_text_hub.ts).
    await refused(
      ["fetch", "nobody/nothing-here", "--subfolder", "text_encoder"],
      /^hub id "nobody\/nothing-here": no network permission to download \S+\/nothing-here\/resolve\/main\/model_index\.json/,
      root,
    );
    await refused(["fetch", "not-an-id"], /^hub id "not-an-id": expected org\/name$/, root);
  },
});

Deno.test({
  name:
    "diffusers forward: the fixture VAE's sample → latent_mean and reconstruction, latent → decoded equal diffusers'",
  sanitizeResources: false,
  fn: async () => {
    const root = await tmp("diffusers_cli_vae"), vae = `${ROOT}tests/fixtures/diffusers/vae`;
    const ioFile = `${ROOT}tests/fixtures/diffusers/vae_io.safetensors`;
    const io = (await readSafetensors(ioFile)).tensors;
    const only = async (k: string) => {
      const file = `${root}/${k}_in.safetensors`;
      await Deno.writeFile(file, encodeSafetensors({ [k]: { data: toFloat32(io[k]), shape: io[k].shape } }));
      return file;
    };
    const cases = [["sample", ["latent_mean", "latent_logvar", "reconstruction"]], ["latent", ["decoded"]]] as const;
    for (const [input, outputs] of cases) {
      const out = `${root}/${input}_out.safetensors`;
      expectCode(await cli(["forward", "--model", vae, "--inputs", await only(input), "--out", out], CLI), 0, input);
      const got = (await readSafetensors(out)).tensors;
      assert.deepEqual(Object.keys(got).sort(), [...outputs].sort(), `outputs of a ${input}`);
      for (const k of outputs) {
        const g = toFloat32(got[k]), w = toFloat32(io[k]);
        let err = 0, ref = 0;
        for (let i = 0; i < w.length; i++) {
          err = Math.max(err, Math.abs(g[i] - w[i])), ref = Math.max(ref, Math.abs(w[i]));
        }
        assert.ok(g.length === w.length && err / ref < 1e-4, `${k}: max |Δ| / max |ref| = ${err / ref}`);
      }
    }
  },
});
