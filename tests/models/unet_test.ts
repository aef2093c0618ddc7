// UNet: output shapes for several configurations, parameter shapes agree with the traced use, and a small UNet
// overfits 8 images' denoising targets in a few hundred steps on the cpu executor.
import { createExecutor } from "../../engine/executors/auto.ts";
import { grad } from "../../engine/grad.ts";
import { mse } from "../../engine/nn.ts";
import { adamw } from "../../engine/optim.ts";
import { layoutOf, pack, packHost, unpack } from "../../engine/pack.ts";
import { StepProgram } from "../../engine/program.ts";
import { Rng } from "../../engine/rng.ts";
import { Trace } from "../../engine/tensor.ts";
import { unet } from "../../models/unet.ts";

Deno.test("unet: output shape equals input shape across configurations; every parameter is used", () => {
  const configs = [
    {},
    { channels: [16, 32], blocks: 2, attention_levels: [1], context_dim: 0, pooled_dim: 0, size: 16, groups: 4 },
    { channels: [8, 16, 16, 32], attention_levels: [0, 3], size: 16, groups: 4, heads: 2, in_channels: 1 },
  ];
  for (const c of configs) {
    const u = unet.params.parse(c);
    const shapes = unet.shapes(u);
    const tr = new Trace();
    const p = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tr.input(k, s)]));
    const x = tr.input("x", [2, u.in_channels, u.size, u.size]), t = tr.input("t", [2]);
    const tokens = u.context_dim ? tr.input("tokens", [2, 5, u.context_dim]) : undefined;
    const pooled = u.pooled_dim ? tr.input("pooled", [2, u.pooled_dim]) : undefined;
    const out = unet.apply(u, p, { x, t, ...(tokens ? { tokens } : {}), ...(pooled ? { pooled } : {}) }).out;
    if (out.shape.join() !== x.shape.join()) throw new Error(`out ${out.shape} for x ${x.shape}`);
    // A parameter that does not reach the output would be a layout bug: every one must get a gradient path.
    const g = tr.build({ out });
    const used = new Set<number>();
    const live = new Set([g.outputs[0].node]);
    for (let i = g.nodes.length - 1; i >= 0; i--) if (live.has(i)) { for (const j of g.nodes[i].inputs) live.add(j); }
    g.nodes.forEach((n, i) => n.op === "input" && live.has(i) && used.add(i));
    const unused = g.nodes.filter((n, i) => n.op === "input" && !used.has(i)).map((n) =>
      (n.attrs as { name: string }).name
    );
    if (unused.length) throw new Error(`unused parameters: ${unused.join(", ")}`);
  }
});

Deno.test({
  name: "unet: overfits the denoising targets of 8 images in 300 steps (cpu)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const u = unet.params.parse({
      channels: [16, 32],
      attention_levels: [1],
      size: 16,
      groups: 4,
      context_dim: 8,
      pooled_dim: 8,
    });
    const layout = layoutOf(unet.shapes(u));
    const B = 8;
    const tr = new Trace();
    const flat = tr.input("p", [layout.total]), m = tr.input("m", [layout.total]), v = tr.input("v", [layout.total]);
    const x = tr.input("x", [B, 3, 16, 16]), t = tr.input("t", [B]), tok = tr.input("tok", [B, 4, 8]);
    const pooled = tr.input("pooled", [B, 8]), y = tr.input("y", [B, 3, 16, 16]), step = tr.input("step", []);
    const p = unpack(flat, layout);
    const loss = mse(unet.apply(u, p, { x, t, tokens: tok, pooled }).out, y);
    const r = adamw(flat, pack(grad(loss, p), layout), m, v, step, { lr: 2e-3 });
    const ex = await createExecutor("cpu");
    try {
      const prog = await StepProgram.create(ex, tr.build({ loss, p: r.p, m: r.m, v: r.v }), {
        state: { p: "p", m: "m", v: "v" },
      });
      const rng = new Rng(3);
      prog.setState("p", packHost(unet.init(u, rng.fold("init")), layout));
      prog.setState("m", new Float32Array(layout.total));
      prog.setState("v", new Float32Array(layout.total));
      const feeds = {
        x: rng.fold("x").normal(B * 768),
        t: rng.fold("t").uniform(B).map((s) => s * 999),
        tok: rng.fold("tok").normal(B * 32),
        pooled: rng.fold("pooled").normal(B * 8),
        y: rng.fold("y").normal(B * 768),
      };
      const losses: number[] = [];
      for (let s = 1; s <= 300; s++) {
        losses.push((await prog.run({ ...feeds, step: Float32Array.of(s) }, ["loss"])).loss[0]);
      }
      await prog.dispose();
      const first = losses[0], last = losses[losses.length - 1];
      if (!(last < 0.1 * first)) throw new Error(`loss ${first.toFixed(4)} → ${last.toFixed(4)}; expected a 10× drop`);
    } finally {
      await ex.close();
    }
  },
});
