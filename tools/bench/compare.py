"""Compares sdrt with optimum's ORTStableDiffusionPipeline (Python onnxruntime), PyTorch diffusers and
OpenVINO's own runtime.

One invocation runs the same model, prompt, negative prompt, seed, size, steps, CFG scale, sampler (Euler
discrete) and thread count on every engine and prints medians and ratios; see tools/bench/README.md.

    tools/fixtures/.venv/bin/python tools/bench/compare.py --workload tiny
    tools/fixtures/.venv/bin/python tools/bench/compare.py --workload sd15 --steps 3

Two kinds of timing, each in its own child processes (so peak RSS is per engine):
- in-process: a worker loads the model once, warms up, then runs timed generations on request; the
  orchestrator asks the engines in round-robin order (the first engine of each round rotates).
- whole-process: launch -> image written, a fresh process per run, also round-robin.

The same file is the worker (`--worker optimum|torch|openvino`); sdrt's in-process numbers come from
`sdrt bench`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import queue
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURE_TOOLS = ROOT / "tools" / "fixtures"
TINY_MODEL = ROOT / "tests" / "fixtures" / "models" / "sd15-tiny"
PROTOCOL = "@@bench "  # prefix of the worker's protocol lines on stdout; anything else there is ignored
ENGINES = ("sdrt", "optimum", "torch", "openvino")


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "sdrt"


WORKLOADS = {
    # The committed tiny fixture; its torch twin is rebuilt from gen_pipelines.py's builders (same seeds).
    "tiny": dict(model=TINY_MODEL, torch_model=cache_dir() / "bench" / "sd15-tiny-torch", width=64, height=64,
                 steps=20, runs=10, warmup=2, sdrt_mode="interleaved"),
    # tools/fixtures/gen_sd15_shaped.py --default writes both folders.
    "sd15": dict(model=cache_dir() / "sd15-shaped", torch_model=cache_dir() / "sd15-shaped-torch", width=512,
                 height=512, steps=3, runs=5, warmup=1, sdrt_mode="block"),
}


# ------------------------------------------------------------------------------------------------ worker


def now_ms() -> float:
    return time.perf_counter() * 1e3


def emit(event: str, **fields) -> None:
    sys.stdout.write(PROTOCOL + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ort_torch_shim(torch) -> None:
    """onnxruntime 1.31's io_binding_helper names torch.int4/uint4, which torch 2.5 lacks (see
    gen_pipelines.ort_torch_shim; imported lazily there would pull the whole fixture generator in)."""
    for name in ("int4", "uint4"):
        if not hasattr(torch, name):
            setattr(torch, name, torch.int8)


class Timers:
    """Wall time spent inside wrapped callables, per name, plus the step-end marks of one generation."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.spent = {}
        self.first_start = {}
        self.step_ends = []

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            t0 = now_ms()
            self.first_start.setdefault(name, t0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + now_ms() - t0

        return timed

    def step_end(self, pipe, step, timestep, callback_kwargs):
        self.step_ends.append(now_ms())
        return callback_kwargs


def euler_scheduler(config):
    """A1111's Euler with the model's discrete schedule ("Automatic") = k-diffusion's sigmas at timesteps
    linspace(999, 0, steps), which is diffusers' EulerDiscreteScheduler with linspace spacing."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config, timestep_spacing="linspace", steps_offset=0)


class OpenVinoPipeline:
    """OpenVINO's own runtime (PyPI `openvino`, tools/bench/requirements.txt) on the optimum export's ONNX files,
    reshaped to static shapes and compiled for the CPU with `INFERENCE_PRECISION_HINT` (bf16 by default: what
    OpenVINO picks by itself on a CPU with AVX512_BF16 or AMX), driven by the same diffusers Euler scheduler as
    the other Python engines."""

    class Part:
        def __init__(self, compiled, method):
            self.compiled = compiled
            setattr(self, method, self.run)

        def run(self, *arrays):
            import numpy as np

            inputs = [np.asarray(a, dtype=i.get_element_type().to_dtype()) for a, i in zip(arrays, self.compiled.inputs)]
            return self.compiled(inputs)[self.compiled.outputs[0]]

    def __init__(self, folder, threads, precision, width, height, cache_dir=None):
        import openvino as ov
        from diffusers import EulerDiscreteScheduler
        from transformers import CLIPTokenizer

        folder = pathlib.Path(folder)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        latent = [height // 8, width // 8]

        def compiled(component, shapes):
            """Reshaped to `shapes` where the export left a dimension dynamic (scalar inputs stay scalars)."""
            model = core.read_model(folder / component / "model.onnx")
            static = {}
            for i in model.inputs:
                dims = list(i.get_partial_shape())
                static[i.get_any_name()] = [d.get_length() if d.is_static else want
                                            for d, want in zip(dims, shapes[i.get_any_name()])]
            model.reshape(static)
            return core.compile_model(model, "CPU", config)

        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.text_encoder = self.Part(compiled("text_encoder", {"input_ids": [1, 77]}), "forward")
        self.unet = self.Part(compiled("unet", {"sample": [2, 4, *latent], "timestep": [2],
                                                "encoder_hidden_states": [2, 77, 0]}), "forward")
        self.vae = self.Part(compiled("vae_decoder", {"latent_sample": [1, 4, *latent]}), "decode")
        self.scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        self.vae_scale = json.loads((folder / "vae_decoder" / "config.json").read_text()).get("scaling_factor", 0.18215)

    def set_progress_bar_config(self, **_):
        pass

    def __call__(self, prompt, negative_prompt, num_inference_steps, guidance_scale, width, height, generator,
                 callback_on_step_end):
        import numpy as np
        import torch
        from PIL import Image

        def encode(text):
            ids = self.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="np")
            return self.text_encoder.forward(ids.input_ids)

        context = np.concatenate([encode(negative_prompt), encode(prompt)])
        self.scheduler.set_timesteps(num_inference_steps)
        latents = torch.randn((1, 4, height // 8, width // 8), generator=generator) * self.scheduler.init_noise_sigma
        for i, t in enumerate(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            scalar_time = len(self.unet.compiled.inputs[1].get_partial_shape()) == 0
            noise = torch.from_numpy(self.unet.forward(x.numpy(), np.array(t if scalar_time else [t, t]), context))
            uncond, cond = noise.chunk(2)
            latents = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
            callback_on_step_end(self, i, t, {})
        image = self.vae.decode(latents.numpy() / self.vae_scale)[0]
        pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
        return argparse.Namespace(images=[Image.fromarray(pixels)])


def import_pipeline_class(engine):
    """Imports what the engine needs (timed apart from the model load: diffusers and optimum import lazily)."""
    import torch

    if engine == "openvino":
        import openvino  # noqa: F401

        return OpenVinoPipeline
    if engine == "optimum":
        ort_torch_shim(torch)
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        return ORTStableDiffusionPipeline
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def load_pipeline(spec, pipeline_class, timers):
    """Loads the engine's pipeline, switches it to Euler and wraps its components with timers."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "optimum":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        pipe = pipeline_class.from_pretrained(spec["model"], provider="CPUExecutionProvider", session_options=options)
        for part in (pipe.text_encoder, pipe.unet, pipe.vae_decoder):
            part.session.run = timers.wrap("onnx", part.session.run)
    elif spec["engine"] == "openvino":
        pipe = pipeline_class(spec["model"], spec["threads"], spec["openvino_precision"], spec["width"],
                              spec["height"], spec.get("openvino_cache"))
    else:
        pipe = pipeline_class.from_pretrained(spec["torch_model"], torch_dtype=torch.float32)
        pipe.to("cpu")
    pipe.scheduler = euler_scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.text_encoder.forward = timers.wrap("text_encoder", pipe.text_encoder.forward)
    pipe.unet.forward = timers.wrap("unet", pipe.unet.forward)
    pipe.vae.decode = timers.wrap("vae_decode", pipe.vae.decode)
    return pipe


def generate(pipe, spec, timers):
    """One txt2img; returns (PIL image, timings in ms). `sample` runs from the first UNet call to the last
    step's end (scheduler included); `save` is the PNG encoding into memory."""
    import torch

    timers.reset()
    t0 = now_ms()
    with torch.inference_mode():
        image = pipe(
            prompt=spec["prompt"], negative_prompt=spec["negative_prompt"], num_inference_steps=spec["steps"],
            guidance_scale=spec["cfg_scale"], width=spec["width"], height=spec["height"],
            generator=torch.Generator().manual_seed(spec["seed"]), callback_on_step_end=timers.step_end,
        ).images[0]
    t_pipe = now_ms()
    png = io.BytesIO()
    image.save(png, format="PNG")
    t_end = now_ms()
    assert len(timers.step_ends) == spec["steps"], f"{len(timers.step_ends)} step callbacks, expected {spec['steps']}"
    sample = timers.step_ends[-1] - timers.first_start["unet"]
    return image, {
        "total": t_end - t0,
        "text_encode": timers.spent.get("text_encoder", 0.0),
        "sample": sample,
        "decode": timers.spent.get("vae_decode", 0.0),
        "save": t_end - t_pipe,
        "unet": timers.spent.get("unet", 0.0),
        "onnx": timers.spent.get("onnx"),
    }


def worker_main(args) -> None:
    spec = json.loads(args.spec)
    t_start = now_ms()
    pipeline_class = import_pipeline_class(spec["engine"])
    timers = Timers()
    t_imported = now_ms()
    pipe = load_pipeline(spec, pipeline_class, timers)
    t_loaded = now_ms()
    if args.once:
        image, timing = generate(pipe, spec, timers)
        image.save(args.once)
        return
    emit("ready", import_ms=t_imported - t_start, load_ms=t_loaded - t_imported)
    for _ in range(spec["warmup"]):
        generate(pipe, spec, timers)
    emit("warm")
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            emit("run", ms=generate(pipe, spec, timers)[1])
        elif command == "exit":
            emit("exit", vm_hwm_bytes=vm_hwm_bytes())
            return


# ---------------------------------------------------------------------------------------- orchestrator


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_process(argv, env, log_file, timeout):
    """Runs argv to completion; returns (wall ms, peak RSS bytes of that child, exit code)."""
    t0 = now_ms()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    wall = now_ms() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode


class Worker:
    """A persistent Python engine process speaking the line protocol above."""

    def __init__(self, engine, spec, env, log_path, timeout):
        self.engine, self.timeout = engine, timeout
        self.log = open(log_path, "ab")
        argv = [sys.executable, str(HERE / "compare.py"), "--worker", engine, "--spec", json.dumps(spec)]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        # A reader thread, because select() on a buffered pipe misses lines already in the buffer.
        self.lines = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, event):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(PROTOCOL):
                msg = json.loads(line[len(PROTOCOL):])
                if msg["event"] == event:
                    return msg
        raise RuntimeError(f"{self.engine} worker: no '{event}' (exit code {self.proc.poll()}); see {self.log.name}")

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self.expect("run")["ms"]

    def close(self):
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        hwm = self.expect("exit")["vm_hwm_bytes"]
        self.proc.stdin.close()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.log.close()
        return max(hwm, usage.ru_maxrss * 1024)


