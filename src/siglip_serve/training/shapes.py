"""The built-in synthetic dataset: one colored shape per image, with a caption that names it.

Every sample is a pure function of (seed, index), so a dataset is reproducible, infinite
and needs no storage: training draws indices 0, 1, 2, ... and held-out sets use another seed.
Within each block of 48 consecutive indices every (color, shape) combination occurs once.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")

# Base RGB per color name; each image jitters it by up to +-JITTER per channel.
COLORS = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "orange": (250, 135, 20),
    "purple": (135, 50, 175),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
}
COMBOS = tuple((color, shape) for color in COLORS for shape in SHAPES)
JITTER = 18

BACKGROUNDS = ("solid", "gradient", "noise")
MIN_CONTRAST = 150.0  # least RGB distance between the shape's color and any background base color
MIN_LUMA_CONTRAST = 80.0  # least brightness difference (0-255 luma) between them
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")
DARK_BELOW, LIGHT_ABOVE = 80.0, 175.0  # mean background luminance that captions may call dark/light

# Caption phrasings. {c} color, {s} shape, {bg} "dark"/"light"; "a" becomes "an" before a vowel.
# Most name both; some name one attribute, so single-attribute labels ("red", "circle") work too.
FULL_CAPTIONS = (
    "a {c} {s}", "{c} {s}", "a picture of a {c} {s}", "a photo of a {c} {s}", "this is a photo of a {c} {s}",
    "an image of a {c} {s}", "a drawing of a {c} {s}", "a {s} that is {c}", "a {c} colored {s}",
    "the {s} is {c}", "a simple {c} {s}", "one {c} {s}", "a {c} {s} shape", "there is a {c} {s} in the image",
    "a {s} in {c}", "a close up of a {c} {s}", "a {c} {s} icon", "a small drawing of a {c} {s}",
)
BACKGROUND_CAPTIONS = ("a {c} {s} on a {bg} background", "{c} {s} on a {bg} background")
COLOR_CAPTIONS = (
    "{c}", "something {c}", "a {c} shape", "this is a photo of {c}", "a {c} object", "the color {c}",
    "a photo of something {c}",
)
SHAPE_CAPTIONS = (
    "{s}", "a {s}", "a {s} shape", "this is a photo of a {s}", "this is a photo of {s}", "a picture of a {s}",
    "the shape of a {s}",
)
# Probabilities of a caption naming both attributes, only the color, only the shape.
# Color is learned within a few hundred steps, shape much later, hence more shape-only captions.
CAPTION_KINDS = (("full", 0.65), ("color", 0.1), ("shape", 0.25))


class Drawn(Protocol):
    """What an image shows, as far as captions can tell."""

    color: str
    shape: str
    background_tone: str | None


@dataclass(frozen=True)
class Caption:
    """A caption and what it asserts about the image (None: says nothing about that attribute)."""

    text: str
    color: str | None
    shape: str | None
    background: str | None = None  # "dark" or "light"

    def describes(self, sample: Drawn) -> bool:
        return (
            (self.color is None or self.color == sample.color)
            and (self.shape is None or self.shape == sample.shape)
            and (self.background is None or self.background == sample.background_tone)
        )


@dataclass(frozen=True)
class ShapeSample:
    image: Image.Image
    color: str
    shape: str
    background: str  # solid, gradient or noise
    background_tone: str | None  # "dark", "light" or None when neither
    caption: Caption


def combo_of(seed: int, index: int) -> tuple[str, str]:
    """(color, shape) of a sample: a fresh permutation of the 48 combinations per block of 48."""
    block, position = divmod(index, len(COMBOS))
    return COMBOS[block_order(seed, block)[position]]


@lru_cache(maxsize=64)
def block_order(seed: int, block: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.default_rng([seed, block, 1]).permutation(len(COMBOS)))


def make_sample(seed: int, index: int, *, caption_kinds: tuple[tuple[str, float], ...] = CAPTION_KINDS) -> ShapeSample:
    color, shape = combo_of(seed, index)
    rng = np.random.default_rng([seed, index, 2])
    image, background, tone = render(rng, color, shape)
    caption = make_caption(rng, color, shape, tone, caption_kinds)
    return ShapeSample(image, color, shape, background, tone, caption)


def render(rng: np.random.Generator, color: str, shape: str) -> tuple[Image.Image, str, str | None]:
    """Draw the shape on a contrasting background, JPEG-compressed; returns (image, kind, tone)."""
    side = int(rng.integers(64, 129))
    fill = jittered(rng, COLORS[color])
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    pixels, mean_color = background_pixels(rng, background, side, fill)
    brightness = float(mean_color @ LUMA)
    tone = "dark" if brightness < DARK_BELOW else "light" if brightness > LIGHT_ABOVE else None
    image = Image.fromarray(pixels, "RGB")
    radius = side * rng.uniform(0.25, 0.45)
    center = rng.uniform(radius, side - radius, size=2)
    draw_shape(ImageDraw.Draw(image), shape, center, radius, rng.uniform(0, 2 * math.pi), fill)
    return jpeg(image, int(rng.integers(30, 96))), background, tone


def jittered(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    values = np.clip(np.array(rgb) + rng.integers(-JITTER, JITTER + 1, size=3), 0, 255)
    return int(values[0]), int(values[1]), int(values[2])


def contrasting_color(rng: np.random.Generator, fill: tuple[int, int, int]) -> np.ndarray:
    """A random, muted color that contrasts with the shape's: in color (RGB distance) and in brightness.

    Brightness contrast in both directions (dark shape on light, light on dark) keeps the figure
    findable whatever the two colors are; with colors alone, a small ViT learns shapes far more slowly.
    """
    target = np.array(fill, dtype=float)
    while True:  # rejection sampling, 32 candidates at a time
        rgb = rng.uniform(0, 255, size=(32, 3))
        rgb += (rgb.mean(axis=1, keepdims=True) - rgb) * rng.uniform(0.5, 1.0, size=(32, 1))  # keep <= 50% saturation
        ok = (np.linalg.norm(rgb - target, axis=1) >= MIN_CONTRAST) & (
            np.abs(rgb @ LUMA - target @ LUMA) >= MIN_LUMA_CONTRAST)
        if ok.any():
            return rgb[int(np.argmax(ok))]


def background_pixels(rng: np.random.Generator, kind: str, side: int,
                      fill: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """[side, side, 3] uint8 pixels and their (expected) mean color."""
    first = contrasting_color(rng, fill).astype(np.float32)
    mean = first
    if kind == "solid":
        pixels = np.broadcast_to(first, (side, side, 3))
    elif kind == "gradient":  # linear from `first` to `second` along a random direction
        second = contrasting_color(rng, fill).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(0, 1, side, dtype=np.float32)
        t = ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = first + (second - first) * t[..., None]
        mean = (first + second) / 2
    else:  # noise: gaussian, per pixel or in blocks, around a contrasting base color
        block = int(rng.choice([1, 2, 4, 8]))
        cells = -(-side // block)
        noise = rng.standard_normal((cells, cells, 3), dtype=np.float32) * rng.uniform(10, 30)
        noise = noise.repeat(block, axis=0).repeat(block, axis=1)[:side, :side]
        pixels = first + noise
    return np.clip(pixels, 0, 255).astype(np.uint8), mean


def shape_points(shape: str, center: np.ndarray, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with circumradius `radius`, rotated by `angle`."""
    if shape == "cross":
        arm = 0.32
        local = [(arm, 1), (arm, arm), (1, arm), (1, -arm), (arm, -arm), (arm, -1),
                 (-arm, -1), (-arm, -arm), (-1, -arm), (-1, arm), (-arm, arm), (-arm, 1)]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in local]
    elif shape == "star":
        polar = [(1.0 if k % 2 == 0 else 0.42, k * math.pi / 5) for k in range(10)]
    else:
        sides = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
        polar = [(1.0, k * 2 * math.pi / sides) for k in range(sides)]
    scale = radius / max(r for r, _ in polar)
    return [(center[0] + scale * r * math.cos(a + angle), center[1] + scale * r * math.sin(a + angle))
            for r, a in polar]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, center: np.ndarray, radius: float, angle: float,
               fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        r = radius * 0.85  # about the area of the polygons of the same circumradius
        draw.ellipse((center[0] - r, center[1] - r, center[0] + r, center[1] + r), fill=fill)
    else:
        draw.polygon(shape_points(shape, center, radius, angle), fill=fill)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def with_article(text: str) -> str:
    """'a orange' -> 'an orange', 'a hexagon' stays."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "an"):
            words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
    return " ".join(words)


def make_caption(rng: np.random.Generator, color: str, shape: str, tone: str | None,
                 kinds: tuple[tuple[str, float], ...] = CAPTION_KINDS) -> Caption:
    names, weights = zip(*kinds, strict=True)
    kind = names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]
    if kind == "color":
        return Caption(with_article(pick(rng, COLOR_CAPTIONS).format(c=color)), color, None)
    if kind == "shape":
        return Caption(with_article(pick(rng, SHAPE_CAPTIONS).format(s=shape)), None, shape)
    if tone is not None and rng.uniform() < 0.25:
        text = pick(rng, BACKGROUND_CAPTIONS).format(c=color, s=shape, bg=tone)
        return Caption(with_article(text), color, shape, tone)
    return Caption(with_article(pick(rng, FULL_CAPTIONS).format(c=color, s=shape)), color, shape)


def label_captions(rng: np.random.Generator) -> list[Caption]:
    """One caption per shape, per color and per (color, shape), each in a randomly drawn phrasing.

    Added to every training batch (`ShapesPool`), so that each image meets every shape and color
    name as a positive or a negative at every step, not only the ~1/8 of a batch that shares its color.
    """
    shapes = [Caption(with_article(pick(rng, SHAPE_CAPTIONS).format(s=s)), None, s) for s in SHAPES]
    colors = [Caption(with_article(pick(rng, COLOR_CAPTIONS).format(c=c)), c, None) for c in COLORS]
    combos = [Caption(with_article(pick(rng, FULL_CAPTIONS).format(c=c, s=s)), c, s) for c, s in COMBOS]
    return shapes + colors + combos


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption_corpus() -> list[str]:
    """Every caption the dataset can produce, plus the default template: the tokenizer's training text."""
    lines = []
    for color, shape in COMBOS:
        for template in FULL_CAPTIONS:
            lines.append(template.format(c=color, s=shape))
        for template in BACKGROUND_CAPTIONS:
            lines.extend(template.format(c=color, s=shape, bg=tone) for tone in ("dark", "light"))
    lines += [t.format(c=c) for t in COLOR_CAPTIONS for c in COLORS]
    lines += [t.format(s=s) for t in SHAPE_CAPTIONS for s in SHAPES]
    return [with_article(line) for line in lines]
