#!/usr/bin/env bash
# Trains the bundled demo model (tools/demo/train_demo.py) in the pinned fixture venv, deterministically.
#   tools/demo/train.sh [--scale 0.02 --out /tmp/demo-smoke] ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../fixtures/.venv"
[ -x "$venv/bin/python" ] || "$here/../fixtures/regen.sh" no-generator-matches-this
export ATEN_CPU_CAPABILITY=avx2 PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=2
exec "$venv/bin/python" "$here/train_demo.py" "$@"
