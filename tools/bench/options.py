#!/usr/bin/env python3
"""Before/after for sdrt's optimisations: `sdrt bench` once per variant (each variant switches one
optimisation off, or picks another session setting), interleaved over rounds, medians and ratios against the
default configuration.

    tools/fixtures/.venv/bin/python tools/bench/options.py --workload tiny
    tools/fixtures/.venv/bin/python tools/bench/options.py --workload sd15 --variants default,no-bound-io

Only the standard library and `sdrt` are needed (any python3 runs it). Every variant runs in a fresh process,
so `load` is a load from the page cache and `peak RSS` covers load, warm-up and runs.
"""

import argparse
import datetime
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# 82 CLIP tokens (the e2e fixture's sd15_long_prompt): two 75-token chunks against a one-chunk negative.
LONG_PROMPT = (
    "a highly detailed portrait of an old fisherman with a grey beard and a knitted wool hat standing on a "
    "wooden pier at sunrise, soft golden light, gentle waves, seagulls in the distance, fishing nets and ropes "
    "piled beside him, weathered hands holding a steaming cup of coffee, small boats moored along the harbor, "
    "misty hills behind the village, photorealistic, sharp focus, shallow depth of field, 85mm lens"
)

# name -> extra `sdrt bench` flags; "default" is the baseline every ratio is taken against.
VARIANTS = {
    "default": [],
    "no-bound-io": ["--no-bound-io"],
    "sequential-load": ["--sequential-load"],
    "eager-vae-encoder": ["--load-vae-encoder"],
    "no-spinning": ["--no-spinning"],
    "no-prepacking": ["--no-prepacking"],
    "no-memory-arena": ["--memory-arena", "off"],
    "memory-arena": ["--memory-arena", "on"],
    "no-memory-pattern": ["--no-memory-pattern"],
    "opt-extended": ["--graph-optimization", "extended"],
    "opt-basic": ["--graph-optimization", "basic"],
    "opt-disabled": ["--graph-optimization", "disabled"],
    "threads-1": ["--threads", "1"],
    "threads-2": ["--threads", "2"],
    # Batched CFG: a 2-chunk prompt with a 1-chunk negative takes two UNet calls per step (as A1111); padding
    # the negative with empty chunks (A1111's pad_cond_uncond) makes it one batched call.
    "long-prompt-2-calls": ["--prompt", LONG_PROMPT, "--negative-prompt", "blurry"],
    "long-prompt-1-call": ["--prompt", LONG_PROMPT, "--negative-prompt", "blurry", "--pad-cond-uncond"],
}

# Graphs sdrt builds from a single-file checkpoint (gen_sd15_shaped.py writes it next to the export), against the
# optimum export of the same weights as "default"; each graph option is switched off on its own.
CHECKPOINT = str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped.safetensors")
CHECKPOINT_FP16 = str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped-fp16.safetensors")
VARIANTS.update({
    "checkpoint": ["--model", CHECKPOINT],
    "checkpoint-fp16": ["--model", CHECKPOINT_FP16],
    "ckpt-plain-attention": ["--model", CHECKPOINT, "--graph-attention", "plain"],
    "ckpt-unfused-qkv": ["--model", CHECKPOINT, "--no-fused-qkv"],
    "ckpt-layernorm-groupnorm": ["--model", CHECKPOINT, "--graph-group-norm", "layernorm"],
    "ckpt-native-groupnorm": ["--model", CHECKPOINT, "--graph-group-norm", "native"],
    "ckpt-transpose-matmul": ["--model", CHECKPOINT, "--no-transposed-matmul"],
    "ckpt-nearest-upsample": ["--model", CHECKPOINT, "--no-subpixel-upsample"],
    "ckpt-memory-arena": ["--model", CHECKPOINT, "--memory-arena", "on"],
    "ckpt-no-memory-arena": ["--model", CHECKPOINT, "--memory-arena", "off"],
    "ckpt-no-prepacking": ["--model", CHECKPOINT, "--no-prepacking"],
    # Winograd 3×3 convolutions in the UNet (crates/models/src/graph/winograd.rs): off, and other layer sets,
    # tiles and kernel placements than the default (layers 128–640 channels wide, F(4,3), kernels per run).
    "ckpt-no-winograd": ["--model", CHECKPOINT, "--no-winograd"],
    "ckpt-winograd-upto640-f4-at-load": ["--model", CHECKPOINT, "--winograd-kernels-at-load"],
    "ckpt-winograd-upto640-f2-at-load": ["--model", CHECKPOINT, "--winograd-small-tiles-from", "1",
                                         "--winograd-kernels-at-load"],
    "ckpt-winograd-all-f4": ["--model", CHECKPOINT, "--winograd-max-channels", "100000"],
    "ckpt-winograd-all-f4-at-load": ["--model", CHECKPOINT, "--winograd-max-channels", "100000",
                                     "--winograd-kernels-at-load"],
    "ckpt-winograd-1280-f2-at-load": ["--model", CHECKPOINT, "--winograd-min-channels", "1280",
                                      "--winograd-max-channels", "100000", "--winograd-small-tiles-from", "1280",
                                      "--winograd-kernels-at-load"],
    "ckpt-winograd-f2-1280-at-load": ["--model", CHECKPOINT, "--winograd-max-channels", "100000",
                                      "--winograd-small-tiles-from", "1280", "--winograd-kernels-at-load"],
    # The VAE's own Winograd rule (default: layers from 256 channels): off, and from 512.
    "ckpt-no-vae-winograd": ["--model", CHECKPOINT, "--no-vae-winograd"],
    "ckpt-vae-winograd-512": ["--model", CHECKPOINT, "--vae-winograd-min-channels", "512"],
})

