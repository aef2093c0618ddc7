/**
 * PyTorch CPU peers for the benchmarks: a Python script (Debian's python3-torch) run under each BLAS set-up present,
 * the fastest taken as the peer. Which BLAS the system picks depends on what apt installed (netlib's reference libblas3
 * on a fresh machine, OpenBLAS where it is installed), and a multi-threaded OpenBLAS under torch's own threads
 * oversubscribes the cores, so every available set-up is measured.
 *
 * @module
 */

/** One BLAS set-up: a library folder that must exist (none: as installed) and the environment that selects it. */
export interface BlasSetup {
  name: string;
  dir?: string;
  env: Record<string, string>;
}

/**
 * The Python that holds torch: Debian's by default, `ADD_TORCH_PYTHON` elsewhere (bench/gpu/ on a GPU machine, whose
 * `python3` is its own). `ADD_TORCH_DEVICE` (read by the peer scripts; `cpu` by default) names torch's device.
 */
const PYTHON = Deno.env.get("ADD_TORCH_PYTHON") ?? "/usr/bin/python3";
const DEVICE = Deno.env.get("ADD_TORCH_DEVICE") ?? "cpu";

/** The set-ups tried, in order. */
export const BLAS_SETUPS: BlasSetup[] = [
  { name: "as installed", env: {} },
  {
    name: "reference BLAS",
    dir: "/usr/lib/x86_64-linux-gnu/blas",
    env: { LD_LIBRARY_PATH: "/usr/lib/x86_64-linux-gnu/blas" },
  },
  {
    name: "OpenBLAS, 1 thread per torch thread",
    dir: "/usr/lib/x86_64-linux-gnu/openblas-pthread",
    env: { LD_LIBRARY_PATH: "/usr/lib/x86_64-linux-gnu/openblas-pthread", OPENBLAS_NUM_THREADS: "1" },
  },
];

/** A peer's report: the last stdout line of the script, parsed as JSON (it has at least `ms`). */
export type PeerReport = { ms: number } & Record<string, unknown>;

/** Runs `script` with `args` under `env`; null when python3, torch or the script fails (its stderr is printed). */
export async function runPeer(script: string, args: string[], env: Record<string, string>): Promise<PeerReport | null> {
  try {
    const out = await new Deno.Command(PYTHON, {
      args: [script, ...args],
      env: { ...Deno.env.toObject(), ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").pop();
      if (!/No module named 'torch'/.test(err ?? "")) console.log(`  peer failed: ${err}`);
      return null;
    }
    return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
  } catch {
    return null;
  }
}

/**
 * The fastest report over the BLAS set-ups present, printing each as `label (set-up): ms`; null when none ran. On a
 * device other than the CPU the BLAS does not matter, so torch runs once, as installed.
 */
export async function fastestPeer(label: string, script: string, args: string[]): Promise<PeerReport | null> {
  let best: PeerReport | null = null;
  for (const setup of DEVICE === "cpu" ? BLAS_SETUPS : BLAS_SETUPS.slice(0, 1)) {
    if (setup.dir) {
      try {
        await Deno.stat(setup.dir);
      } catch {
        continue;
      }
    }
    const r = await runPeer(script, args, setup.env);
    if (r === null) continue;
    console.log(`${label} (${PYTHON} torch ${r.torch} on ${DEVICE}, ${setup.name}): ${r.ms.toFixed(2)} ms/step`);
    if (best === null || r.ms < best.ms) best = r;
  }
  return best;
}
