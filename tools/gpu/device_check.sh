#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, after every .gpu/pNN part has been carried there (README):
# reassembles and checks the bundle, then measures and tests sdrt's CUDA path next to diffusers on the same card.
# Everything it reports lands in $OUT (doctor.txt, pixels.json, bench-*.json, torch.json, log).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/sdrt-gpu
exec > >(tee "$OUT/log") 2>&1
step() { echo "== $(date +%T) $*"; }

root=$(pwd)
step reassemble
cat .gpu/p*/chunk > /tmp/bundle.tar.zst
(cd /tmp && sha256sum -c --quiet "$root/.gpu/p00/bundle.sha256") || exit 1
zstd -q -d -c /tmp/bundle.tar.zst | tar -x -C /tmp/sdrt-gpu && (cd /tmp/sdrt-gpu && sha256sum -c --quiet SHA256SUMS) || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export SDRT_ORT_GPU_DIR=/tmp/sdrt-gpu/ort RUST_LOG=warn
sdrt=/tmp/sdrt-gpu/sdrt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step doctor
$sdrt doctor | tee "$OUT/doctor.txt"

step "pixels: the tiny checkpoint on CPU fp32, CUDA fp32, CUDA fp16 (same seeds)"
tiny=tests/fixtures/checkpoints/sd15-tiny.safetensors
for run in "cpu cpu fp32" "cuda32 cuda fp32" "cuda16 cuda fp16"; do
    set -- $run
    timeout 120 $sdrt txt2img --model $tiny --prompt "a red circle" --seed 1 --n-iter 3 --steps 20 --width 64 \
        --height 64 --sampler Euler --provider "$2" --precision "$3" --outdir "/tmp/px-$1" --save-latents >/dev/null
done
python3 tools/gpu/compare_images.py /tmp/px-cpu /tmp/px-cuda32 > "$OUT/pixels-fp32.json"
python3 tools/gpu/compare_images.py /tmp/px-cpu /tmp/px-cuda16 > "$OUT/pixels-fp16.json"
cat "$OUT"/pixels-*.json

step "SD1.5-shaped checkpoint drawn from the manifest"
python3 tools/gpu/device_weights.py /tmp/sd15-shaped.safetensors

step "sdrt bench: 512², 20 steps, Euler, batch 1, CUDA fp16 (then fp32)"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/gpu-mem.csv &
watcher=$!
for precision in fp16 fp32; do
    timeout 240 $sdrt bench --model /tmp/sd15-shaped.safetensors --provider cuda --precision $precision --steps 20 \
        --sampler Euler --width 512 --height 512 --runs 2 --warmup 1 --json-out "$OUT/bench-$precision.json"
done
kill $watcher
echo "peak GPU memory while sdrt ran (MiB, nvidia-smi): $(sort -n /tmp/gpu-mem.csv | tail -1)" | tee -a "$OUT/log"

step "diffusers fp16 SDPA on the same weights"
timeout 240 python3 tools/gpu/torch_baseline.py /tmp/sd15-shaped.safetensors | tee "$OUT/torch.json"
step done