# OpenVINO through ONNX Runtime's onnxruntime-openvino build (`cargo xtask provision-ort --openvino`): the same
# export, and the checkpoint's graphs (built with standard operators only for OpenVINO).
VARIANTS.update({
    "openvino-fp32": ["--provider", "openvino", "--precision", "fp32"],
    "openvino-bf16": ["--provider", "openvino", "--precision", "bf16"],
    "openvino-bf16-static": ["--provider", "openvino", "--precision", "bf16", "--openvino-static-shapes"],
    "ckpt-openvino-fp32": ["--model", CHECKPOINT, "--provider", "openvino", "--precision", "fp32"],
    "ckpt-openvino-bf16": ["--model", CHECKPOINT, "--provider", "openvino", "--precision", "bf16"],
})

WORKLOADS = {
    "tiny": dict(model=None, width=64, height=64, steps=20, runs=10, warmup=2, rounds=5, threads=1,
                 variants=[v for v in VARIANTS if "bf16" not in v]),
    "sd15": dict(model=str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped"), width=512, height=512,
                 steps=1, runs=2, warmup=1, rounds=2, threads=2,
                 variants=["default", "no-bound-io", "sequential-load", "eager-vae-encoder", "no-prepacking",
                           "threads-1"]),
    "sd15-checkpoint": dict(model=str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped"), width=512,
                            height=512, steps=3, runs=1, warmup=1, rounds=1, threads=2,
                            variants=["default", "checkpoint", "checkpoint-fp16", "ckpt-plain-attention",
                                      "ckpt-unfused-qkv", "ckpt-layernorm-groupnorm", "ckpt-transpose-matmul",
                                      "ckpt-nearest-upsample", "ckpt-no-winograd"]),
    "sd15-winograd": dict(model=str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped"), width=512,
                          height=512, steps=3, runs=1, warmup=1, rounds=2, threads=2,
                          variants=["default", "checkpoint", "ckpt-no-winograd", "ckpt-winograd-upto640-f4-at-load",
                                    "ckpt-winograd-upto640-f2-at-load", "ckpt-winograd-all-f4",
                                    "ckpt-winograd-all-f4-at-load", "ckpt-winograd-1280-f2-at-load",
                                    "ckpt-winograd-f2-1280-at-load"]),
    # One step per run, three runs: the VAE decode's share of the time is large.
    "sd15-vae": dict(model=str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped"), width=512, height=512,
                     steps=1, runs=3, warmup=1, rounds=2, threads=2,
                     variants=["default", "checkpoint", "ckpt-no-vae-winograd", "ckpt-vae-winograd-512"]),
    # Loading only (no generation), more rounds: load time and memory of the load-time optimisations.
    "sd15-load": dict(model=str(pathlib.Path.home() / ".cache" / "sdrt" / "sd15-shaped"), width=512, height=512,
                      steps=1, runs=0, warmup=0, rounds=5, threads=2,
                      variants=["default", "sequential-load", "eager-vae-encoder", "no-prepacking"]),
}

