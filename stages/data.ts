/**
 * `data`: batches from a declared dataset, shuffled per epoch with the run's seed. The batch at step s depends only
 * on the seed and s, so resumed runs see exactly the batches an uninterrupted run would.
 *
 * @module
 */
import { z } from "zod";
import { Rng } from "../engine/rng.ts";
import { datasetKinds, type StageDef, StageTypeError } from "../pipeline/stage.ts";

const Params = z.strictObject({
  /** Name of a dataset declared under `data:`. */
  dataset: z.string(),
  batch: z.number().int().positive().default(32),
  shuffle: z.boolean().default(true),
});

// A few recent shuffles: consecutive steps share one, and several data stages must not evict each other's.
const cache = new Map<string, Int32Array>();

/** The epoch's shuffle, from the seed, the stage and the epoch alone. */
function permutation(stream: string, epoch: number, n: number): Int32Array {
  const key = `${stream}/${epoch}/${n}`;
  let perm = cache.get(key);
  if (!perm) {
    const [seed, ...stage] = stream.split("/");
    perm = new Rng(Number(seed)).fold(`data/${stage.join("/")}`).fold(epoch).permutation(n);
    cache.set(key, perm);
    // Two per stage (a batch can straddle epochs), for up to four data stages.
    if (cache.size > 8) cache.delete(cache.keys().next().value!);
  }
  return perm;
}

/** The data-load stage. */
export const dataLoad: StageDef<z.output<typeof Params>> = {
  kind: "data",
  doc: "seeded, shuffled batches of a declared dataset",
  role: "host",
  params: Params,
  inputs: [],
  datasets: (p) => [p.dataset],
  types: ({ params, datasets }) => {
    const info = datasets[params.dataset];
    if (!info) throw new StageTypeError(`dataset "${params.dataset}" is not declared`, ["params", "dataset"]);
    const fields = datasetKinds().get(info.kind)!.fields(info.params);
    return Object.fromEntries(
      Object.entries(fields).map(([k, s]) => [k, { dtype: s.dtype, shape: [params.batch, ...s.shape] }]),
    );
  },
  host: async (ctx, p) => {
    const ds = await ctx.dataset(p.dataset);
    return ds.batch(batchIndices(ctx, p, ds.size));
  },
};

/**
 * The examples of this step's batch: the step's slice of the epoch's shuffle, which the seed, the stage's name and
 * the step alone decide (shared with `latent_data`, which batches the same way).
 */
export function batchIndices(
  ctx: { seed: number; stage: string; step: number },
  p: { batch: number; shuffle: boolean },
  size: number,
): Int32Array {
  const first = (ctx.step - 1) * p.batch;
  const idx = new Int32Array(p.batch);
  for (let i = 0; i < p.batch; i++) {
    const k = first + i;
    const perm = p.shuffle ? permutation(`${ctx.seed}/${ctx.stage}`, Math.floor(k / size), size) : null;
    idx[i] = perm ? perm[k % size] : k % size;
  }
  return idx;
}