def sdrt_common_flags(cfg):
    return ["--model", str(cfg["model"]), "--prompt", cfg["prompt"], "--negative-prompt", cfg["negative_prompt"],
            "--steps", str(cfg["steps"]), "--width", str(cfg["width"]), "--height", str(cfg["height"]),
            "--sampler", cfg["sdrt_sampler"], "--scheduler", cfg["sdrt_scheduler"],
            "--cfg-scale", str(cfg["cfg_scale"]), "--seed", str(cfg["seed"]), "--threads", str(cfg["threads"])]


def sdrt_bench(cfg, env, runs, tmp, log_file):
    """One `sdrt bench` process; returns its JSON report plus the child's peak RSS seen from here."""
    out = tmp / f"sdrt-bench-{time.monotonic_ns()}.json"
    # --save (into tmp) so that sdrt's total includes writing the PNG, as the Python engines' totals include
    # encoding it.
    argv = [cfg["sdrt"], "bench", *sdrt_common_flags(cfg), "--runs", str(runs), "--warmup", str(cfg["warmup"]),
            "--provider", cfg["sdrt_provider"], "--precision", cfg["sdrt_precision"], "--save", "--outdir", str(tmp / "sdrt-bench-images"), "--json-out", str(out),
            *shlex.split(cfg["sdrt_flags"])]
    wall, rss, code = run_process(argv, env, log_file, cfg["timeout"])
    if code != 0 or not out.exists():
        raise RuntimeError(f"sdrt bench failed (exit {code}): {shlex.join(argv)}; see {log_file.name}")
    report = json.loads(out.read_text())
    report["child_max_rss_bytes"] = rss
    report["process_wall_ms"] = wall
    return report


