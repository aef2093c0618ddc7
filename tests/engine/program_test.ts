// Programs sharing a resident store: bound inputs read store entries, bound outputs replace them, fed inputs come
// from the host, and nothing leaks. Checked on the float64 reference and on onnxruntime's cpu executor against plain
// arithmetic on the host.
import assert from "node:assert/strict";
import { createExecutor } from "../../engine/executors/auto.ts";
import type { ExecutorName } from "../../engine/executors/executor.ts";
import { add, mul } from "../../engine/math.ts";
import { Program, ResidentStore } from "../../engine/program.ts";
import { Trace } from "../../engine/tensor.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

for (const name of ["reference", "cpu"] as ExecutorName[]) {
  Deno.test(
    `Program on ${name}: two programs share a store; updates land, reads see them, nothing leaks`,
    opts,
    async () => {
      const ex = await createExecutor(name);
      try {
        const store = new ResidentStore(ex);
        // p ← p + lr·g (an update), and y = w·x with w read from the store (a frozen input).
        const t1 = new Trace();
        const p = t1.input("p", [3]), g = t1.input("g", [3]), lr = t1.input("lr", []);
        const step = await Program.create(store, t1.build({ p: add(p, mul(g, lr)), norm: mul(p, p) }), {
          inputs: { p: "params" },
          updates: { p: "params" },
        });
        const t2 = new Trace();
        const w = t2.input("w", [3]), x = t2.input("x", [3]);
        const apply = await Program.create(store, t2.build({ y: mul(w, x) }), { inputs: { w: "params" } });
        assert.deepEqual(step.fedInputs.map((i) => i.name).sort(), ["g", "lr"]);

        store.set("params", Float32Array.of(1, 2, 3));
        const host = [1, 2, 3];
        for (const k of [1, 2]) {
          const gk = Float32Array.of(k, -k, 0.5), out = await step.run({ g: gk, lr: Float32Array.of(0.25) });
          // The unbound output comes back computed from the parameters before the update.
          assert.deepEqual([...out.norm].map(Number), host.map((v) => v * v));
          for (let i = 0; i < 3; i++) host[i] += gk[i] * 0.25;
        }
        assert.deepEqual([...(await store.read("params"))].map(Number), host);
        const y = (await apply.run({ x: Float32Array.of(2, 2, 2) }, ["y"])).y;
        assert.deepEqual([...y].map(Number), host.map((v) => 2 * v));
        await assert.rejects(() => apply.run({}), /missing input "x"/);
        await assert.rejects(
          () => Program.create(store, t2.build({ y: mul(w, x) }), { updates: { z: "params" } }),
          /"z" is not a graph output/,
        );
        await step.dispose();
        await apply.dispose();
        assert.equal(ex.liveBuffers(), 1, "only the store's entry is alive");
        store.dispose();
        assert.equal(ex.liveBuffers(), 0);
      } finally {
        await ex.close();
      }
    },
  );
}
