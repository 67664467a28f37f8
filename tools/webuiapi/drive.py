#!/usr/bin/env python3
"""Drives `sdrt serve` with the PyPI `webuiapi` client (what many A1111 scripts and bots use), method by
method, and prints which calls work. Not run by CI (Python stays out of it).

    python3 -m venv /tmp/wvenv && /tmp/wvenv/bin/pip install -r tools/webuiapi/requirements.txt
    cargo build --release -p sdrt-cli
    /tmp/wvenv/bin/python tools/webuiapi/drive.py

The server runs on an A1111 data folder made from the test fixtures (`--data-dir`: the sd15-tiny checkpoint, a
LoRA, a VAE, an embedding, styles.csv). Methods for extensions sdrt does not have (ControlNet, ADetailer,
AnimateDiff, prompt generators) are listed as "not applicable" and not counted.
"""

import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import webuiapi
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOT_APPLICABLE = {
    "controlnet_detect", "controlnet_model_list", "controlnet_module_list", "controlnet_version", "has_adetailer",
    "has_animatediff", "has_controlnet", "list_prompt_gen_models", "prompt_gen", "get_artist_categories",
    "get_artists", "check_extensions",
}
FIXTURES = ROOT / "tests" / "fixtures"


def a1111_folder(root: pathlib.Path) -> None:
    """An A1111 data folder with one of each thing sdrt reads from it."""
    for source, target in [
        ("checkpoints/sd15-tiny.safetensors", "models/Stable-diffusion/sd15-tiny.safetensors"),
        ("checkpoints/sd15-tiny.yaml", "models/Stable-diffusion/sd15-tiny.yaml"),
        ("loras/sd15-tiny-locon.safetensors", "models/Lora/sd15-tiny-locon.safetensors"),
        ("vaes/sd15-tiny-alt.vae.safetensors", "models/VAE/sd15-tiny-alt.vae.safetensors"),
        ("vaes/sd15-tiny-alt.vae.yaml", "models/VAE/sd15-tiny-alt.vae.yaml"),
        ("embeddings/tiny-style.safetensors", "embeddings/tiny-style.safetensors"),
    ]:
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / source, root / target)
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nSharp,sharp focus,blurry\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    port = free_port()
    data = pathlib.Path(tempfile.mkdtemp(prefix="sdrt-a1111-"))
    a1111_folder(data)
    server = subprocess.Popen([str(ROOT / "target" / "release" / "sdrt"), "serve", "--listen", f"127.0.0.1:{port}",
                               "--threads", "1", "--data-dir", str(data)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        api.util_wait_for_ready(check_interval=0.2)
        image = Image.new("RGB", (64, 64), (120, 80, 200))
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        small = dict(steps=4, width=64, height=64, seed=3, sampler_name="Euler")
        calls = {
            "txt2img": lambda: len(api.txt2img(prompt="a red fox", **small).images) == 1,
            "txt2img (hires)": lambda: api.txt2img(prompt="a fox", enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                                                   denoising_strength=0.6, **small).image.size == (128, 128),
            "img2img": lambda: len(api.img2img(images=[image], prompt="oil painting", denoising_strength=0.5,
                                               **small).images) == 1,
            "img2img (inpaint)": lambda: len(api.img2img(images=[image], mask_image=mask, prompt="a hat",
                                                         inpainting_fill=1, **small).images) == 1,
            "png_info": lambda: "Steps: 4" in api.png_info(api.txt2img(prompt="x", **small).image).info,
            "extra_single_image": lambda: api.extra_single_image(image=image, upscaler_1="Lanczos",
                                                                 upscaling_resize=2).image.size == (128, 128),
            "extra_batch_images": lambda: len(api.extra_batch_images(images=[image, image], upscaler_1="Nearest",
                                                                     upscaling_resize=2).images) == 2,
            "get_progress": lambda: "progress" in api.get_progress(),
            "interrupt": lambda: api.interrupt() is not None,
            "skip": lambda: api.skip() is not None,
            "get_options": lambda: "CLIP_stop_at_last_layers" in api.get_options(),
            "set_options": lambda: api.set_options({"CLIP_stop_at_last_layers": 1}) is not None,
            "get_cmd_flags": lambda: isinstance(api.get_cmd_flags(), dict),
            "get_samplers": lambda: "Euler a" in [s["name"] for s in api.get_samplers()],
            "get_schedulers": lambda: len(api.get_schedulers()) > 0,
            "get_upscalers": lambda: any(u["name"] == "Lanczos" for u in api.get_upscalers()),
            "get_latent_upscale_modes": lambda: any(m["name"] == "Latent" for m in api.get_latent_upscale_modes()),
            "get_sd_models": lambda: len(api.get_sd_models()) >= 1,
            "get_sd_vae": lambda: isinstance(api.get_sd_vae(), list),
            "get_hypernetworks": lambda: isinstance(api.get_hypernetworks(), list),
            "get_face_restorers": lambda: isinstance(api.get_face_restorers(), list),
            "get_realesrgan_models": lambda: isinstance(api.get_realesrgan_models(), list),
            "get_scripts": lambda: "txt2img" in api.get_scripts(),
            "get_memory": lambda: isinstance(api.get_memory(), dict),
            "refresh_checkpoints": lambda: api.refresh_checkpoints() is None,  # A1111 answers null
            "util_get_model_names": lambda: len(api.util_get_model_names()) >= 1,
            "util_get_current_model": lambda: api.util_get_current_model() is not None,
            "util_set_model": lambda: api.util_set_model(api.util_get_model_names()[0]) is None,
            "util_get_sampler_names": lambda: "Euler" in api.util_get_sampler_names(),
            "util_get_scheduler_names": lambda: len(api.util_get_scheduler_names()) > 0,
            "interrogate (501 expected)": lambda: expect_error(lambda: api.interrogate(image)),
            "get_loras": lambda: [lora["name"] for lora in api.get_loras()] == ["sd15-tiny-locon"],
            "get_embeddings": lambda: "tiny-style" in api.get_embeddings()["loaded"],
            "get_prompt_styles": lambda: [style["name"] for style in api.get_prompt_styles()] == ["Sharp"],
            "txt2img (LoRA, embedding, style, VAE)": lambda: all(
                key in api.txt2img(prompt="a fox <lora:sd15-tiny-locon:0.7> tiny-style", styles=["Sharp"],
                                   **small).info["infotexts"][0]
                for key in ("Lora hashes:", "TI hashes:", "VAE: sd15-tiny-alt.vae.safetensors", "sharp focus")),
        }
        passed = 0
        for name, call in calls.items():
            try:
                ok = bool(call())
            except Exception:  # a client exception is a failed check, reported with its cause
                ok = False
                print(f"  {name}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
            passed += ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
        skipped = sorted(m for m in NOT_APPLICABLE if hasattr(api, m))
        print(f"\nwebuiapi {webuiapi.__version__ if hasattr(webuiapi, '__version__') else ''}: {passed}/{len(calls)} "
              f"calls work; not applicable: {', '.join(skipped)}")
        sys.exit(0 if passed == len(calls) else 1)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        server.terminate()
        server.wait(timeout=30)


def wait_for_port(port: int) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("sdrt serve did not start")


def expect_error(call) -> bool:
    try:
        call()
    except Exception:  # the client raises on the JSON error body, as it does against A1111 without a model
        return True
    return False


if __name__ == "__main__":
    main()
