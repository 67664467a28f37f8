#!/usr/bin/env bash
# Packs what the GPU machine needs and cannot fetch (the release sdrt binary and the onnxruntime-gpu libraries,
# ~320 MB unpacked) into zstd-compressed parts under .gpu/pNN/ that fit one device call each (the working tree
# travels too; 64 MiB in all), plus the diffusers wheel for the PyTorch baseline under .whl/.
# See tools/gpu/README.md for the calls that carry them and the one command that runs everything there.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
part_mb=${PART_MB:-26}
cargo build --release -p sdrt-cli
cargo xtask provision-ort --gpu
gpu_dir=${SDRT_ORT_GPU_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sdrt/onnxruntime-gpu-1.31.1}
rm -rf .gpu && mkdir -p .gpu/stage/ort
cp target/release/sdrt .gpu/stage/sdrt && strip .gpu/stage/sdrt
for lib in libonnxruntime.so.1.31.1 libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    cp "$gpu_dir/$lib" .gpu/stage/ort/
done
(cd .gpu/stage && sha256sum sdrt ort/* > SHA256SUMS)
tar -C .gpu/stage -cf - . | zstd -q "-${ZSTD_LEVEL:-19}" -T0 > .gpu/bundle.tar.zst
(cd .gpu && sha256sum bundle.tar.zst > bundle.sha256 && split -b "${part_mb}M" -d -a 2 bundle.tar.zst chunk-)
for chunk in .gpu/chunk-*; do
    n=${chunk##*-}
    mkdir -p ".gpu/p$n" && mv "$chunk" ".gpu/p$n/chunk" && cp .gpu/bundle.sha256 ".gpu/p$n/"
done
rm -rf .gpu/stage .gpu/bundle.tar.zst .gpu/bundle.sha256
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
tree_mb=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "parts: $(ls -d .gpu/p* | tr '\n' ' ')(each ${part_mb} MB; tracked tree $((tree_mb / 1000000)) MB; limit 67 MB a call)"