def whole_process_argv(engine, cfg, spec, outdir):
    if engine == "sdrt":
        return [cfg["sdrt"], "txt2img", *sdrt_common_flags(cfg), "--outdir", str(outdir)]
    return [sys.executable, str(HERE / "compare.py"), "--worker", engine, "--spec", json.dumps(spec),
            "--once", str(outdir / f"{engine}.png")]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ensure_torch_tiny(path: pathlib.Path, env) -> None:
    """Saves gen_pipelines.make_sd15() (the torch twin of the sd15-tiny fixture) to `path` once."""
    if (path / "model_index.json").exists():
        return
    log(f"building the tiny torch pipeline -> {path}")
    subprocess.run([sys.executable, str(HERE / "tiny_torch.py"), str(path)], env=env, check=True)


def child_env(threads):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=f"{FIXTURE_TOOLS}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep))
    env.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    return env


def in_process(cfg, engines, spec, env, tmp, logs):
    """Loads each Python engine once (one after another, so load times do not overlap), then asks every engine
    for one generation per round. sdrt runs `sdrt bench` per round (`interleaved`) or once (`block`)."""
    results = {e: {"runs_ms": []} for e in engines}
    workers = {}
    for engine in engines:
        if engine == "sdrt":
            continue
        log(f"in-process: loading {engine}")
        w = Worker(engine, {**spec, "engine": engine}, env, logs / f"{engine}.log", cfg["timeout"])
        results[engine].update(w.expect("ready"))
        w.expect("warm")
        workers[engine] = w
    sdrt_reports = []
    sdrt_log = open(logs / "sdrt.log", "ab") if "sdrt" in engines else None
    if "sdrt" in engines and cfg["sdrt_mode"] == "block":
        log(f"in-process: sdrt bench --runs {cfg['runs']} (block)")
        sdrt_reports.append(sdrt_bench(cfg, env, cfg["runs"], tmp, sdrt_log))
    for r in range(cfg["runs"]):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for engine in order:
            if engine == "sdrt":
                if cfg["sdrt_mode"] == "interleaved":
                    sdrt_reports.append(sdrt_bench(cfg, env, 1, tmp, sdrt_log))
                continue
            results[engine]["runs_ms"].append(workers[engine].run())
        log(f"in-process: round {r + 1}/{cfg['runs']} done")
    for engine, w in workers.items():
        results[engine]["peak_rss_bytes"] = w.close()
    if sdrt_reports:
        sdrt_log.close()
        results["sdrt"] = summarize_sdrt(sdrt_reports, cfg["steps"])
    for engine in workers:
        runs = results[engine]["runs_ms"]
        results[engine]["median_ms"] = {k: median([run[k] for run in runs]) for k in runs[0]}
        results[engine]["per_step_ms"] = results[engine]["median_ms"]["sample"] / cfg["steps"]
    return results


