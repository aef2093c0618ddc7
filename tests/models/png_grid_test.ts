// models/png_grid.ts `writeAtomic`: the folder is made, the file appears whole, no temporary file is left behind, and
// a write that cannot complete throws without leaving one either.
import assert from "node:assert/strict";
import { writeAtomic } from "../../models/png_grid.ts";

Deno.test("writeAtomic: makes missing folders, writes bytes and text, leaves no temporary file", async () => {
  const root = await Deno.makeTempDir({ prefix: "png_grid_test-" });
  try {
    await writeAtomic(`${root}/a/b/grid.png`, new Uint8Array([1, 2, 3]));
    await writeAtomic(`${root}/a/b/grid.json`, "{}\n");
    assert.deepEqual(await Deno.readFile(`${root}/a/b/grid.png`), new Uint8Array([1, 2, 3]));
    assert.equal(await Deno.readTextFile(`${root}/a/b/grid.json`), "{}\n");
    assert.deepEqual([...Deno.readDirSync(`${root}/a/b`)].map((e) => e.name).sort(), ["grid.json", "grid.png"]);
    // The target is a folder: the rename fails, the error surfaces and the temporary file is removed.
    await Deno.mkdir(`${root}/a/dir`);
    await Deno.writeTextFile(`${root}/a/dir/keep`, "");
    await assert.rejects(() => writeAtomic(`${root}/a/dir`, "x"));
    assert.deepEqual([...Deno.readDirSync(`${root}/a`)].map((e) => e.name).sort(), ["b", "dir"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
