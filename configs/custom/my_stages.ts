/**
 * A user's own kinds, registered from their own module and named in `fit.yaml`: a `user.triangle_wave` dataset and
 * a traced `user.fourier_features` stage (Tancik et al. 2020, "Fourier Features Let Networks Learn High Frequency
 * Functions in Low Dimensional Domains") and a `user.sgd` optimizer (SGD with heavy-ball momentum, its rule an
 * `init`/`update` pair), mixed with the built-in data, model, mse, optimizer, ema, checkpoint and metrics stages,
 * which `registerBuiltins` registers. It imports only the project's `mod.ts` (and zod, for its parameter schemas), as
 * a module outside the project would.
 *
 * Run it as the CLI, with the same arguments as `deno task run`:
 *
 * ```sh
 * deno run --allow-read --allow-write=out --allow-env --allow-ffi --allow-sys configs/custom/my_stages.ts \
 *   configs/custom/fit.yaml
 * ```
 *
 * @module
 */
import {
  concat,
  cos,
  type DatasetDef,
  expectPort,
  mul,
  type OptimizerRule,
  registerBuiltins,
  registerDataset,
  registerStage,
  Rng,
  runCli,
  sgd,
  sin,
  type StageDef,
  StageTypeError,
} from "../../mod.ts";
import { z } from "zod";

const FeatureParams = z.strictObject({
  /** Number of octaves K: features sin and cos of 2^k·π·scale·x for k = 0 … K−1. */
  frequencies: z.number().int().min(1).max(16).default(4),
  /** Base frequency multiplier. */
  scale: z.number().positive().default(1),
  /** Keep x itself as the first features. */
  include_input: z.boolean().default(true),
});

/** The angular frequencies of the features, lowest first. */
export const featureFrequencies = (p: z.output<typeof FeatureParams>): number[] =>
  Array.from({ length: p.frequencies }, (_, k) => 2 ** k * Math.PI * p.scale);

/**
 * `user.fourier_features`: x [B, d] → features [B, d·(2K + 1)] (or d·2K without the input): [x, sin(ω₀x), cos(ω₀x),
 * sin(ω₁x), …] along the last axis. Traced, so it compiles into the optimizer's graph with the model after it.
 */
export const fourierFeatures: StageDef<z.output<typeof FeatureParams>> = {
  kind: "user.fourier_features",
  doc: "Fourier features [x, sin(2^k π s x), cos(2^k π s x)] of a [batch, d] input",
  role: "traced",
  params: FeatureParams,
  inputs: ["x"],
  types: ({ params, inputs }) => {
    const x = expectPort(inputs, "x", { dtype: "f32", rank: 2 });
    if (x.shape[1] === 0) throw new StageTypeError(`input "x" has no features`, ["inputs", "x"]);
    const per = 2 * params.frequencies + (params.include_input ? 1 : 0);
    return { features: { dtype: "f32", shape: [x.shape[0], x.shape[1] * per] } };
  },
  trace: (_ctx, p, { x }) => {
    const parts = p.include_input ? [x] : [];
    for (const w of featureFrequencies(p)) {
      const wx = mul(x, w);
      parts.push(sin(wx), cos(wx));
    }
    return { features: concat(parts, 1) };
  },
};

const WaveParams = z.strictObject({
  /** Periods per unit of x. */
  frequency: z.number().positive().default(2),
  /** Number of examples. */
  size: z.number().int().positive().default(512),
});

/** The triangle wave of `frequency` periods per unit, in [−1, 1]: 1 at integers, −1 half a period later. */
export const triangle = (x: number, frequency: number): number => {
  const u = frequency * x;
  return 1 - 4 * Math.abs(u - Math.floor(u + 0.5));
};

/** `user.triangle_wave`: x uniform in [−1, 1], y a triangle wave — sharp corners a plain MLP on x fits slowly. */
export const triangleWave: DatasetDef<z.output<typeof WaveParams>> = {
  kind: "user.triangle_wave",
  doc: "x uniform in [-1, 1], y = triangle wave of x",
  params: WaveParams,
  fields: () => ({ x: { dtype: "f32", shape: [1] }, y: { dtype: "f32", shape: [1] } }),
  load: (p, seed) => {
    const x = new Rng(seed).fold("user.triangle_wave").uniform(p.size).map((u) => 2 * u - 1);
    const y = x.map((v) => triangle(v, p.frequency));
    return Promise.resolve({
      size: p.size,
      batch: (idx) => ({
        x: Float32Array.from(idx, (i) => x[i]),
        y: Float32Array.from(idx, (i) => y[i]),
      }),
    });
  },
};

const SgdParams = z.strictObject({
  models: z.array(z.string()).min(1),
  lr: z.number().min(0).default(0.01),
  momentum: z.number().min(0).lt(1).default(0.9),
});

/** SGD with momentum: its state per model is one buffer, `buf`, from zero (the first step's buffer is the gradient). */
const sgdRule: OptimizerRule<z.output<typeof SgdParams>> = {
  init: (_p, size) => ({ buf: new Float32Array(size) }),
  update: (_ctx, p, models) =>
    models.map((m) => {
      const r = sgd(m.param, m.grad, { lr: p.lr, momentum: p.momentum }, m.state.buf);
      return { param: r.p, state: { buf: r.buf! } };
    }),
};

/** The `user.sgd` optimizer stage: an optimizer kind is its parameters plus its rule. */
export const sgdOptimizer: StageDef<z.output<typeof SgdParams>> = {
  kind: "user.sgd",
  doc: "SGD with heavy-ball momentum",
  role: "optimizer",
  params: SgdParams,
  inputs: ["loss"],
  models: (p) => p.models,
  optimizer: sgdRule,
  types: ({ inputs }) => {
    expectPort(inputs, "loss", { dtype: "f32", shape: [] });
    return {};
  },
};

registerBuiltins();
registerStage(fourierFeatures);
registerStage(sgdOptimizer);
registerDataset(triangleWave);

if (import.meta.main) Deno.exit(await runCli(Deno.args));