METRICS = [
    ("total ms", lambda r: r["median_ms"]["total"]),
    ("sample ms", lambda r: r["median_ms"]["sample"]),
    ("decode ms", lambda r: r["median_ms"]["decode"]),
    ("in ORT ms", lambda r: r["onnx_ms"]["total"]),
    ("outside ORT ms", lambda r: r["median_ms"]["total"] - r["onnx_ms"]["total"]),
    ("load ms", lambda r: r["load_ms"]),
    ("peak RSS MiB", lambda r: (r["peak_rss_bytes"] or 0) / 2**20),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--sdrt", default=str(ROOT / "target" / "release" / "sdrt"))
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: 1 for tiny, 2 for sd15)")
    for name in ("runs", "warmup", "rounds", "steps", "width", "height"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--model", help="model folder (default: the workload's)")
    parser.add_argument("--json", help="write every report here (default: tools/bench/results/options-…json)")
    return parser.parse_args(argv)


def resolve(args):
    cfg = dict(WORKLOADS[args.workload])
    for key in ("runs", "warmup", "rounds", "steps", "width", "height", "model"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.variants:
        cfg["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in cfg["variants"] if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if "default" not in cfg["variants"]:
        cfg["variants"].insert(0, "default")
    cfg["threads"] = args.threads or cfg["threads"]
    return cfg


def bench_argv(sdrt, cfg, variant, json_out):
    argv = [sdrt, "bench", "--width", str(cfg["width"]), "--height", str(cfg["height"]), "--steps",
            str(cfg["steps"]), "--sampler", "Euler", "--scheduler", "Automatic", "--seed", "1", "--runs",
            str(cfg["runs"]), "--warmup", str(cfg["warmup"]), "--json-out", str(json_out)]
    extra = VARIANTS[variant]
    if cfg["model"] and "--model" not in extra:
        argv += ["--model", cfg["model"]]
    if "--threads" not in extra:
        argv += ["--threads", str(cfg["threads"])]
    if "--prompt" not in extra:
        argv += ["--prompt", "a lighthouse on a cliff at dusk", "--negative-prompt", "blurry"]
    return argv + extra


def run_variant(sdrt, cfg, variant, tmp, index):
    json_out = pathlib.Path(tmp) / f"{variant}-{index}.json"
    done = subprocess.run(bench_argv(sdrt, cfg, variant, json_out), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{variant}: sdrt bench failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(json_out.read_text())


def summarize(reports):
    """Per variant and metric: the median over rounds of each round's median."""
    return {variant: {name: statistics.median(get(r) for r in runs) for name, get in METRICS}
            for variant, runs in reports.items()}


def format_table(summary, variants):
    header = ["variant"] + [name for name, _ in METRICS]
    rows = [header]
    base = summary["default"]
    for variant in variants:
        cells = [variant]
        for name, _ in METRICS:
            value, ref = summary[variant][name], base[name]
            ratio = f" ({value / ref:.2f}×)" if variant != "default" and ref > 0 else ""
            cells.append(f"{value:.1f}{ratio}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    variants = cfg["variants"]
    reports = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="sdrt-options-") as tmp:
        for round_index in range(cfg["rounds"]):
            # Rotate the order so no variant always runs first (cold caches, frequency ramps).
            order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
            for variant in order:
                print(f"round {round_index + 1}/{cfg['rounds']}: {variant}", file=sys.stderr, flush=True)
                reports[variant].append(run_variant(args.sdrt, cfg, variant, tmp, round_index))
    summary = summarize(reports)
    print(f"workload {args.workload}: {cfg['width']}×{cfg['height']}, {cfg['steps']} Euler steps, "
          f"{cfg['threads']} thread(s), {cfg['rounds']} rounds × {cfg['runs']} runs after {cfg['warmup']} "
          "warm-up; medians, ratio to default")
    print(format_table(summary, variants))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(args.json) if args.json else HERE / "results" / f"options-{args.workload}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    out.write_text(json.dumps({"config": cfg, "commit": commit.strip(), "summary": summary, "reports": reports},
                              indent=1))
    print(f"reports: {out}")


if __name__ == "__main__":
    main()
