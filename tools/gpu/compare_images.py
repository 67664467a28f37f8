"""Pixel differences between the PNGs of two sdrt output folders, matched by sorted name. Prints JSON.

    python3 tools/gpu/compare_images.py CPU_DIR CUDA_DIR
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from PIL import Image


def main() -> None:
    left, right = (sorted(pathlib.Path(d).glob("*.png")) for d in sys.argv[1:3])
    rows = []
    for a, b in zip(left, right):
        x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
        diff = np.abs(x - y)
        rows.append({"image": a.name, "max_levels": int(diff.max()), "mean_levels": round(float(diff.mean()), 3)})
    print(json.dumps({"pairs": len(rows), "images": rows}))


if __name__ == "__main__":
    main()
