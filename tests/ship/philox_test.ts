// ship/philox.ts: the export's noise must be the project's Rng bit for bit (so an export reproduces the project's
// samples), and its log/sin/cos, written from basic operations for portability, must agree with Math's.
import assert from "node:assert/strict";
import { Rng } from "../../engine/rng.ts";
import { logUnit, Philox, sinCos } from "../../ship/philox.ts";

Deno.test("Philox.seeded(0)'s first block is Random123's philox4x32-10 known answer for counter 0, key 0", () => {
  assert.deepEqual(Array.from(Philox.seeded(0).uint32(4)), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
});

Deno.test("Philox streams equal the project's Rng: words, folds and normals, bit for bit", () => {
  for (const seed of [0, 1, 42, 2 ** 32 + 7, Number.MAX_SAFE_INTEGER]) {
    assert.deepEqual(Philox.seeded(seed).uint32(13), new Rng(seed).uint32(13), `seed ${seed}`);
    for (const name of ["xT", "sampler", "", "a longer stream name, é"]) {
      // Odd lengths and a second draw: the dropped words of the last block must match too.
      const mine = Philox.seeded(seed).fold(name), theirs = new Rng(seed).fold(name);
      for (const n of [3071, 3072, 5]) {
        const a = mine.normal(n), b = theirs.normal(n);
        const differ = a.findIndex((v, i) => v !== b[i]);
        assert.equal(differ, -1, `seed ${seed} "${name}" n ${n}: value ${differ} is ${a[differ]}, Rng ${b[differ]}`);
      }
    }
  }
});

Deno.test("Philox.normal over 400,000 draws matches Rng everywhere", () => {
  const a = Philox.seeded(123).fold("xT").normal(400_000), b = new Rng(123).fold("xT").normal(400_000);
  let differ = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differ++;
  assert.equal(differ, 0);
});

Deno.test("logUnit and sinCos agree with Math.log, Math.sin and Math.cos to a few float64 ulps", () => {
  const words = [0, 1, 2, 3, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, ...new Rng(9).uint32(20_000)];
  for (const w of words) {
    const want = Math.log((w + 1) / 2 ** 32), got = logUnit(w);
    assert.ok(Math.abs(got - want) <= 4e-16 * Math.max(1e-300, Math.abs(want)) + 1e-300, `log of word ${w}`);
  }
  assert.equal(logUnit(0xffffffff), 0);
  const angles = [0, 1e-9, Math.PI / 4, Math.PI / 2, Math.PI, 1.5 * Math.PI, 2 * Math.PI * (1 - 2 ** -32)];
  for (const w of new Rng(10).uint32(20_000)) angles.push(2 * Math.PI * (w / 2 ** 32));
  for (const th of angles) {
    const [s, c] = sinCos(th);
    assert.ok(Math.abs(s - Math.sin(th)) <= 5e-16, `sin ${th}: ${s} vs ${Math.sin(th)}`);
    assert.ok(Math.abs(c - Math.cos(th)) <= 5e-16, `cos ${th}: ${c} vs ${Math.cos(th)}`);
  }
});
