"""The demo model's world: procedurally drawn shapes with A1111-style captions, and the measurements that
read a generated image back (shape colour, background colour, position, count).

The Rust meaning test (tests/tests/demo.rs) measures images with the same rules; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # the model's native image side (8×8 latents)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 130, 20),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("left", "right", "top", "bottom", "centre")
SIZES = ("small", "large")


@dataclasses.dataclass
class Scene:
    shape: str
    colour: str
    background: str
    size: str | None  # None: any size in between
    position: str | None  # None: anywhere (always None for two shapes)
    count: int


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    count = 2 if rng.random() < 0.25 else 1
    size = rng.choice(SIZES + (None,))
    position = rng.choice(POSITIONS + (None,)) if count == 1 else None
    return Scene(rng.choice(SHAPES), colour, background, size, position, count)


def caption(scene: Scene, rng: random.Random) -> str:
    """One of several A1111-style phrasings; attributes are sometimes left out (the image still fits)."""
    keep = lambda p: rng.random() < p  # noqa: E731
    words = []
    if scene.count == 2:
        words.append("two")
    elif keep(0.6):
        words.append(rng.choice(("a", "one")))
    if scene.size and keep(0.85):
        words.append(scene.size)
    if keep(0.92):
        words.append(scene.colour)
    noun = scene.shape if keep(0.9) else "shape"
    words.append(noun + ("s" if scene.count == 2 else ""))
    text = " ".join(words)
    if keep(0.85):
        text += rng.choice((f" on a {scene.background} background", f", {scene.background} background",
                            f" on {scene.background}"))
    if scene.position and keep(0.9):
        pos = scene.position if scene.position != "centre" or keep(0.7) else "center"
        text += rng.choice((f", {pos}", f", {pos}", f" on the {pos}" if pos in ("left", "right") else f", {pos}",
                            f" at the {pos}" if pos in ("top", "bottom") else f" in the {pos}"))
    return text


def _radius(scene: Scene, rng: random.Random) -> float:
    lo, hi = {"small": (0.11, 0.14), "large": (0.2, 0.25), None: (0.11, 0.25)}[scene.size]
    if scene.count == 2:
        hi = min(hi, 0.18)
        lo = min(lo, hi)
    # two shapes must fit side by side with a gap
    return rng.uniform(lo, hi) * SIZE


def _centre(position: str | None, r: float, rng: random.Random) -> tuple[float, float]:
    edge = lambda: rng.uniform(max(0.2 * SIZE, r + 0.04 * SIZE), max(0.32 * SIZE, r + 0.06 * SIZE))  # noqa: E731
    middle = lambda: rng.uniform(0.42 * SIZE, 0.58 * SIZE)  # noqa: E731
    if position == "left":
        return edge(), middle()
    if position == "right":
        return SIZE - edge(), middle()
    if position == "top":
        return middle(), edge()
    if position == "bottom":
        return middle(), SIZE - edge()
    if position == "centre":
        return middle(), middle()
    lo, hi = r + 0.04 * SIZE, SIZE - r - 0.04 * SIZE
    return rng.uniform(lo, hi), rng.uniform(lo, hi)


def _centres(scene: Scene, r: float, rng: random.Random) -> list[tuple[float, float]]:
    if scene.count == 1:
        return [_centre(scene.position, r, rng)]
    while True:
        a = _centre(None, r, rng)
        b = _centre(None, r, rng)
        if math.dist(a, b) > 2 * r + 0.08 * SIZE:
            return [a, b]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.88
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * 0.1 - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6,
                                                                               11 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            a = math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(a), cy - radius * math.sin(a)))
        return points
    return None


def draw(scene: Scene, rng: random.Random) -> np.ndarray:
    """The scene as an RGB uint8 array (SIZE×SIZE), drawn at 2× and box-filtered down for soft edges."""
    k = 2
    image = Image.new("RGB", (SIZE * k, SIZE * k), COLOURS[scene.background])
    pen = ImageDraw.Draw(image)
    r = _radius(scene, rng)
    for cx, cy in _centres(scene, r, rng):
        outline = _outline(scene.shape, cx, cy, r)
        fill = COLOURS[scene.colour]
        if outline is None:
            pen.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fill)
        else:
            pen.polygon([(x * k, y * k) for x, y in outline], fill=fill)
    return np.asarray(image.resize((SIZE, SIZE), Image.BOX))


# ------------------------------------------------------------------------------------------ measurements


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], rgb)))


@dataclasses.dataclass
class Reading:
    shape_colour: str
    background: str
    position: str
    count: int


def measure(pixels: np.ndarray) -> Reading:
    """Background: the median colour of a 4-pixel frame; shape: pixels farther than 80 from it (RGB
    distance), its colour the palette entry most of them are nearest to (soft outlines blend into the
    background, so a mean would drift); count: 4-connected blobs of at least 1 % of the image; position: the
    mask's centroid."""
    h, w, _ = pixels.shape
    px = pixels.astype(np.float64)
    frame = np.concatenate([px[:4].reshape(-1, 3), px[-4:].reshape(-1, 3), px[:, :4].reshape(-1, 3),
                            px[:, -4:].reshape(-1, 3)])
    background = np.median(frame, axis=0)
    mask = np.sqrt(((px - background) ** 2).sum(-1)) > 80
    if not mask.any():
        return Reading("none", nearest_colour(background), "none", 0)
    shape_colour = dominant_colour(px[mask])
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / w, ys.mean() / h
    if abs(cx - 0.5) < 0.12 and abs(cy - 0.5) < 0.12:
        position = "centre"
    elif abs(cx - 0.5) >= abs(cy - 0.5):
        position = "left" if cx < 0.5 else "right"
    else:
        position = "top" if cy < 0.5 else "bottom"
    return Reading(shape_colour, nearest_colour(background), position, _blobs(mask, h * w // 100))


def dominant_colour(pixels: np.ndarray) -> str:
    """The palette name most of `pixels` (N×3) are nearest to; ties go to the earlier palette entry."""
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
    return list(COLOURS)[int(np.bincount(nearest, minlength=len(COLOURS)).argmax())]


def _blobs(mask: np.ndarray, min_area: int) -> int:
    seen = np.zeros_like(mask)
    count = 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, area = [(y0, x0)], 0
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            area += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        count += area >= min_area
    return count
