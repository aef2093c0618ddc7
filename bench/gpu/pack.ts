/**
 * Packs what bench/gpu/main.ts needs on a bare GPU machine that reaches no registry: the Deno binary, the npm packages
 * the `webgpu` runs import (pruned to the files they read, laid out flat for Deno's own-node_modules mode), and the
 * Vulkan loader's Debian package. One `tar.xz`, split into parts that each fit one device call beside the tracked
 * files (the device tool sends at most 64 MiB a call, the repository's tracked files included), in `.gpu/`:
 *
 *   deno run -A bench/gpu/pack.ts        (after `deno install --frozen`; writes .gpu/part-1 … and .gpu/parts.json)
 *
 * then one device call per part, each `bash bench/gpu/run.sh` carrying that part and `.gpu/parts.json`; the call that
 * completes the set unpacks it and runs the benchmark (bench/gpu/README.md).
 *
 * @module
 */
import { partSize, prune, walkDeps } from "./pack_plan.ts";

const root = new URL("../../", import.meta.url).pathname;
const GPU = `${root}.gpu`;
const MIB = 1 << 20;

async function sh(cmd: string, cwd = root): Promise<string> {
  const r = await new Deno.Command("bash", { args: ["-c", cmd], cwd, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) throw new Error(`bench/gpu/pack: \`${cmd}\` failed: ${new TextDecoder().decode(r.stderr).trim()}`);
  return new TextDecoder().decode(r.stdout);
}

try {
  await Deno.stat(`${root}node_modules/.deno`);
} catch {
  console.error("bench/gpu/pack: node_modules/.deno not found: run `deno install --frozen` first");
  Deno.exit(1);
}
await Deno.remove(GPU, { recursive: true }).catch(() => {});
const stage = `${GPU}/stage`;
await Deno.mkdir(`${stage}/bin`, { recursive: true });
await Deno.mkdir(`${stage}/vulkan`, { recursive: true });

const packages = walkDeps(`${root}node_modules`);
let files = 0, bytes = 0;
for (const [name, dir] of packages) {
  for (const rel of prune(name, dir)) {
    const to = `${stage}/node_modules/${name}/${rel}`;
    await Deno.mkdir(to.slice(0, to.lastIndexOf("/")), { recursive: true });
    await Deno.copyFile(`${dir}/${rel}`, to);
    files++;
    bytes += (await Deno.stat(to)).size;
  }
}
await Deno.writeTextFile(`${stage}/node_modules/.gpu-bundle`, "unpacked by bench/gpu/run.sh\n");
console.log(`node_modules: ${packages.size} packages, ${files} files, ${(bytes / MIB).toFixed(1)} MiB`);
await Deno.copyFile(Deno.execPath(), `${stage}/bin/deno`);
await Deno.chmod(`${stage}/bin/deno`, 0o755);
await sh("apt-get download libvulkan1", `${stage}/vulkan`);

const tracked = Number(await sh("git ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s}'"));
console.log(`compressing (xz -9, a few minutes)…`);
await sh(`tar -C ${stage} -cf - . | xz -T0 -9 > ${GPU}/bundle.tar.xz`);
await Deno.remove(stage, { recursive: true });
const size = (await Deno.stat(`${GPU}/bundle.tar.xz`)).size;
const part = partSize(tracked);
await sh(`split -b ${part} -d -a 1 --numeric-suffixes=1 bundle.tar.xz part-`, GPU);
const sha256 = (await sh(`sha256sum ${GPU}/bundle.tar.xz`)).split(" ")[0];
await Deno.remove(`${GPU}/bundle.tar.xz`);
const parts = [...Deno.readDirSync(GPU)].map((e) => e.name).filter((n) => n.startsWith("part-")).sort();
await Deno.writeTextFile(`${GPU}/parts.json`, JSON.stringify({ parts, sha256, bytes: size, tracked }, null, 2) + "\n");
console.log(
  `.gpu/: ${parts.length} part(s) of at most ${(part / MIB).toFixed(1)} MiB (bundle ${(size / MIB).toFixed(1)} MiB; ` +
    `tracked files ${(tracked / MIB).toFixed(1)} MiB travel with each call): ${parts.join(", ")}`,
);
