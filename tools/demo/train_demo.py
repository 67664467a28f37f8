"""Trains sdrt's bundled demo model: a tiny Stable Diffusion 1.x (CLIP text encoder over the real CLIP BPE
vocabulary, 8× KL VAE, cross-attention UNet, scaled-linear schedule, eps prediction) on the shapes world of
shapes.py, and writes it as an A1111 single-file checkpoint (LDM key names, fp16) with its .yaml.

    tools/demo/train.sh                # the full run: about an hour on 2 cores
    tools/demo/train.sh --scale 0.02   # a smoke run (same code path, fewer steps) into --out

Deterministic for a given seed, thread count and machine kind (torch's CPU kernels pick their code path by
CPU features; ATEN_CPU_CAPABILITY is pinned to avx2 by train.sh).

Phases: (1) the VAE learns to reconstruct 64×64 crops of drawn scenes (MSE weighted toward the shapes' pixels +
a small KL term); its latents
are then rescaled so that scaled latents have unit variance under SD 1.x's fixed factor 0.18215 (an exact
reparametrisation of quant_conv / post_quant_conv); (2) a fixed pool of scenes is drawn and encoded once;
(3) the text encoder alone learns to tell the scene's attributes from its caption (linear heads over the mean
of the caption's token states, thrown away afterwards), so that its states name the shape's colour apart from
the background's before the UNet needs them: trained only through the denoising loss, the text encoder still
confused the two after 112 000 samples; (4) the UNet trains on the pool with the text encoder frozen (letting the
denoising loss move it again undid what phase 3 taught within a few hundred steps) and freshly drawn
captions, 10 % empty captions (classifier-free guidance), half of the timesteps drawn from the noisier half
(where colour and layout are decided), min-SNR-5 loss weighting and an EMA of the weights, which is what ships.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tools" / "fixtures"))
sys.path.insert(0, str(HERE))

import shapes  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

TEXT = dict(hidden=64, layers=3, heads=4)
UNET_CHANNELS = (32, 64, 64, 64)
UNET_HEADS = 4
VAE_CHANNELS = (16, 32, 64, 64)
NORM_GROUPS = 8
SD1_SCALE = 0.18215
NAME = "sdrt-shapes-demo"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "models" / "demo")
    p.add_argument("--seed", type=int, default=20261203)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step and pool count (smoke runs)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32,
                   help="16 lost green against black (round trip 214/256 shape colours); 32: 255/256")
    p.add_argument("--pool", type=int, default=8000)
    p.add_argument("--text-steps", type=int, default=300, help="phase 3: text encoder on caption attributes")
    p.add_argument("--unet-steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--unet-channels", default=",".join(map(str, UNET_CHANNELS)),
                   help="UNet block widths; the last level has no attention, the others cross-attention")
    p.add_argument("--unet-heads", type=int, default=UNET_HEADS)
    p.add_argument("--snapshots", type=pathlib.Path, help="also write the EMA weights every 500 steps here")
    return p.parse_args()


class Log:
    def __init__(self, out: pathlib.Path):
        self.start = time.time()
        self.lines: list[str] = []
        self.curve: list[tuple[str, int, float]] = []
        self.out = out

    def __call__(self, text: str) -> None:
        line = f"[{time.time() - self.start:7.1f}s] {text}"
        print(line, flush=True)
        self.lines.append(line)

    def point(self, phase: str, step: int, loss: float) -> None:
        self.curve.append((phase, step, loss))

    def write(self) -> None:
        (self.out / "training-log.txt").write_text("\n".join(self.lines) + "\n")
        rows = ["phase,step,loss"] + [f"{ph},{s},{v:.6f}" for ph, s, v in self.curve]
        (self.out / "training-curve.csv").write_text("\n".join(rows) + "\n")


def tokenizer() -> CLIPTokenizer:
    clip = ROOT / "crates" / "models" / "assets" / "clip"
    return CLIPTokenizer(vocab_file=str(clip / "vocab.json"), merges_file=str(clip / "merges.txt"))


def build_models(unet_channels=UNET_CHANNELS, unet_heads=UNET_HEADS):
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT["hidden"], intermediate_size=4 * TEXT["hidden"],
        num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"], max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=TEXT["hidden"], bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=shapes.SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        norm_num_groups=NORM_GROUPS, cross_attention_dim=TEXT["hidden"],
        down_block_types=("CrossAttnDownBlock2D",) * (len(unet_channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(unet_channels) - 1),
        block_out_channels=tuple(unet_channels), attention_head_dim=unet_heads)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=VAE_CHANNELS, layers_per_block=1,
        latent_channels=4, norm_num_groups=NORM_GROUPS, sample_size=shapes.SIZE, scaling_factor=SD1_SCALE)
    return te, unet, vae


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# -------------------------------------------------------------------------------------------- phase 1


SHAPE_WEIGHT = 8.0


def shape_weight(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight: 1 + SHAPE_WEIGHT where the pixel differs from the crop's background (its
    median colour). With a plain MSE the background dominates and the shapes' colours were lost: reconstructions
    read back the right shape colour for 74 of 256 scenes; weighted, 223 of 256."""
    background = x.flatten(2).median(dim=2).values[..., None, None]
    return 1 + SHAPE_WEIGHT * ((x - background).abs().sum(1, keepdim=True) > 0.05).float()


