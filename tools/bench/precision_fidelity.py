"""What a precision costs: the same txt2img (model, prompt, seed) through sdrt with two provider/precision
settings, compared on final latents and 8-bit pixels.

    tools/fixtures/.venv/bin/python tools/bench/precision_fidelity.py \
        --model tests/fixtures/models/sd15-tiny --width 64 --height 64 --steps 4 \
        --reference "--provider openvino --precision fp32" --candidate "--provider openvino --precision bf16"

Prints max |Δ| ÷ std and relative L2 of the latents, and the share of pixel values that differ and by how much.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate(sdrt: str, args, extra: str, outdir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    argv = [sdrt, "txt2img", "--model", str(args.model), "--prompt", args.prompt, "--seed", str(args.seed),
            "--steps", str(args.steps), "--width", str(args.width), "--height", str(args.height),
            "--sampler", "Euler", "--threads", str(args.threads), "--save-latents", "--outdir", str(outdir),
            "--json", *shlex.split(extra)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    png = next(outdir.glob("*.png"))
    return np.load(png.with_suffix(".npy")), np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars, highly detailed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reference", default="--provider openvino --precision fp32")
    ap.add_argument("--candidate", default="--provider openvino --precision bf16")
    ap.add_argument("--sdrt", default=str(ROOT / "target" / "release" / "sdrt"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        lat_a, px_a = generate(args.sdrt, args, args.reference, tmp / "a")
        lat_b, px_b = generate(args.sdrt, args, args.candidate, tmp / "b")
    diff = np.abs(lat_a - lat_b)
    pixels = np.abs(px_a - px_b)
    report = {
        "model": str(args.model), "reference": args.reference, "candidate": args.candidate, "seed": args.seed,
        "steps": args.steps, "size": [args.width, args.height],
        "latent_max_abs_over_std": float(diff.max() / lat_a.std()),
        "latent_relative_l2": float(np.linalg.norm(lat_a - lat_b) / np.linalg.norm(lat_a)),
        "pixel_max_levels": int(pixels.max()),
        "pixel_mean_levels": float(pixels.mean()),
        "pixel_values_differing": float((pixels > 0).mean()),
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
