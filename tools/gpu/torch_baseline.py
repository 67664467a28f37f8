"""The PyTorch side of the GPU comparison: diffusers' SD 1.5 UNet and VAE (the real configurations) in fp16 on
CUDA with PyTorch's SDPA attention, loaded from the same checkpoint sdrt runs, timed like `sdrt bench`:
20 Euler-shaped UNet calls of batch 2 (CFG) at 64×64 latents, then one VAE decode. Prints one JSON line.

    python3 tools/gpu/torch_baseline.py CHECKPOINT.safetensors
"""
from __future__ import annotations

import json
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import load_file

UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)


def synced() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    started = synced()
    state = load_file(sys.argv[1])
    unet = UNet2DConditionModel(**UNET)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet.config))
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae.config))
    unet, vae = unet.half().cuda().eval(), vae.half().cuda().eval()
    load_s = synced() - started
    generator = torch.Generator("cuda").manual_seed(0)
    latents = torch.randn(1, 4, 64, 64, generator=generator, device="cuda", dtype=torch.float16)
    context = torch.randn(2, 77, 768, generator=generator, device="cuda", dtype=torch.float16)
    result = {"engine": "diffusers fp16 SDPA", "torch": torch.__version__, "load_s": round(load_s, 3)}
    with torch.inference_mode():
        for run in range(2):  # the first is the warm-up
            torch.cuda.reset_peak_memory_stats()
            start = synced()
            x = latents
            for step in range(20):
                noise = unet(torch.cat([x, x]), 999 - 50 * step, context).sample
                uncond, cond = noise.chunk(2)
                x = x - 0.05 * (uncond + 7.0 * (cond - uncond))
            steps_s = synced() - start
            start = synced()
            image = vae.decode(x / 0.18215).sample
            decode_s = synced() - start
        result.update(it_per_s=round(20 / steps_s, 3), decode_s=round(decode_s, 4),
                      peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                      finite=bool(torch.isfinite(image).all()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
