"""Writes sd15-shaped.json: every tensor of the SD1.5-shaped checkpoint (key, shape, mean, std), so that the GPU
machine, which cannot receive the 4 GB file, can draw a checkpoint of the same shapes and weight scales there
(`device_weights.py`). Run here after tools/fixtures/gen_sd15_shaped.py --default:

    tools/fixtures/.venv/bin/python tools/gpu/make_manifest.py ~/.cache/sdrt/sd15-shaped.safetensors
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from safetensors import safe_open

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    source = pathlib.Path(sys.argv[1]).expanduser()
    tensors = {}
    with safe_open(str(source), framework="np") as f:
        for key in sorted(f.keys()):
            value = f.get_tensor(key).astype(np.float64)
            tensors[key] = {"shape": list(value.shape), "mean": round(float(value.mean()), 7),
                            "std": round(float(value.std()), 7)}
    out = HERE / "sd15-shaped.json"
    lines = [f"  {json.dumps(key)}: {json.dumps(entry, separators=(',', ':'))}" for key, entry in tensors.items()]
    out.write_text(f'{{"source": {json.dumps(source.name)}, "tensors": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"{out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