def train_vae(vae, steps: int, batch: int, rng: random.Random, log: Log) -> None:
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    crop, smooth = min(64, shapes.SIZE), None
    vae.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * cosine_lr(step, steps, 50)
        images = []
        for _ in range(batch):
            full = shapes.draw(shapes.random_scene(rng), rng)
            x, y = rng.randrange(0, shapes.SIZE - crop + 1, 8), rng.randrange(0, shapes.SIZE - crop + 1, 8)
            images.append(full[y:y + crop, x:x + crop])
        x = to_tensor(images)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        weight = shape_weight(x)
        mse = (((rec - x) ** 2) * weight).mean() / weight.mean()
        loss = mse + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = mse.item() if smooth is None else 0.98 * smooth + 0.02 * mse.item()
        if step % 25 == 0 or step == steps - 1:
            log.point("vae", step, smooth)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} weighted mse {smooth:.5f}")
    vae.eval()
    with torch.no_grad():
        x = to_tensor([shapes.draw(shapes.random_scene(rng), rng) for _ in range(16)])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        worst = ((rec - x).abs().amax(dim=1) > 0.25).float().mean().item()
        log(f"vae check on 16 new scenes: mse {F.mse_loss(rec, x).item():.5f}, "
            f"{worst:.2%} of pixels off by more than 32 levels")


@torch.no_grad()
def encode_pool(vae, count: int, rng: random.Random, log: Log):
    scenes, latents = [], []
    for start in range(0, count, 64):
        batch = [shapes.random_scene(rng) for _ in range(min(64, count - start))]
        images = [shapes.draw(s, rng) for s in batch]
        latents.append(vae.encode(to_tensor(images)).latent_dist.mean)
        scenes += batch
    latents = torch.cat(latents)
    log(f"pool: {count} scenes encoded, latent std {latents.std().item():.4f}")
    return scenes, latents


@torch.no_grad()
def rescale_latents(vae, latents: torch.Tensor, log: Log) -> torch.Tensor:
    """Makes SD1_SCALE·latent unit-variance: the encoder's mean (and std) grow by k, the decoder's input
    shrinks by k, so the decoded image of a latent is unchanged."""
    k = 1.0 / (SD1_SCALE * latents.std().item())
    quant = vae.quant_conv  # 8 output channels: 4 means, then 4 log-variances
    quant.weight[:4] *= k
    quant.bias[:4] *= k
    quant.bias[4:] += 2 * math.log(k)
    vae.post_quant_conv.weight *= 1.0 / k
    log(f"latents rescaled by {k:.4f}: scaled latent std {(latents * k * SD1_SCALE).std().item():.4f}")
    return latents * k


# -------------------------------------------------------------------------------------------- phase 3


def attribute_labels(scene: shapes.Scene) -> list[int]:
    """The scene's attributes as class indices (a caption that leaves one out still has its scene's label: the
    heads then learn the prior, which is what the caption says about it)."""
    return [list(shapes.COLOURS).index(scene.colour), list(shapes.COLOURS).index(scene.background),
            (shapes.POSITIONS + (None,)).index(scene.position), scene.count - 1, shapes.SHAPES.index(scene.shape),
            (shapes.SIZES + (None,)).index(scene.size)]


