"""Draws an SD1.5-shaped checkpoint on the GPU machine from sd15-shaped.json (each tensor normal with the
manifest's mean and std, fp16, seeded), since the 4 GB original cannot travel there. Speed does not depend on the
values; the scales keep activations in range as in the original.

    python3 tools/gpu/device_weights.py OUT.safetensors
"""
from __future__ import annotations

import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    manifest = json.loads((HERE / "sd15-shaped.json").read_text())["tensors"]
    generator = torch.Generator().manual_seed(1234)
    state = {}
    for key, entry in manifest.items():
        value = torch.randn(entry["shape"], generator=generator) * entry["std"] + entry["mean"]
        state[key] = value.to(torch.float16).contiguous()
    save_file(state, sys.argv[1])
    print(f"{sys.argv[1]}: {len(state)} tensors")


if __name__ == "__main__":
    main()
