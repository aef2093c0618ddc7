import assert from "node:assert/strict";
import { philox4x32, Rng } from "../../engine/rng.ts";

// Lines copied from Random123's kat_vectors: name, rounds, counter[4], key[2], expected[4], all hex words.
const KAT = `
philox4x32 7 00000000 00000000 00000000 00000000 00000000 00000000   5f6fb709 0d893f64 4f121f81 4f730a48
philox4x32 7 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   5207ddc2 45165e59 4d8ee751 8c52f662
philox4x32 7 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   4dfccaba 190a87f0 c47362ba b6b5242a
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
`.trim().split("\n");

Deno.test("philox4x32 matches the Random123 known-answer vectors", () => {
  assert.equal(KAT.length, 6);
  for (const line of KAT) {
    const [, rounds, ...hex] = line.split(/\s+/);
    const w = hex.map((h) => parseInt(h, 16));
    assert.deepEqual(Array.from(philox4x32(w.slice(0, 4), w.slice(4, 6), Number(rounds))), w.slice(6), line);
  }
});

Deno.test("Rng block i is philox4x32-10 of counter [i, 0, 0, 0] under the seed as key", () => {
  const seed = 0x299f31d0a4093822n;
  const w = new Rng(seed).uint32(12);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(
      Array.from(w.subarray(4 * i, 4 * i + 4)),
      Array.from(philox4x32([i, 0, 0, 0], [0xa4093822, 0x299f31d0])),
    );
  }
});

Deno.test("same seed gives the same stream; different seeds differ", () => {
  const a = new Rng(1234), b = new Rng(1234n), c = new Rng(1235);
  assert.deepEqual(a.normal(1000), b.normal(1000));
  assert.deepEqual(a.uniform(7), b.uniform(7));
  assert.deepEqual(a.randint(50, -3, 9), b.randint(50, -3, 9));
  assert.notDeepEqual(new Rng(1234).uint32(8), c.uint32(8));
});

Deno.test("fold derives distinct, reproducible streams independent of the parent's counter", () => {
  const root = new Rng(7);
  const a = root.fold("noise").uint32(8);
  root.uniform(100); // drawing from the parent must not change its children
  assert.deepEqual(root.fold("noise").uint32(8), a);
  const others = [
    root.uint32(8),
    root.fold("timesteps").uint32(8),
    root.fold(1).uint32(8),
    root.fold("1").uint32(8),
    root.fold("").uint32(8),
    root.fold("noise\0").uint32(8),
    root.fold("noise").fold(0).uint32(8),
    new Rng(8).fold("noise").uint32(8),
  ];
  const seen = new Set([a, ...others].map((w) => Array.from(w).join(",")));
  assert.equal(seen.size, others.length + 1);
  assert.deepEqual(root.fold("stage").fold(3).uint32(4), new Rng(7).fold("stage").fold(3).uint32(4));
});

Deno.test("state/fromState resumes exactly, through JSON", () => {
  const rng = new Rng(2n ** 64n - 1n).fold("train");
  rng.normal(13);
  rng.permutation(10);
  const saved = JSON.parse(JSON.stringify(rng.state()));
  const expected = [rng.normal(5), rng.randint(20, 0, 1000), rng.uniform(3)];
  const resumed = Rng.fromState(saved);
  assert.deepEqual([resumed.normal(5), resumed.randint(20, 0, 1000), resumed.uniform(3)], expected);
  assert.deepEqual(resumed.state(), rng.state());
  assert.equal(new Rng(5).state().seed, "5");
  assert.equal(new Rng(5).state().counter, "0");
});

Deno.test("the counter carries into its high word", () => {
  const rng = Rng.fromState({ seed: "9", counter: String(2 ** 32 - 1) });
  const w = rng.uint32(8);
  assert.deepEqual(Array.from(w.subarray(0, 4)), Array.from(philox4x32([0xffffffff, 0, 0, 0], [9, 0])));
  assert.deepEqual(Array.from(w.subarray(4)), Array.from(philox4x32([0, 1, 0, 0], [9, 0])));
  assert.equal(rng.state().counter, String(2 ** 32 + 1));
});

Deno.test("normal() has mean 0 and std 1 on 100k samples", () => {
  const n = 100_000, z = new Rng(42).normal(n);
  let s = 0, s2 = 0;
  for (const v of z) s += v, s2 += v * v;
  const mean = s / n, std = Math.sqrt(s2 / n - mean * mean);
  assert.ok(Math.abs(mean) < 0.02, `mean ${mean}`); // 6 standard errors
  assert.ok(Math.abs(std - 1) < 0.02, `std ${std}`);
  assert.ok(z.every(Number.isFinite));
});

Deno.test("uniform() lies in [0, 1) and fills it", () => {
  const u = new Rng(3).uniform(100_000);
  let min = 1, max = 0, s = 0;
  for (const v of u) min = Math.min(min, v), max = Math.max(max, v), s += v;
  assert.ok(min >= 0 && max < 1, `range [${min}, ${max}]`);
  assert.ok(min < 1e-3 && max > 1 - 1e-3);
  assert.ok(Math.abs(s / u.length - 0.5) < 0.01);
});

Deno.test("randint and permutation", () => {
  const rng = new Rng(11);
  const r = rng.randint(10_000, -5, 5);
  const counts = new Map<number, number>();
  for (const v of r) counts.set(v, (counts.get(v) ?? 0) + 1);
  assert.deepEqual([...counts.keys()].sort((a, b) => a - b), [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4]);
  for (const c of counts.values()) assert.ok(c > 850 && c < 1150, `count ${c}`);
  const full = rng.randint(1000, -(2 ** 31), 2 ** 31);
  assert.ok(full.some((v) => v < 0) && full.some((v) => v > 0));
  const p = rng.permutation(1000);
  assert.deepEqual(Array.from(p).sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assert.notDeepEqual(Array.from(p), Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual(rng.permutation(0), new Int32Array(0));
  assert.deepEqual(rng.permutation(1), new Int32Array([0]));
});

Deno.test("invalid arguments throw RangeError", () => {
  assert.throws(() => new Rng(-1), RangeError);
  assert.throws(() => new Rng(1.5), RangeError);
  assert.throws(() => new Rng(2n ** 64n), RangeError);
  assert.throws(() => Rng.fromState({ seed: "1", counter: "-1" }), RangeError);
  assert.throws(() => Rng.fromState({ seed: "x", counter: "0" }), RangeError);
  assert.throws(() => new Rng(1).randint(3, 5, 5), RangeError);
  assert.throws(() => new Rng(1).randint(3, 0, 2 ** 31 + 1), RangeError);
  assert.throws(() => new Rng(1).uniform(-1), RangeError);
  assert.throws(() => new Rng(1).fold(-2), RangeError);
});