ATTRIBUTE_CLASSES = (len(shapes.COLOURS), len(shapes.COLOURS), len(shapes.POSITIONS) + 1, 2, len(shapes.SHAPES),
                     len(shapes.SIZES) + 1)


def caption_mean(states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The mean of the token states from the first word through the end-of-text token."""
    eos = (ids == 49407).int().argmax(dim=1)
    positions = torch.arange(ids.shape[1])[None, :]
    mask = ((positions >= 1) & (positions <= eos[:, None])).float()[..., None]
    return (states * mask).sum(1) / mask.sum(1)


def pretrain_text_encoder(te, steps: int, rng: random.Random, log: Log) -> None:
    heads = torch.nn.ModuleList(torch.nn.Linear(TEXT["hidden"], n) for n in ATTRIBUTE_CLASSES)
    opt = torch.optim.AdamW(list(te.parameters()) + list(heads.parameters()), lr=2e-3, weight_decay=0.0)
    text = TextCache()
    te.train()
    for step in range(steps):
        scenes = [shapes.random_scene(rng) for _ in range(256)]
        ids = text([shapes.caption(s, rng) for s in scenes])
        pooled = caption_mean(te(ids).last_hidden_state, ids)
        labels = torch.tensor([attribute_labels(s) for s in scenes])
        logits = [head(pooled) for head in heads]
        loss = sum(F.cross_entropy(x, labels[:, j]) for j, x in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.point("text", step, loss.item())
            accuracy = " ".join(f"{(x.argmax(1) == labels[:, j]).float().mean().item():.2f}"
                                for j, x in enumerate(logits))
            log(f"text step {step}/{steps} loss {loss.item():.4f} attribute accuracy {accuracy}")


# -------------------------------------------------------------------------------------------- phase 4


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class TextCache:
    def __init__(self):
        self.tok = tokenizer()
        self.ids: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        for t in texts:
            if t not in self.ids:
                self.ids[t] = self.tok(t, padding="max_length", max_length=77, truncation=True).input_ids
        return torch.tensor([self.ids[t] for t in texts])


def train_denoiser(te, unet, vae, scenes, latents, args, rng: random.Random, log: Log):
    steps, batch = args.unet_steps, args.batch
    te.requires_grad_(False)
    te.eval()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    ac = alphas_cumprod()
    text = TextCache()
    latents = latents * SD1_SCALE
    unet.train()
    smooth = None
    gen = torch.Generator().manual_seed(args.seed + 3)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * cosine_lr(step, steps, 150)
        index = [rng.randrange(len(scenes)) for _ in range(batch)]
        captions = ["" if rng.random() < 0.1 else shapes.caption(scenes[i], rng) for i in index]
        x0 = latents[index]
        u = torch.rand(batch, generator=gen)
        u = torch.where(torch.rand(batch, generator=gen) < 0.5, u, 0.5 + 0.5 * u)
        t = (u * 1000).long().clamp(max=999)
        noise = torch.randn(x0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            cond = te(text(captions)).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        snr = ac[t] / (1 - ac[t])
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            log.point("unet", step, smooth)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {smooth:.5f}")
        if args.snapshots and step % 500 == 499:
            snapshot(te, unet, vae, params, ema, args.snapshots / f"step-{step + 1}", args, log)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()


def snapshot(te, unet, vae, params, ema, out: pathlib.Path, args, log: Log) -> None:
    """Exports the EMA weights so far (for watching a long run), then puts the training weights back."""
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for e, p in zip(ema, params):
            p.copy_(e)
        export(te, unet, vae, out, args, log)
        for s, p in zip(saved, params):
            p.copy_(s)


# ----------------------------------------------------------------------------------------- evaluation

EVAL_PROMPTS = [
    ("a red circle on a blue background", dict(colour="red", background="blue")),
    ("a yellow star on a black background", dict(colour="yellow", background="black")),
    ("a green square on a white background, left", dict(colour="green", background="white", position="left")),
    ("a blue triangle on a yellow background, right", dict(colour="blue", background="yellow", position="right")),
    ("a small purple circle on an orange background, top", dict(colour="purple", position="top")),
    ("a large white square on a red background, bottom", dict(colour="white", position="bottom")),
    ("two orange circles on a blue background", dict(colour="orange", count=2)),
    ("two black squares on a white background", dict(colour="black", count=2)),
]


@torch.no_grad()
def sample(te, unet, vae, prompt: str, seed: int, steps: int = 20, cfg: float = 7.0) -> np.ndarray:
    """DDIM (eta 0) with classifier-free guidance: a quick check, not sdrt's sampler."""
    text = TextCache()
    cond = te(text([prompt, ""])).last_hidden_state
    ac = alphas_cumprod()
    x = torch.randn((1, 4, shapes.SIZE // 8, shapes.SIZE // 8), generator=torch.Generator().manual_seed(seed))
    ts = list(range(999, -1, -1000 // steps))[:steps]
    for i, t in enumerate(ts):
        eps_c, eps_u = unet(torch.cat([x, x]), torch.tensor([t, t]), encoder_hidden_states=cond).sample.chunk(2)
        eps = eps_u + cfg * (eps_c - eps_u)
        a = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    image = vae.decode(x / SD1_SCALE).sample[0].clamp(-1, 1)
    return ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def evaluate(te, unet, vae, log: Log, out: pathlib.Path) -> None:
    from PIL import Image

    hits = total = 0
    tiles = []
    for prompt, expect in EVAL_PROMPTS:
        for seed in (1, 2):
            pixels = sample(te, unet, vae, prompt, seed)
            tiles.append(pixels)
            reading = shapes.measure(pixels)
            got = dict(colour=reading.shape_colour, background=reading.background, position=reading.position,
                       count=reading.count)
            ok = all(got[k] == v for k, v in expect.items())
            hits += ok
            total += 1
            log(f"eval {'ok ' if ok else 'BAD'} seed {seed} '{prompt}': {got}")
    log(f"eval: {hits}/{total} readings agree with the prompt (quick DDIM sampler)")
    grid = np.concatenate([np.concatenate(tiles[r * 4:(r + 1) * 4], axis=1) for r in range(len(tiles) // 4)])
    Image.fromarray(grid).save(out / "eval-grid.png")


# ----------------------------------------------------------------------------------------------- main


def export(te, unet, vae, out: pathlib.Path, args, log: Log) -> None:
    import gen_checkpoints as gc

    state = gc.ldm_state(types.SimpleNamespace(unet=unet, vae=vae, text_encoder=te), "sd1")
    state = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    metadata = {"sdrt.demo": json.dumps(dict(seed=args.seed, threads=args.threads, scale=args.scale,
                                             vae_steps=args.vae_steps, pool=args.pool, text_steps=args.text_steps,
                                             unet_steps=args.unet_steps, batch=args.batch, lr=args.lr,
                                             unet_channels=args.unet_channels, unet_heads=args.unet_heads))}
    path = out / f"{NAME}.safetensors"
    save_file(state, str(path), metadata=metadata)
    yaml = ["model:", "  params:", f"    image_size: {shapes.SIZE // 8}", "    unet_config:", "      params:",
            f"        num_heads: {args.unet_heads}",
            "sdrt:", f"  norm_groups: {NORM_GROUPS}", f"  text_encoder_heads: [{TEXT['heads']}]"]
    (out / f"{NAME}.yaml").write_text("\n".join(yaml) + "\n")
    params = sum(v.numel() for v in state.values())
    log(f"wrote {path.name}: {params} parameters, {path.stat().st_size} bytes")


def main() -> None:
    args = parse_args()
    for name in ("vae_steps", "pool", "text_steps", "unet_steps"):
        setattr(args, name, max(2, round(getattr(args, name) * args.scale)))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    log = Log(args.out)
    log(f"args: {vars(args)} torch {torch.__version__}")
    args.unet_channels = [int(c) for c in args.unet_channels.split(",")]
    te, unet, vae = build_models(args.unet_channels, args.unet_heads)
    for name, m in (("text encoder", te), ("unet", unet), ("vae", vae)):
        log(f"{name}: {sum(p.numel() for p in m.parameters())} parameters")
    train_vae(vae, args.vae_steps, args.vae_batch, random.Random(args.seed + 1), log)
    scenes, latents = encode_pool(vae, args.pool, random.Random(args.seed + 2), log)
    latents = rescale_latents(vae, latents, log)
    pretrain_text_encoder(te, args.text_steps, random.Random(args.seed + 4), log)
    train_denoiser(te, unet, vae, scenes, latents, args, rng, log)
    export(te, unet, vae, args.out, args, log)
    evaluate(te, unet, vae, log, args.out)
    log.write()


if __name__ == "__main__":
    main()
