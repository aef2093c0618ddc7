// Learning-rate schedules: the traced factor (engine/optim.ts lrFactor) against its host reference lrFactorAt and
// hand-computed values; the optimizer stage's schedule end to end, from the logged rate of a toy run.
import assert from "node:assert/strict";
import { evaluate } from "../../engine/executors/reference.ts";
import { lrFactor, lrFactorAt, type LrSchedule } from "../../engine/optim.ts";
import { Trace } from "../../engine/tensor.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function traced(t: number, s: LrSchedule): number {
  const tr = new Trace();
  const f = lrFactor(tr.input("t", []), s);
  if (typeof f === "number") return f;
  return evaluate(tr.build({ f }), { t: { data: [t], shape: [] } }).f[0];
}

Deno.test("lrFactor: traced schedules equal lrFactorAt and hand-computed values", () => {
  // Hand-computed: warm-up 4 then cosine over updates 4..14 down to 0.1.
  const cos: LrSchedule = { kind: "cosine", warmup: 4, decaySteps: 14, finalFraction: 0.1 };
  assert.ok(Math.abs(lrFactorAt(2, cos) - 0.5) < 1e-12); // half-way through the warm-up, decay not begun
  assert.ok(Math.abs(lrFactorAt(9, cos) - 0.55) < 1e-12); // half-way through the decay: 0.1 + 0.9 · 0.5
  assert.ok(Math.abs(lrFactorAt(14, cos) - 0.1) < 1e-12);
  assert.ok(Math.abs(lrFactorAt(40, cos) - 0.1) < 1e-12); // held after the end
  const lin: LrSchedule = { kind: "linear", decaySteps: 10 };
  assert.ok(Math.abs(lrFactorAt(5, lin) - 0.5) < 1e-12);
  assert.equal(lrFactorAt(7, { kind: "constant" }), 1);
  assert.equal(lrFactorAt(1, { kind: "constant", warmup: 4 }), 0.25);
  for (
    const s of [
      cos,
      lin,
      { kind: "constant", warmup: 3 } as LrSchedule,
      { kind: "cosine", decaySteps: 1 } as LrSchedule,
    ]
  ) {
    for (const t of [1, 2, 3, 4, 5, 7, 9, 10, 13, 14, 15, 100]) {
      const a = traced(t, s), b = lrFactorAt(t, s);
      assert.ok(Math.abs(a - b) < 1e-6, `${JSON.stringify(s)} at ${t}: traced ${a} vs ${b}`);
    }
  }
  assert.throws(() => lrFactor(new Trace().input("t", []), { kind: "linear" }), /needs decaySteps/);
});

Deno.test({
  name: "optimizer schedule: a toy run logs lr = lr₀ · lrFactorAt(step) with the decay ending at run.steps",
  sanitizeResources: false,
  fn: async () => {
    const out = await Deno.makeTempDir({ dir: "/tmp", prefix: "lr_schedule_test-" });
    try {
      const args = ["run", `--config=${ROOT}deno.json`, "--allow-read", `--allow-write=${out}`, "--allow-env"]
        .concat(["--allow-ffi", "--allow-sys", `${ROOT}main.ts`, `${ROOT}configs/toy.yaml`, "--out", out])
        .concat(["--steps", "30", "--set", "run.log_every=1", "--set", "stages.opt.params.schedule=cosine"])
        .concat(["--set", "stages.opt.params.warmup=5", "--set", "stages.opt.params.final_lr_fraction=0.2"]);
      const r = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdout: "piped", stderr: "piped" }).output();
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
      const rows = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(rows.length, 30);
      const s: LrSchedule = { kind: "cosine", warmup: 5, decaySteps: 30, finalFraction: 0.2 };
      for (const row of rows) {
        const want = 0.01 * lrFactorAt(row.step, s);
        assert.ok(Math.abs(row["opt.lr"] - want) < 1e-7, `step ${row.step}: lr ${row["opt.lr"]} vs ${want}`);
      }
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
