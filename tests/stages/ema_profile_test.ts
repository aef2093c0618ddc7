// The ema stage's power profile (EDM2): its decays reproduce the closed-form power-function average, and a real run's
// checkpoints hold e_n = β_n·e_(n−1) + (1 − β_n)·p_n with β_n = (1 − 1/n)^(γ+1) counted in updates, every 1 or 2 steps.
import assert from "node:assert/strict";
import { readSafetensors } from "../../engine/safetensors.ts";
import { listCheckpoints } from "../../pipeline/checkpoint.ts";
import type { EffectContext } from "../../pipeline/stage.ts";
import { emaStage, powerDecay } from "../../stages/ema.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The decays the stage asks for at the given steps. */
async function decays(params: Record<string, unknown>, steps: number[], every: number): Promise<number[]> {
  const p = emaStage.params.parse({ model: "m", ...params });
  const got: number[] = [];
  for (const step of steps) {
    const ctx = { step, every, updateEma: (_m: string, d: number) => Promise.resolve(void got.push(d)) };
    await emaStage.effect!(ctx as unknown as EffectContext, p, {});
  }
  return got;
}

Deno.test("ema power profile: the running average equals Σ (n^(γ+1) − (n−1)^(γ+1)) / N^(γ+1) · p_n", async () => {
  const gamma = 6.94, N = 40;
  const p = Array.from({ length: N }, (_, i) => Math.sin(1.7 * i) + 0.1 * i);
  for (const every of [1, 2]) {
    const ds = await decays({ profile: "power", gamma }, p.map((_, i) => (i + 1) * every), every);
    let e = 123; // whatever the EMA held before: the first decay is 0
    ds.forEach((d, i) => e = d * e + (1 - d) * p[i]);
    let want = 0;
    for (let n = 1; n <= N; n++) want += ((n ** (gamma + 1) - (n - 1) ** (gamma + 1)) / N ** (gamma + 1)) * p[n - 1];
    assert.ok(Math.abs(e - want) < 1e-9, `every ${every}: ${e} vs ${want}`);
  }
  assert.deepEqual(await decays({ decay: 0.9 }, [1, 2, 3], 1), [0.9, 0.9, 0.9], "constant profile unchanged");
  assert.throws(() => emaStage.params.parse({ model: "m", profile: "power", gamma: 0 }));
  assert.throws(() => emaStage.params.parse({ model: "m", profile: "karras" }));
  assert.throws(() => emaStage.params.parse({ model: "m", profile: "power", warmup: true }), /warm-up/);
});

Deno.test("ema power profile in a run: each checkpoint's EMA follows from the previous one and the weights", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "ema_profile_test-" });
  try {
    for (const every of [1, 2]) {
      const out = `${tmp}/every${every}`;
      const args = ["run", `--config=${ROOT}deno.json`, "--allow-read", `--allow-write=${tmp}`, "--allow-env"]
        .concat(["--allow-ffi", "--allow-sys", `${ROOT}configs/custom/my_stages.ts`, `${ROOT}configs/custom/fit.yaml`])
        .concat(["--out", out, "--steps", "6", "--set", "stages.ema.params.profile=power"])
        .concat(["--set", `stages.ema.every=${every}`, "--set", `stages.ckpt.every=${every}`])
        .concat(["--set", "stages.ckpt.params.keep=10", "--set", "stages.plot=null"]);
      const r = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdout: "piped", stderr: "piped" }).output();
      const dec = new TextDecoder();
      assert.equal(r.code, 0, dec.decode(r.stdout) + dec.decode(r.stderr));
      const cks = await listCheckpoints(out);
      assert.deepEqual(cks.map((c) => c.step), [1, 2, 3, 4, 5, 6].filter((s) => s % every === 0));
      let prev: Record<string, Float32Array> | null = null;
      for (const [i, c] of cks.entries()) {
        const w = (await readSafetensors(`${c.dir}/net.safetensors`)).tensors;
        const e = (await readSafetensors(`${c.dir}/net.ema.safetensors`)).tensors;
        const beta = powerDecay(i + 1, 6.94);
        for (const k of Object.keys(w)) {
          const [pk, ek] = [w[k].data, e[k].data] as Float32Array[];
          for (let j = 0; j < pk.length; j++) {
            const want = prev ? beta * prev[k][j] + (1 - beta) * pk[j] : pk[j];
            assert.ok(Math.abs(ek[j] - want) < 1e-6, `every ${every}, step ${c.step}, ${k}[${j}]: ${ek[j]} vs ${want}`);
          }
        }
        prev = Object.fromEntries(Object.entries(e).map(([k, t]) => [k, t.data as Float32Array]));
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
