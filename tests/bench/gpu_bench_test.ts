import { largestPackedBuffer, largestPackedModel, modelFits } from "../../bench/gpu/limits.ts";
import { partSize, prune, walkDeps } from "../../bench/gpu/pack_plan.ts";
import { parseResultLines } from "../../bench/gpu/results.ts";
import { parseTimeLine } from "../../bench/time_line.ts";

function eq(got: unknown, want: unknown, what: string) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: ${g}, want ${w}`);
}

Deno.test("parseResultLines: workloads, numbers as numbers, NaN and text kept as text, other lines skipped", () => {
  const text = [
    "webgpu: 1103.20 ms/step median of 2",
    "RESULT block_step executor=webgpu ms=1103.20 torch_ms=101.28 ratio=10.892",
    "  RESULT teacher_step executor=cpu ms=2216.0 torch_ms=NaN ratio=NaN roofline_share=0.570",
    "RESULTS are in",
  ].join("\n");
  eq(parseResultLines(text), [
    { workload: "block_step", fields: { executor: "webgpu", ms: 1103.2, torch_ms: 101.28, ratio: 10.892 } },
    {
      workload: "teacher_step",
      fields: { executor: "cpu", ms: 2216, torch_ms: "NaN", ratio: "NaN", roofline_share: 0.57 },
    },
  ], "parsed");
});

Deno.test("parseTimeLine: seconds or minutes, per-phase shares as ms per step; other lines are null", () => {
  eq(parseTimeLine("time: 41.1 s for 30 steps — opt_g 78%, opt_d 17%"), {
    total: 1370,
    steps: 30,
    phases: { opt_g: 0.78 * 41100 / 30, opt_d: 0.17 * 41100 / 30 },
  }, "seconds");
  eq(parseTimeLine("time: 8m 31s for 500 steps"), { total: 511000 / 500, steps: 500, phases: {} }, "minutes");
  eq(parseTimeLine("step 3/30 | 1.2 it/s"), null, "not a time line");
});

Deno.test("gpu limits: one buffer bounds a parameter (both limits, 16-byte units), memory the model; what packs", () => {
  // llvmpipe's limits as Deno reports them here: a 128 MiB binding under a 2 GiB buffer.
  const llvmpipe = { maxBufferSize: 2147483647, maxStorageBufferBindingSize: 134217728 };
  eq(largestPackedBuffer(llvmpipe), 33554432, "llvmpipe");
  eq(largestPackedBuffer({ maxBufferSize: 1000, maxStorageBufferBindingSize: 4000 }, 2), 496, "fp16, buffer-bound");
  eq(
    largestPackedBuffer({ maxBufferSize: 2 ** 32 - 1, maxStorageBufferBindingSize: 2 ** 32 - 1 }),
    2 ** 30 - 4,
    "wgpu",
  );
  // No longer one buffer's worth: the model is what memory holds in weights, gradient, m, v and EMA.
  eq(largestPackedModel(llvmpipe) === Infinity, true, "memory unknown: unbounded by the buffer");
  eq(largestPackedModel(llvmpipe, 141e9), Math.floor(141e9 / 20), "an H200's 141 GB, five fp32 copies");
  eq(largestPackedModel({ maxBufferSize: 2, maxStorageBufferBindingSize: 2 }, 1e9), 0, "not even one parameter");
  const fits = modelFits(llvmpipe);
  eq(fits["configs/teacher.yaml UNet"], { fits: true, buffers: 1 }, "teacher");
  eq(fits["Stable Diffusion 1.5 UNet"], { fits: true, buffers: 26 }, "SD 1.5: 26 buffers at least (31 greedily)");
  eq(fits["SDXL UNet"], { fits: true, buffers: 77 }, "SDXL");
  // Their largest parameter, a 2560 → 1280 3×3 conv, is 118 MB: under 128 MiB, over 100 MiB.
  eq(
    modelFits({ maxBufferSize: 2 ** 31, maxStorageBufferBindingSize: 100 * 2 ** 20 })["SDXL UNet"].fits,
    false,
    "100 MiB",
  );
});

Deno.test("partSize: what is left of 64 MiB beside the tracked files; too little is an error", () => {
  eq(partSize(36 * 2 ** 20), 27 * 2 ** 20, "36 MiB tracked");
  let threw = false;
  try {
    partSize(61 * 2 ** 20);
  } catch {
    threw = true;
  }
  eq(threw, true, "61 MiB tracked throws");
});

Deno.test("walkDeps and prune: dependencies through a Deno-style node_modules, kept files by prefix", async () => {
  const nm = await Deno.makeTempDir();
  try {
    // a@1 depends on @s/b@2, which depends on c@3; d is installed but unreachable; @s/skip is skipped by name.
    const pkg = async (key: string, name: string, deps: string[], files: string[]) => {
      const dir = `${nm}/.deno/${key}/node_modules/${name}`;
      await Deno.mkdir(dir, { recursive: true });
      for (const f of files) {
        await Deno.mkdir(`${dir}/${f}`.replace(/\/[^/]*$/, ""), { recursive: true });
        await Deno.writeTextFile(`${dir}/${f}`, f);
      }
      for (const [dep, depKey] of deps.map((d) => d.split("="))) {
        const at = `${nm}/.deno/${key}/node_modules/${dep}`;
        await Deno.mkdir(at.replace(/\/[^/]*$/, ""), { recursive: true });
        await Deno.symlink(`${nm}/.deno/${depKey}/node_modules/${dep}`, at);
      }
    };
    await pkg("c@3", "c", [], ["index.js"]);
    await pkg("s+b@2", "@s/b", ["c=c@3"], ["package.json", "dist/b.js", "dist/b.js.map", "big/blob.bin"]);
    await pkg("a@1", "a", ["@s/b=s+b@2"], ["package.json", "index.js", "README.md"]);
    await pkg("d@4", "d", [], ["index.js"]);
    await Deno.symlink(`${nm}/.deno/a@1/node_modules/a`, `${nm}/a`);
    await Deno.symlink(`${nm}/.deno/d@4/node_modules/d`, `${nm}/d`);
    const found = walkDeps(nm, ["a"]);
    eq([...found.keys()].sort(), ["@s/b", "a", "c"], "reachable packages");
    eq(prune("a", found.get("a")!), ["index.js", "package.json"], "a: all but docs");
    eq(prune("@s/b", found.get("@s/b")!, { "@s/b": ["package.json", "dist/"] }), ["dist/b.js", "package.json"], "kept");
  } finally {
    await Deno.remove(nm, { recursive: true });
  }
});
