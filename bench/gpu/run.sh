#!/usr/bin/env bash
# The device half of the GPU benchmark (bench/gpu/README.md): run from the repository root of the copy on a lent GPU
# machine, once per part that bench/gpu/pack.ts made, each call carrying `.gpu/part-K` and `.gpu/parts.json`. Each
# call keeps its part in .gpu/recv/ (ignored files stay between the calls on a warm machine); the call that completes
# the set checks it, unpacks Deno, node_modules and the Vulkan loader, and runs bench/gpu/main.ts with any flags given
# here. Results go to $OUT (the device tool's folder that comes back) or out/gpu.
set -euo pipefail
cd "$(dirname "$0")/../.."
G=.gpu
out="${OUT:-out/gpu}"
[ -f "$G/parts.json" ] || { echo "bench/gpu/run.sh: $G/parts.json missing: carry it (deno run -A bench/gpu/pack.ts makes it)" >&2; exit 1; }
if [ -e node_modules ] && [ ! -e node_modules/.gpu-bundle ]; then
  echo "bench/gpu/run.sh: node_modules/ here is not the bundle's and would be replaced: run this in a scratch copy or on the device" >&2
  exit 1
fi
mkdir -p "$G/recv"
for p in "$G"/part-*; do [ -f "$p" ] && cp -f "$p" "$G/recv/"; done
want=$(grep -o '"part-[0-9]*"' "$G/parts.json" | tr -d '"' | sort)
have=$(ls "$G/recv" | sort)
missing=$(comm -23 <(echo "$want") <(echo "$have"))
if [ -n "$missing" ]; then
  echo "bench/gpu/run.sh: have $(echo "$have" | grep -c . || true) part(s); still to carry: $(echo $missing)"
  exit 0
fi

if [ ! -x "$G/root/bin/deno" ]; then
  sha=$(grep -o '"sha256": *"[0-9a-f]*"' "$G/parts.json" | grep -o '[0-9a-f]\{64\}')
  got=$(cat $(for p in $want; do echo "$G/recv/$p"; done) | sha256sum | cut -d' ' -f1)
  [ "$sha" = "$got" ] || { echo "bench/gpu/run.sh: the parts do not make the bundle (sha256 $got, want $sha)" >&2; exit 1; }
  rm -rf "$G/root" && mkdir -p "$G/root"
  cat $(for p in $want; do echo "$G/recv/$p"; done) | xz -dc | tar -C "$G/root" -x
fi
rm -rf node_modules && cp -a "$G/root/node_modules" node_modules

# The Vulkan loader, where the machine has none, and NVIDIA's driver manifest where the driver mount has one.
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in "$G"/root/vulkan/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"

# Deno's own-node_modules mode: bare imports resolve in node_modules/ through package.json, nothing is fetched.
deps=$(ls node_modules | grep -v '^\.' | while read -r d; do
  if [[ $d == @* ]]; then for s in node_modules/$d/*; do echo "\"$d/$(basename "$s")\": \"*\""; done; else echo "\"$d\": \"*\""; fi
done | paste -sd, -)
echo "{ \"name\": \"add-gpu-bench\", \"private\": true, \"dependencies\": { $deps } }" > package.json
echo '{ "nodeModulesDir": "manual", "compilerOptions": { "strict": true } }' > deno.gpu.json
export DENO_DIR="$PWD/$G/deno_dir" ADD_GPU_DENO_ARGS="--no-lock --config deno.gpu.json --cached-only"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
mkdir -p "$out"
exec "$G/root/bin/deno" run -A $ADD_GPU_DENO_ARGS bench/gpu/main.ts --out "$out" "$@"