def summarize_sdrt(reports, steps):
    """Medians over `sdrt bench` reports (one per round in interleaved mode, one in block mode)."""
    runs = [{"total": t} for rep in reports for t in rep["runs_total_ms"]]
    keys = reports[0]["median_ms"].keys()
    med = {k: median([rep["median_ms"][k] for rep in reports]) for k in keys}
    if len(reports) > 1:
        med["total"] = median([r["total"] for r in runs])
    onnx = {k: median([rep["onnx_ms"][k] for rep in reports]) for k in reports[0].get("onnx_ms", {})}
    med["onnx"] = onnx.get("total")
    med["unet"] = onnx.get("unet")
    return {
        "runs_ms": runs,
        "median_ms": med,
        "onnx_ms": onnx,
        "per_step_ms": med["sample"] / steps,
        "load_ms": median([rep["load_ms"] for rep in reports]),
        "peak_rss_bytes": median([max(rep.get("peak_rss_bytes") or 0, rep["child_max_rss_bytes"]) for rep in reports]),
        "reports": reports,
    }


def whole_process(cfg, engines, spec, env, tmp, logs):
    results = {e: {"wall_ms": [], "peak_rss_bytes": []} for e in engines}
    for r in range(cfg["process_runs"]):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for engine in order:
            outdir = pathlib.Path(tempfile.mkdtemp(prefix=f"{engine}-", dir=tmp))
            argv = whole_process_argv(engine, cfg, {**spec, "engine": engine}, outdir)
            with open(logs / f"{engine}-process.log", "ab") as log_file:
                wall, rss, code = run_process(argv, env, log_file, cfg["timeout"])
            images = list(outdir.rglob("*.png"))
            if code != 0 or not images:
                raise RuntimeError(f"{engine} whole-process run failed (exit {code}, {len(images)} images): "
                                   f"{shlex.join(argv)}; see {log_file.name}")
            results[engine]["wall_ms"].append(wall)
            results[engine]["peak_rss_bytes"].append(rss)
            shutil.rmtree(outdir)
        log(f"whole-process: round {r + 1}/{cfg['process_runs']} done")
    for engine in engines:
        results[engine]["median_wall_ms"] = median(results[engine]["wall_ms"])
        results[engine]["median_peak_rss_bytes"] = median(results[engine]["peak_rss_bytes"])
    return results


