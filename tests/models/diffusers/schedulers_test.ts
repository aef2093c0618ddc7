// diffusers scheduler configs as the project's schedule, against what the real DDPM/DDIM/Euler schedulers of
// diffusers v0.31.0 computed (tests/fixtures/diffusers/schedulers.json, made by make_fixtures.py): ᾱ, the
// timesteps and Euler sigmas of set_timesteps(N), and whole deterministic sampling loops of step() run by the
// project's own samplers on the same stand-in model.
import {
  DiffusersConfigError,
  eulerSigmas,
  readSchedulerConfig,
  scheduleFromDiffusers,
} from "../../../models/diffusers/scheduler_config.ts";
import { type Denoiser, sampleDdim, sampleEuler } from "../../../models/diffusion/samplers.ts";

const FIXTURES = new URL("../../fixtures/diffusers/", import.meta.url);

interface Case {
  name: string;
  config: Record<string, unknown>;
  alphas_cumprod: number[];
  final_alpha_cumprod?: number;
  timesteps: Record<string, number[]>;
  sigmas: Record<string, number[]>;
}
interface Loop {
  case: string;
  steps: number;
  config: Record<string, unknown>;
  x_init: number[];
  init_noise_sigma: number;
  out: number[];
}
const fixture = JSON.parse(await Deno.readTextFile(new URL("schedulers.json", FIXTURES))) as {
  cases: Case[];
  loops: Loop[];
};

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>, floor: number): number {
  if (a.length !== b.length) throw new Error(`lengths ${a.length} and ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), floor));
  return m;
}

Deno.test("diffusers schedulers: ᾱ equals diffusers' float32 table to float32 accumulation", () => {
  for (const c of fixture.cases) {
    const s = scheduleFromDiffusers(c.config, c.name);
    const ours = Array.from(s.alphasCumprod), ref = [...c.alphas_cumprod];
    const ztsnrEuler = c.config._class_name === "EulerDiscreteScheduler" && c.config.rescale_betas_zero_snr;
    if (ztsnrEuler) {
      // diffusers' Euler stores 2^-24 for the exact 0 of a zero-terminal-SNR schedule (see eulerSigmas).
      if (ref[ref.length - 1] !== 2 ** -24 || ours[ours.length - 1] !== 0) throw new Error(`${c.name}: last ᾱ`);
      ours.pop(), ref.pop();
    }
    // A float32 cumulative product over T factors drifts by up to ~T ulps; relative 1e-4 leaves room for that.
    const err = maxRel(ours, ref, 1e-30);
    if (!(err < 1e-4)) throw new Error(`${c.name}: ᾱ differs by ${err.toExponential(2)} relative`);
    if (c.final_alpha_cumprod !== undefined && Math.abs(s.finalAlphaCumprod - c.final_alpha_cumprod) > 1e-6) {
      throw new Error(`${c.name}: final ᾱ ${s.finalAlphaCumprod}, diffusers ${c.final_alpha_cumprod}`);
    }
  }
});

Deno.test("diffusers schedulers: set_timesteps(N) and Euler sigmas as diffusers picks them", () => {
  for (const c of fixture.cases) {
    const s = scheduleFromDiffusers(c.config, c.name);
    for (const [n, ref] of Object.entries(c.timesteps)) {
      const ours = Array.from(s.timesteps(Number(n)));
      if (ours.join() !== ref.join()) throw new Error(`${c.name} N=${n}: [${ours}] vs diffusers [${ref}]`);
    }
    for (const [n, ref] of Object.entries(c.sigmas)) {
      const err = maxRel(eulerSigmas(s, Number(n)), ref, 1e-6);
      if (!(err < 2e-5)) throw new Error(`${c.name} N=${n}: sigmas differ by ${err.toExponential(2)}`);
    }
  }
});

Deno.test("diffusers schedulers: prediction and spacing come from the config", () => {
  const want: Record<string, string> = {
    ddpm_linear: "eps/leading",
    ddpm_cosine_v_trailing: "v/trailing",
    ddpm_trained_betas_linspace: "x0/linspace",
    ddim_sd: "eps/leading",
    euler_sd: "eps/linspace",
    euler_trailing_v: "v/trailing",
  };
  for (const c of fixture.cases.filter((c) => c.name in want)) {
    const s = scheduleFromDiffusers(c.config, c.name);
    if (`${s.prediction}/${s.spacing}` !== want[c.name]) throw new Error(`${c.name}: ${s.prediction}/${s.spacing}`);
  }
});

// The stand-in model of make_fixtures.py's fake_model, in float32 as torch evaluates it.
function fakeDenoiser(prediction: Denoiser["prediction"]): Denoiser {
  return {
    prediction,
    predict: (x, t) =>
      Promise.resolve(x.map((v) => Math.fround(Math.tanh(v) * (0.5 + t / 2000) + 0.1 * Math.cos(v * 3)))),
  };
}

Deno.test("diffusers schedulers: the project's DDIM and Euler samplers reproduce diffusers' step() loops", async () => {
  for (const l of fixture.loops) {
    const s = scheduleFromDiffusers({ ...fixture.cases.find((c) => c.name === l.case)!.config, ...l.config });
    // diffusers starts from x̃ = init_noise_sigma · noise in σ̃-space (Euler) or x = noise (DDIM); the samplers here
    // take the start in the variance-preserving scale, x = α x̃ with α = 1/√(1 + σ̃²) at the first level.
    const s0 = s.className === "EulerDiscreteScheduler" ? eulerSigmas(s, l.steps)[0] : 0;
    const d = fakeDenoiser(s.prediction),
      xT = Float32Array.from(l.x_init, (v) => v * l.init_noise_sigma / Math.hypot(1, s0));
    const out = s.className === "DDIMScheduler"
      ? await sampleDdim(d, xT, s, { timesteps: s.timesteps(l.steps), clip: s.clipSample ?? undefined })
      : await sampleEuler(d, xT, s, { steps: l.steps, sigmas: s.spacing, offset: s.stepsOffset });
    const err = maxRel(out, l.out, 1e-2);
    if (!(err < 1e-4)) throw new Error(`${l.case} (${l.steps} steps): [${out}] vs diffusers [${l.out}]`);
  }
});

Deno.test("diffusers schedulers: reads scheduler_config.json from a folder", async () => {
  const s = await readSchedulerConfig(new URL("scheduler", FIXTURES).pathname);
  const sd = fixture.cases.find((c) => c.name === "ddim_sd")!;
  if (maxRel(s.alphasCumprod, sd.alphas_cumprod, 1e-30) > 1e-4 || s.finalAlphaCumprod !== s.alphasCumprod[0]) {
    throw new Error("scheduler folder: not Stable Diffusion's DDIM schedule");
  }
  if (Array.from(s.timesteps(4)).join() !== sd.timesteps["4"].join()) throw new Error("scheduler folder: timesteps");
});

Deno.test("diffusers schedulers: an unsupported value is one line naming the key and the value", () => {
  const base = fixture.cases.find((c) => c.name === "ddim_sd")!.config;
  const cases: [Record<string, unknown>, string][] = [
    [{ ...base, beta_schedule: "foo" }, `beta_schedule "foo" is not supported`],
    [{ ...base, prediction_type: "flow" }, `prediction_type "flow" is not supported`],
    [{ ...base, timestep_spacing: "karras" }, `timestep_spacing "karras" is not supported`],
    [{ ...base, thresholding: true }, `thresholding true is not supported`],
    [{ ...base, _class_name: "LCMScheduler" }, `_class_name "LCMScheduler" is not supported`],
    [{ ...base, shift: 3 }, `shift: unknown key for DDIMScheduler (value 3)`],
    [
      { ...fixture.cases.find((c) => c.name === "euler_sd")!.config, use_karras_sigmas: true },
      `use_karras_sigmas true is not supported`,
    ],
    [{ ...base, trained_betas: [0.1, 0.2] }, `trained_betas has 2 values but num_train_timesteps is 1000`],
  ];
  for (const [cfg, want] of cases) {
    let msg = "";
    try {
      scheduleFromDiffusers(cfg, "my/scheduler_config.json");
    } catch (e) {
      if (!(e instanceof DiffusersConfigError)) throw e;
      msg = e.message;
    }
    if (!msg.startsWith("my/scheduler_config.json: ") || !msg.includes(want) || msg.includes("\n")) {
      throw new Error(`expected one line with "${want}", got "${msg}"`);
    }
  }
});
