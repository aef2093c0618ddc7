/**
 * What bench/gpu/pack.ts carries, as pure functions over the installed node_modules: which packages the `webgpu` runs
 * import (and all their dependencies), and which of each package's files they read.
 *
 * @module
 */

/** The packages that bench/gpu/main.ts's child runs import; their dependencies come with them. */
export const ROOTS = [
  "onnxruntime-web",
  "@huggingface/transformers",
  "yaml",
  "commander",
  "zod",
  "fast-png",
  "@resvg/resvg-wasm",
  "nsfwjs",
  "emoji-datasource-google",
];

/**
 * Files kept of the packages that are large, as path prefixes inside the package (a package not listed keeps all but
 * `DROP`). The WebGPU build of onnxruntime-web and the wasm it loads (the asyncify one); transformers.js's Node build (it loads onnxruntime-node and
 * sharp for the text encoder, on the CPU); onnxruntime-node's Linux x64 CPU binaries; nsfwjs's MobileNetV2 (the
 * discriminator's feature network) and no tfjs; the Noto sheet at the default run's 32 px.
 */
export const KEEP: Record<string, string[]> = {
  "onnxruntime-web": [
    "package.json",
    "dist/ort.webgpu.bundle.min.mjs",
    "dist/ort.node.min.mjs",
    "dist/ort-wasm-simd-threaded.asyncify.mjs",
    "dist/ort-wasm-simd-threaded.asyncify.wasm",
  ],
  "@huggingface/transformers": ["package.json", "dist/transformers.node.mjs"],
  "onnxruntime-node": [
    "package.json",
    "dist/",
    "lib/",
    "bin/napi-v6/linux/x64/onnxruntime_binding.node",
    "bin/napi-v6/linux/x64/libonnxruntime.so.1",
  ],
  "nsfwjs": ["package.json", "dist/esm/models/mobilenet_v2.js", "dist/models/mobilenet_v2/"],
  "emoji-datasource-google": ["package.json", "emoji.json", "img/google/sheets-clean/32.png"],
};

/** Packages never carried: other platforms' builds, and tfjs, which nsfwjs depends on and the runs never load. */
export const SKIP = /^(@img\/sharp-(libvips-)?linuxmusl-x64|@tensorflow\/.*|@types\/.*|@webgpu\/types)$/;

/** Files no run reads: source maps, type declarations, docs. */
export const DROP = /(\.map|\.d\.ts|\.d\.mts|\.d\.cts|\.md|LICENSE\.txt)$/;

/** Bytes a device call may carry beside the tracked files (64 MiB less a MiB of slack for the call's own files). */
export function partSize(trackedBytes: number, limit = 64 * 2 ** 20, slack = 2 ** 20): number {
  const room = limit - trackedBytes - slack;
  if (room < 4 * 2 ** 20) {
    throw new Error(`bench/gpu/pack: the tracked files (${trackedBytes} bytes) leave under 4 MiB of a device call`);
  }
  return room;
}

/**
 * Every package reachable from `roots` in a Deno-managed node_modules (`<nm>/<name>` links to
 * `<nm>/.deno/<name@version>/node_modules/<name>`, whose siblings are its dependencies): name → real folder.
 */
export function walkDeps(nm: string, roots = ROOTS): Map<string, string> {
  const found = new Map<string, string>();
  const visit = (name: string, link: string) => {
    if (found.has(name) || SKIP.test(name)) return;
    let dir: string;
    try {
      dir = Deno.realPathSync(link);
    } catch {
      return; // an optional dependency that is not installed for this platform
    }
    found.set(name, dir);
    const siblings = dir.slice(0, dir.length - name.length - 1);
    for (const dep of listPackages(siblings)) if (dep !== name) visit(dep, `${siblings}/${dep}`);
  };
  for (const r of roots) visit(r, `${nm}/${r}`);
  return found;
}

/** Package names in a node_modules folder, scoped ones as `@scope/name`. */
function listPackages(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".")) continue;
    if (e.name.startsWith("@")) {
      for (const s of Deno.readDirSync(`${dir}/${e.name}`)) out.push(`${e.name}/${s.name}`);
    } else out.push(e.name);
  }
  return out;
}

/** The files of package `name` (in `dir`) to carry, as paths relative to `dir`. */
export function prune(name: string, dir: string, keep = KEEP): string[] {
  const prefixes = keep[name];
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(rel ? `${dir}/${rel}` : dir)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        if (e.name !== "node_modules") walk(path);
      } else if (!DROP.test(path) && (!prefixes || prefixes.some((p) => path === p || path.startsWith(p)))) {
        out.push(path);
      }
    }
  };
  walk("");
  return out.sort();
}