ROWS = [
    ("end-to-end (in-process)", "ms", lambda ip, wp: ip.get("median_ms", {}).get("total")),
    ("per step", "ms", lambda ip, wp: ip.get("per_step_ms")),
    ("text encode", "ms", lambda ip, wp: ip.get("median_ms", {}).get("text_encode")),
    ("VAE decode", "ms", lambda ip, wp: ip.get("median_ms", {}).get("decode")),
    ("inside ONNX Runtime", "ms", lambda ip, wp: ip.get("median_ms", {}).get("onnx")),
    ("load", "ms", lambda ip, wp: ip.get("load_ms")),
    ("peak RSS (in-process)", "MiB", lambda ip, wp: ip.get("peak_rss_bytes")),
    ("whole process", "ms", lambda ip, wp: wp.get("median_wall_ms")),
    ("peak RSS (whole process)", "MiB", lambda ip, wp: wp.get("median_peak_rss_bytes")),
]


def table(results, engines):
    """Rows of medians per engine and the ratios sdrt / each other engine (< 1: sdrt is faster or smaller)."""
    rows = []
    for name, unit, get in ROWS:
        vals = {e: get(results["in_process"].get(e, {}), results["whole_process"].get(e, {})) for e in engines}
        if unit == "MiB":
            vals = {e: v / 2**20 if v is not None else None for e, v in vals.items()}
        ratios = {}
        for other in ENGINES[1:]:
            a, b = vals.get("sdrt"), vals.get(other)
            ratios[f"sdrt/{other}"] = a / b if a is not None and b else None
        rows.append({"metric": f"{name} [{unit}]", **vals, **ratios})
    return rows


