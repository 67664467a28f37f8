#!/usr/bin/env python3
"""What switching the active LoRA set costs, against a cold load, on the SD1.5-shaped checkpoint.

    tools/fixtures/.venv/bin/python tools/bench/lora_switch.py [--rounds 3] [--rank 32]

Writes a random rank-32 kohya LoRA for every UNet attention/feed-forward/projection layer and every
text-encoder projection of ~/.cache/sdrt/sd15-shaped.safetensors (gen_sd15_shaped.py --checkpoints-only makes
the checkpoint), starts `sdrt serve` on the checkpoint with that LoRA folder, and times txt2img requests that
differ only in the LoRA set (64x64, one Euler step, so the request itself is cheap):

  cold        the first request: the model loads from the checkpoint
  same        a request with the same set as the one before (nothing to rebuild)
  merge       a request naming the LoRA after one without: text encoder and UNet rebuilt with ΔW
  unmerge     a request without it after one with: rebuilt from the checkpoint alone

Switch cost = merge (or unmerge) − same. Needs a release build (`cargo build --release -p sdrt-cli`) and the
fixture venv (numpy, safetensors).
"""

import argparse
import datetime
import json
import pathlib
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHECKPOINT = pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped.safetensors"
UNET_PARTS = ("attn1.to_", "attn2.to_", "ff.net.", "proj_in", "proj_out")
TEXT_PARTS = ("_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


def make_lora(checkpoint: pathlib.Path, out: pathlib.Path, rank: int) -> int:
    """A kohya LoRA (compvis names) for `checkpoint`; returns its parameter count."""
    rng = np.random.default_rng(32)
    tensors = {}
    with safe_open(str(checkpoint), "np") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            unet = key.startswith("model.diffusion_model.") and any(p in key for p in UNET_PARTS)
            text = key.startswith("cond_stage_model.transformer.") and key.endswith(TEXT_PARTS)
            if not (unet or text) or not key.endswith(".weight") or len(shape) not in (2, 4):
                continue
            if len(shape) == 4 and shape[2:] != [1, 1]:
                continue
            prefix = "lora_unet_" + key[len("model.diffusion_model."):] if unet else \
                "lora_te_" + key[len("cond_stage_model.transformer."):]
            name = prefix[: -len(".weight")].replace(".", "_")
            tail = [1, 1] if len(shape) == 4 else []
            tensors[f"{name}.lora_down.weight"] = (rng.standard_normal([rank, shape[1], *tail]) * 0.01).astype(np.float16)
            tensors[f"{name}.lora_up.weight"] = (rng.standard_normal([shape[0], rank, *tail]) * 0.01).astype(np.float16)
            tensors[f"{name}.alpha"] = np.array(rank / 2, dtype=np.float16)
    save_file(tensors, str(out))
    return sum(t.size for t in tensors.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, prompt: str) -> float:
    body = json.dumps({"prompt": prompt, "seed": 1, "steps": 1, "width": 64, "height": 64,
                       "sampler_name": "Euler"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", body,
                                     {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as answer:
        answer.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-cache", type=int, default=1, help="sdrt serve --lora-cache")
    args = parser.parse_args()
    sdrt = ROOT / "target" / "release" / "sdrt"
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        parameters = make_lora(CHECKPOINT, folder / "bench-lora.safetensors", args.rank)
        port = free_port()
        server = subprocess.Popen([str(sdrt), "serve", "--model", str(CHECKPOINT), "--lora-dir", str(folder),
                                   "--listen", f"127.0.0.1:{port}", "--threads", str(args.threads),
                                   "--lora-cache", str(args.lora_cache)],
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/samplers", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.5)
            plain, lora = "a fox", "a fox <lora:bench-lora:0.8>"
            times = {"cold": [post(port, plain)], "same": [], "merge": [], "unmerge": []}
            for _ in range(args.rounds):
                times["same"].append(post(port, plain))
                times["merge"].append(post(port, lora))
                times["same"].append(post(port, lora))
                times["unmerge"].append(post(port, plain))
            rss = int(next(line.split()[1] for line in open(f"/proc/{server.pid}/status")
                           if line.startswith("VmHWM")))
        finally:
            server.terminate()
            server.wait()
    medians = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(CHECKPOINT), "lora_rank": args.rank, "lora_parameters": parameters,
        "threads": args.threads, "rounds": args.rounds, "lora_cache": args.lora_cache, "seconds": times, "medians": medians,
        "switch_on": medians["merge"] - medians["same"], "switch_off": medians["unmerge"] - medians["same"],
        "cold_load": medians["cold"] - medians["same"], "server_peak_rss_mib": rss / 1024,
    }
    out = HERE / "results" / f"lora-switch-cache{args.lora_cache}-{report['date'][:10]}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("medians", "switch_on", "switch_off", "cold_load",
                                               "server_peak_rss_mib")}, indent=1))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