def format_table(rows, engines):
    cols = ["metric", *engines, *(f"sdrt/{e}" for e in engines if e != "sdrt" and "sdrt" in engines)]
    fmt = lambda v: "-" if v is None else (v if isinstance(v, str) else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}")  # noqa: E731
    cells = [[fmt(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def environment(cfg):
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional engine not installed
            return None

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "git_commit": commit,
            "onnxruntime": version("onnxruntime"), "torch": version("torch"), "diffusers": version("diffusers"),
            "openvino": version("openvino"),
            "sdrt": cfg.get("sdrt")}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="sdrt vs optimum (onnxruntime) vs PyTorch diffusers vs OpenVINO")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    ap.add_argument("--model", type=pathlib.Path, help="ONNX model folder (default: the workload's)")
    ap.add_argument("--torch-model", type=pathlib.Path, help="diffusers folder for the torch engine")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of sdrt,optimum,torch,openvino")
    ap.add_argument("--sdrt", help="sdrt binary (default: $CARGO_TARGET_DIR or target/, release/sdrt)")
    ap.add_argument("--sdrt-mode", choices=("interleaved", "block"),
                    help="interleaved: one `sdrt bench --runs 1` per round; block: one `sdrt bench --runs N`")
    ap.add_argument("--sdrt-sampler", default="Euler")
    ap.add_argument("--sdrt-scheduler", default="Automatic")
    ap.add_argument("--sdrt-provider", default="cpu", help="sdrt's --provider (cpu, openvino, ...)")
    ap.add_argument("--sdrt-precision", default="auto", help="sdrt's --precision (fp32, bf16, auto)")
    ap.add_argument("--sdrt-flags", default="", help="more flags for sdrt, e.g. \"--openvino-static-shapes\"")
    ap.add_argument("--openvino-precision", default="bf16", choices=("bf16", "f32"),
                    help="INFERENCE_PRECISION_HINT of the openvino engine")
    ap.add_argument("--openvino-cache", type=pathlib.Path,
                    help="CACHE_DIR of the openvino engine (compiled models; default: none, compile on load)")
    ap.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars, highly detailed")
    ap.add_argument("--negative-prompt", default="blurry, low quality")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--cfg-scale", type=float, default=7.0)
    for name in ("steps", "width", "height", "runs", "warmup"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--process-runs", type=int, help="whole-process runs per engine (default: --runs; 0 skips)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for every engine")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per process / per request")
    ap.add_argument("--json", type=pathlib.Path, help="write the results here (default: tools/bench/results/…)")
    ap.add_argument("--worker", choices=("optimum", "torch", "openvino"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--once", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def resolve_config(args):
    cfg = dict(WORKLOADS[args.workload])
    for key in ("model", "torch_model", "steps", "width", "height", "runs", "warmup", "sdrt_mode"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    cfg.update(workload=args.workload, prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
               cfg_scale=args.cfg_scale, threads=args.threads, timeout=args.timeout,
               sdrt=args.sdrt or str(target / "release" / "sdrt"), sdrt_sampler=args.sdrt_sampler,
               sdrt_scheduler=args.sdrt_scheduler, sdrt_provider=args.sdrt_provider,
               sdrt_precision=args.sdrt_precision, sdrt_flags=args.sdrt_flags, openvino_precision=args.openvino_precision,
               openvino_cache=str(args.openvino_cache) if args.openvino_cache else None,
               process_runs=cfg["runs"] if args.process_runs is None else args.process_runs)
    if cfg["runs"] < 5:
        log(f"note: {cfg['runs']} runs; the comparison asks for at least 5")
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    cfg = resolve_config(args)
    requested = [e for e in args.engines.split(",") if e]
    engines = [e for e in ENGINES if e in requested]  # one fixed order for rounds and table columns
    unknown = set(requested) - set(ENGINES)
    if unknown:
        sys.exit(f"--engines: unknown {sorted(unknown)}; choose from {ENGINES}")
    if "sdrt" in engines and not os.access(cfg["sdrt"], os.X_OK):
        sys.exit(f"--sdrt: {cfg['sdrt']} is not an executable; build it with "
                 "`cargo build --release -p sdrt-cli --bin sdrt` or pass --sdrt PATH")
    if not (pathlib.Path(cfg["model"]) / "model_index.json").exists():
        sys.exit(f"--model: {cfg['model']} has no model_index.json"
                 + (" (run tools/fixtures/gen_sd15_shaped.py --default)" if args.workload == "sd15" else ""))
    env = child_env(cfg["threads"])
    if "torch" in engines:
        if args.workload == "tiny" and args.torch_model is None:
            ensure_torch_tiny(pathlib.Path(cfg["torch_model"]), env)
        if not (pathlib.Path(cfg["torch_model"]) / "model_index.json").exists():
            sys.exit(f"--torch-model: {cfg['torch_model']} has no model_index.json")
    spec = {k: (str(cfg[k]) if k in ("model", "torch_model") else cfg[k])
            for k in ("model", "torch_model", "prompt", "negative_prompt", "steps", "width", "height", "cfg_scale",
                      "seed", "threads", "warmup", "openvino_precision", "openvino_cache")}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_json = args.json or HERE / "results" / f"{args.workload}-{stamp}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    logs = out_json.parent / f"{out_json.stem}-logs"
    logs.mkdir(exist_ok=True)
    log(f"workload {args.workload}: {cfg['width']}x{cfg['height']}, {cfg['steps']} steps, {cfg['threads']} threads, "
        f"{cfg['runs']} runs after {cfg['warmup']} warm-up, {cfg['process_runs']} whole-process runs; logs in {logs}")
    with tempfile.TemporaryDirectory(prefix="sdrt-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        results = {"in_process": in_process(cfg, engines, spec, env, tmp, logs)}
        results["whole_process"] = whole_process(cfg, engines, spec, env, tmp, logs) if cfg["process_runs"] else {}
    rows = table(results, engines)
    report = {"config": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in cfg.items()},
              "engines": engines, "environment": environment(cfg), "table": rows, **results}
    out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{args.workload}: {cfg['width']}x{cfg['height']}, {cfg['steps']} steps Euler, CFG {cfg['cfg_scale']}, "
          f"{cfg['threads']} threads; medians of {cfg['runs']} in-process runs (after {cfg['warmup']} warm-up) "
          f"and {cfg['process_runs']} whole-process runs; ratio = sdrt / other (< 1: sdrt better)")
    print(format_table(rows, engines))
    print(f"\nJSON: {out_json}")


if __name__ == "__main__":
    main()
