"""The built-in synthetic dataset: colored shapes on varied canvases, with a caption true of the image.

Every sample is a pure function of (seed, index), so a dataset is reproducible, infinite
and needs no storage: training draws indices 0, 1, 2, ... and held-out sets use another seed.
Within each block of 48 consecutive indices every (color, shape) combination is the first
object of one image.

The distribution is deliberately broad (issue 16, "A demo model that generalizes"): the first demo
model, trained on one shape of 50-90% of a 64-128 px square canvas, scored 98.9% on its own
generator and 64% on shapes drawn otherwise. So here: canvases 48-1024 px with aspect ratios up
to 3:1, drawn at that size and squashed by the checkpoint's own resize as a served image is;
shapes of 10-90% of the short side anywhere, partly cut by the edge, any rotation, filled or
outlined; colors drawn from a range of hues per name; solid, gradient, noise, stripe, blob,
cloud and checker backgrounds, muted or saturated; blur, noise and JPEG down to quality 30;
up to three shapes of different colors, the caption naming one or two of them.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")

# A typical RGB per color name (what tests and examples draw with).
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
# What each name covers, as (hue degrees, saturation, value) ranges, drawn uniformly. Wide enough
# to hold the common spellings of the name: CSS red (0°), crimson (348°), orange (39°),
# gold (51°), yellow (60°), green (120°, value 0.5) and lime, blue (240°), purple (300°, value 0.5).
COLOR_RANGES = {
    "red": ((-12, 8), (0.65, 1.0), (0.55, 1.0)),
    "orange": ((18, 38), (0.75, 1.0), (0.85, 1.0)),
    "yellow": ((47, 62), (0.65, 1.0), (0.85, 1.0)),
    "green": ((90, 150), (0.5, 1.0), (0.4, 0.95)),
    "blue": ((200, 242), (0.6, 1.0), (0.5, 1.0)),
    "purple": ((265, 302), (0.5, 1.0), (0.4, 0.9)),
    "black": ((0, 360), (0.0, 0.3), (0.0, 0.15)),
    "white": ((0, 360), (0.0, 0.06), (0.92, 1.0)),
}
COMBOS = tuple((color, shape) for color in COLORS for shape in SHAPES)

BACKGROUNDS = ("solid", "gradient", "radial", "noise", "stripes", "blobs", "clouds", "checker")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")

# Caption phrasings. {c} color, {s} shape; "a" becomes "an" before a vowel.
FULL_CAPTIONS = (
    "a {c} {s}", "{c} {s}", "a picture of a {c} {s}", "a photo of a {c} {s}", "this is a photo of a {c} {s}",
    "an image of a {c} {s}", "a drawing of a {c} {s}", "a {s} that is {c}", "a {c} colored {s}",
    "the {s} is {c}", "a simple {c} {s}", "one {c} {s}", "a {c} {s} shape", "there is a {c} {s} in the image",
    "a {s} in {c}", "a close up of a {c} {s}", "a {c} {s} icon", "a small drawing of a {c} {s}",
)
COLOR_CAPTIONS = (
    "{c}", "something {c}", "a {c} shape", "this is a photo of {c}", "a {c} object", "the color {c}",
    "a photo of something {c}",
)
SHAPE_CAPTIONS = (
    "{s}", "a {s}", "a {s} shape", "this is a photo of a {s}", "this is a photo of {s}", "a picture of a {s}",
    "the shape of a {s}",
)
PAIR_CAPTIONS = (
    "a {c} {s} and a {c2} {s2}", "{c} {s} and {c2} {s2}", "a {c} {s} next to a {c2} {s2}",
    "a {c} {s} with a {c2} {s2}",
)
# Probabilities of a caption naming both attributes, only the color, only the shape, two objects.
# Color is learned within a few hundred steps, shape much later, hence more shape-only captions.
CAPTION_KINDS = (("full", 0.6), ("color", 0.1), ("shape", 0.25), ("pair", 0.05))
OBJECT_COUNTS = ((1, 0.7), (2, 0.2), (3, 0.1))


@dataclass(frozen=True)
class Contrast:
    """Least contrast between a shape's color and every background color: RGB distance and brightness
    (luma, 0-255), or a large RGB distance alone (a yellow star on white is still findable)."""

    distance: float
    luma: float
    distance_alone: float


@dataclass(frozen=True)
class Scene:
    """The range a drawn image comes from. `stream` keys its random numbers, so each scene is its own
    reproducible stream."""

    long_side: tuple[float, float]  # canvas long side in pixels, log-uniform
    max_aspect: float  # canvas aspect ratios up to this (either orientation)
    size: tuple[float, float]  # a single shape's diameter over the canvas's short side
    backgrounds: tuple[str, ...]
    object_counts: tuple[tuple[int, float], ...]
    contrast: Contrast
    saturated_p: float  # chance of saturated background colors (else at most 50% saturation)
    outline_p: float  # chance of an outlined shape
    shown: float  # least share of a shape's radius kept inside the canvas (1: never cut by the edge)
    stream: int


# Everything a user might send (the module docstring).
BROAD = Scene((48, 1024), 3.0, (0.1, 0.9), BACKGROUNDS, OBJECT_COUNTS, Contrast(100.0, 50.0, 170.0), saturated_p=0.2,
              outline_p=0.25, shown=0.4, stream=2)
# The start of the curriculum (`ShapesPool`): the first demo generator's images, on which a small ViT
# learns shapes within a few thousand steps: one filled shape of 50-90% of a 64-128 px square canvas,
# whole, on a muted solid, gradient or grainy background well apart in brightness (its notes: "with
# colors alone, a small ViT learns shapes far more slowly"); blur, noise and JPEG as in BROAD. From
# scratch on BROAD alone the demo model learned colors within 600 steps and was still at chance on shapes
# after 1,500; a curriculum that began on larger shapes on wider canvases up to 1.5:1 did not start either
# within 2,000 steps, while on these images shapes were above chance after 750 (README, "The demo model").
# Curriculum learning: Bengio et al., ICML 2009.
EASY = Scene((64, 128), 1.0, (0.5, 0.9), ("solid", "gradient", "noise"), ((1, 1.0),), Contrast(150.0, 80.0, math.inf),
             saturated_p=0.0, outline_p=0.0, shown=1.0, stream=5)
# Between the two (`ShapesPool`'s middle pool, a fixed share of every batch after the easy phase): what a
# user first sends, the range the hidden set was measured on. The first demo model scored on that
# set as on bench/heldout_shapes.py's `clean` preset and far above its `issue` one (bench/results/
# demo_accuracy_first_model.md), so: one or two whole shapes of 25-80% of the short side, canvases of
# 64-800 px up to 2:1, a third of them on white or near-white paper (listed twice), some outlined.
MIDDLE = Scene((64, 800), 2.0, (0.25, 0.8), ("paper", "paper", "solid", "gradient", "radial", "noise"),
               ((1, 0.85), (2, 0.15)), Contrast(120.0, 60.0, 170.0), saturated_p=0.1, outline_p=0.15, shown=0.85,
               stream=7)


@dataclass(frozen=True)
class Thing:
    """One drawn object."""

    color: str
    shape: str


Term = tuple[str | None, str | None]  # (color, shape) an object must have; None: any


@dataclass(frozen=True)
class Caption:
    """A caption and what it asserts: every term is true of some object in the image."""

    text: str
    terms: tuple[Term, ...]

    @property
    def color(self) -> str | None:
        return self.terms[0][0]

    @property
    def shape(self) -> str | None:
        return self.terms[0][1]

    def describes(self, things: tuple[Thing, ...]) -> bool:
        return all(any((c is None or c == t.color) and (s is None or s == t.shape) for t in things)
                   for c, s in self.terms)


@dataclass(frozen=True)
class ShapeSample:
    image: Image.Image
    things: tuple[Thing, ...]  # the first is the block's (color, shape) combination
    background: str
    caption: Caption

    @property
    def color(self) -> str:
        return self.things[0].color

    @property
    def shape(self) -> str:
        return self.things[0].shape


def combo_of(seed: int, index: int) -> tuple[str, str]:
    """(color, shape) of a sample's first object: a fresh permutation of the 48 per block of 48."""
    block, position = divmod(index, len(COMBOS))
    return COMBOS[block_order(seed, block)[position]]


@lru_cache(maxsize=64)
def block_order(seed: int, block: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.random.default_rng([seed, block, 1]).permutation(len(COMBOS)))


def make_sample(seed: int, index: int, *, single: bool = False, scene: Scene = BROAD) -> ShapeSample:
    """Sample `index` of stream `seed` drawn from `scene`; `single`: one object only (for held-out
    classification)."""
    color, shape = combo_of(seed, index)
    rng = np.random.default_rng([seed, index, scene.stream])
    count = 1 if single else int(choose(rng, scene.object_counts))
    others = rng.permutation([c for c in COLORS if c != color])[: count - 1]
    things = (Thing(color, shape), *(Thing(str(c), SHAPES[int(rng.integers(len(SHAPES)))]) for c in others))
    image, background, things = render(rng, things, scene)
    return ShapeSample(image, things, background, make_caption(rng, things))


def choose(rng: np.random.Generator, weighted: tuple[tuple[object, float], ...]) -> object:
    names, weights = zip(*weighted, strict=True)
    return names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]


def canvas_size(rng: np.random.Generator, scene: Scene) -> tuple[int, int]:
    """(width, height): long side log-uniform in the scene's range, aspect ratio 1 (a third of the time)
    or log-uniform up to its `max_aspect`, either orientation; the short side at least 32 px."""
    long_side = math.exp(rng.uniform(math.log(scene.long_side[0]), math.log(scene.long_side[1])))
    aspect = 1.0 if rng.uniform() < 1 / 3 else math.exp(rng.uniform(0, math.log(scene.max_aspect)))
    short_side = max(32, round(long_side / aspect))
    return (round(long_side), short_side) if rng.uniform() < 0.5 else (short_side, round(long_side))


def named_color(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = COLOR_RANGES[name]
    rgb = colorsys.hsv_to_rgb((rng.uniform(h0, h1) % 360) / 360, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return tuple(int(round(255 * x)) for x in rgb)  # type: ignore[return-value]


def contrasting_colors(rng: np.random.Generator, fills: list[tuple[int, int, int]], count: int, *,
                       saturated: bool, contrast: Contrast) -> np.ndarray:
    """[count, 3] random background colors, each contrasting with every fill (rejection sampling).
    Muted: at most 50% saturation; saturated: any. Three fills can leave no color that contrasts with
    all of them enough (black, white and a mid-gray green in brightness): then, after every 20 rounds of
    64 candidates, the contrast asked for shrinks by a fifth."""
    chosen: list[np.ndarray] = []
    rounds = 0
    while len(chosen) < count:
        rounds += 1
        if rounds % 20 == 0:
            contrast = Contrast(contrast.distance * 0.8, contrast.luma * 0.8, contrast.distance_alone * 0.8)
        rgb = rng.uniform(0, 255, size=(64, 3))
        if not saturated:
            rgb += (rgb.mean(axis=1, keepdims=True) - rgb) * rng.uniform(0.5, 1.0, size=(64, 1))
        chosen += list(rgb[contrasting(rgb, fills, contrast)][: count - len(chosen)])
    return np.array(chosen, dtype=np.float32)


def contrasting(rgb: np.ndarray, fills: list[tuple[int, int, int]], contrast: Contrast) -> np.ndarray:
    """[len(rgb)] bool: each candidate background color contrasts enough with every fill."""
    targets = np.array(fills, dtype=float)
    distance = np.linalg.norm(rgb[:, None] - targets[None], axis=2)
    luma = np.abs((rgb @ LUMA)[:, None] - (targets @ LUMA)[None])
    return (((distance >= contrast.distance) & (luma >= contrast.luma))
            | (distance >= contrast.distance_alone)).all(axis=1)


def paper_color(rng: np.random.Generator) -> np.ndarray:
    """White or near-white, slightly tinted: printer paper, a slide, a drawing app's canvas."""
    return np.clip(rng.uniform(225, 255) + rng.uniform(-6, 6, size=3), 0, 255).astype(np.float32)


def background(rng: np.random.Generator, kind: str, size: tuple[int, int], colors: np.ndarray) -> Image.Image:
    """An RGB background of `kind` at `size`, made of `colors` (>= 2 rows). Smooth kinds are drawn
    small and resized up: the same picture at a fraction of the cost on a 1024 px canvas."""
    width, height = size
    first, second = colors[0], colors[1]
    if kind in ("solid", "paper"):
        return Image.new("RGB", size, tuple(int(v) for v in first))
    if kind in ("gradient", "radial"):
        grid = 64
        y, x = np.mgrid[0:grid, 0:grid].astype(np.float32) / (grid - 1)
        if kind == "gradient":
            angle = rng.uniform(0, 2 * math.pi)
            t = x * math.cos(angle) + y * math.sin(angle)
        else:
            cx, cy = rng.uniform(0, 1, size=2)
            t = np.hypot(x - cx, y - cy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return small_to(first + (second - first) * t[..., None], size, Image.BILINEAR)
    if kind == "noise":  # gaussian around one color, per pixel or in blocks (coarser on big canvases: cheaper)
        block = int(rng.choice([1, 2, 4, 8])) * max(1, max(size) // 256)
        cells = rng.standard_normal((-(-height // block), -(-width // block), 3), dtype=np.float32)
        return small_to(first + cells * rng.uniform(8, 30), size, Image.NEAREST)
    if kind == "stripes":
        period = rng.uniform(0.05, 0.3) * max(size)
        angle = rng.uniform(0, math.pi)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = (x * math.cos(angle) + y * math.sin(angle)) / period
        return Image.fromarray(np.where((phase % 1.0)[..., None] < 0.5, first, second).astype(np.uint8), "RGB")
    if kind == "checker":
        cell = max(2, int(rng.uniform(0.04, 0.2) * max(size)))
        y, x = np.mgrid[0:height, 0:width]
        return Image.fromarray(np.where((((x // cell) + (y // cell)) % 2)[..., None] == 0, first,
                                        second).astype(np.uint8), "RGB")
    if kind == "blobs":  # large, very soft patches of the background colors (sharp ones would be shapes)
        image = Image.new("RGB", (96, 96), tuple(int(v) for v in first))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            color = colors[int(rng.integers(len(colors)))]
            x0, y0 = rng.uniform(-40, 96, size=2)
            w, h = rng.uniform(30, 90, size=2)
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in color))
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(5, 10))).resize(size, Image.BILINEAR)
    # clouds: smooth noise in two colors, like an out-of-focus photo
    cells = rng.standard_normal((int(rng.integers(3, 9)),) * 2).astype(np.float32)
    t = np.asarray(Image.fromarray(cells, "F").resize((64, 64), Image.BICUBIC))
    t = np.clip((t - t.min()) / max(float(t.max() - t.min()), 1e-6), 0, 1)
    return small_to(first + (second - first) * t[..., None], size, Image.BILINEAR)


def small_to(pixels: np.ndarray, size: tuple[int, int], resample: int) -> Image.Image:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image if image.size == size else image.resize(size, resample)


def shape_points(shape: str, center: np.ndarray, radius: float, angle: float, *,
                 arm: float = 0.32, inner: float = 0.42) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with circumradius `radius`, rotated by `angle` (radians);
    `arm`: half-width of a cross's arms, `inner`: a star's inner radius, both relative."""
    if shape == "cross":
        local = [(arm, 1), (arm, arm), (1, arm), (1, -arm), (arm, -arm), (arm, -1),
                 (-arm, -1), (-arm, -arm), (-1, -arm), (-1, arm), (-arm, arm), (-arm, 1)]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in local]
    elif shape == "star":
        polar = [(1.0 if k % 2 == 0 else inner, k * math.pi / 5) for k in range(10)]
    else:
        sides = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
        polar = [(1.0, k * 2 * math.pi / sides) for k in range(sides)]
    scale = radius / max(r for r, _ in polar)
    return [(center[0] + scale * r * math.cos(a + angle), center[1] + scale * r * math.sin(a + angle))
            for r, a in polar]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, center: np.ndarray, radius: float, angle: float,
               fill: tuple[int, int, int] | int, **proportions: float) -> None:
    if shape == "circle":
        r = radius * 0.85  # about the area of the polygons of the same circumradius
        draw.ellipse((center[0] - r, center[1] - r, center[0] + r, center[1] + r), fill=fill)
    else:
        draw.polygon(shape_points(shape, center, radius, angle, **proportions), fill=fill)


def place(rng: np.random.Generator, size: tuple[int, int], count: int,
          scene: Scene) -> list[tuple[np.ndarray, float]]:
    """(center, circumradius) per object: diameter in the scene's `size` range of the short side (at most
    55% when several), anywhere as long as its `shown` share of the radius stays inside (BROAD's 0.4: up to
    ~30% of it may be cut by the edge), not overlapping."""
    short = min(size)
    smallest, largest = scene.size[0], scene.size[1] if count == 1 else min(scene.size[1], 0.55)
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count):
        for _attempt in range(20):
            radius = short * rng.uniform(smallest, largest) / 2
            margin = radius * rng.uniform(scene.shown, 1.0)
            center = np.array([rng.uniform(margin, size[0] - margin), rng.uniform(margin, size[1] - margin)])
            if all(np.hypot(*(center - c)) > 1.05 * (radius + r) for c, r in placed):
                placed.append((center, radius))
                break
    return placed


def render(rng: np.random.Generator, things: tuple[Thing, ...],
           scene: Scene = BROAD) -> tuple[Image.Image, str, tuple[Thing, ...]]:
    """Draw the objects (those that fit without overlapping; always the first) on a contrasting
    background, then blur, noise and JPEG; returns (image, background kind, the objects drawn)."""
    size = canvas_size(rng, scene)
    fills = [named_color(rng, t.color) for t in things]
    kind = scene.backgrounds[int(rng.integers(len(scene.backgrounds)))]
    colors = contrasting_colors(rng, fills, int(rng.integers(2, 5)), saturated=rng.uniform() < scene.saturated_p,
                                contrast=scene.contrast)
    if kind == "paper":
        paper = paper_color(rng)
        if contrasting(paper[None], fills, scene.contrast).all():
            colors = np.array([paper, paper])
        else:  # a white shape (or a pale yellow one) cannot be drawn on white paper
            kind = "solid"
    image = background(rng, kind, size, colors)
    placed = place(rng, size, len(things), scene)
    for thing, fill, (center, radius) in zip(things, fills, placed, strict=False):
        mask = Image.new("L", size, 0)
        draw = ImageDraw.Draw(mask)
        angle = rng.uniform(0, 2 * math.pi)
        proportions = {"arm": rng.uniform(0.22, 0.4), "inner": rng.uniform(0.36, 0.52)}
        draw_shape(draw, thing.shape, center, radius, angle, 255, **proportions)
        if rng.uniform() < scene.outline_p:  # outlined: cut out the same shape, smaller
            inner = radius * (1 - rng.uniform(0.15, 0.35))
            draw_shape(draw, thing.shape, center, inner, angle, 0, **proportions)
        image.paste(fill, (0, 0), mask)
    return degrade(rng, image), kind, things[: len(placed)]


def degrade(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Blur (0.3-1.5 px across the short side as a 64 px input sees it), pixel noise, JPEG at quality 30-95."""
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * max(1.0, min(image.size) / 64)))
    if rng.uniform() < 0.25:
        noise = rng.standard_normal((image.size[1], image.size[0], 3), dtype=np.float32) * rng.uniform(3, 15)
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    return jpeg(image, int(rng.integers(30, 96))) if rng.uniform() < 0.75 else image


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


def make_caption(rng: np.random.Generator, things: tuple[Thing, ...],
                 kinds: tuple[tuple[str, float], ...] = CAPTION_KINDS) -> Caption:
    """A caption true of the image: of one object (a random one), or of two when there are two."""
    kind = choose(rng, kinds)
    first = things[int(rng.integers(len(things)))]
    if kind == "pair" and len(things) > 1:
        a, b = (things[int(i)] for i in rng.permutation(len(things))[:2])
        text = pick(rng, PAIR_CAPTIONS).format(c=a.color, s=a.shape, c2=b.color, s2=b.shape)
        return Caption(with_article(text), ((a.color, a.shape), (b.color, b.shape)))
    if kind == "color":
        return Caption(with_article(pick(rng, COLOR_CAPTIONS).format(c=first.color)), ((first.color, None),))
    if kind == "shape":
        return Caption(with_article(pick(rng, SHAPE_CAPTIONS).format(s=first.shape)), ((None, first.shape),))
    return full_caption(rng, first.color, first.shape)


def full_caption(rng: np.random.Generator, color: str, shape: str) -> Caption:
    return Caption(with_article(pick(rng, FULL_CAPTIONS).format(c=color, s=shape)), ((color, shape),))


def label_captions(rng: np.random.Generator) -> list[Caption]:
    """One caption per shape, per color and per (color, shape), each in a randomly drawn phrasing.

    Added to every training batch (`ShapesPool`), so that each image meets every shape and color
    name as a positive or a negative at every step, not only the ~1/8 of a batch that shares its color.
    """
    shapes = [Caption(with_article(pick(rng, SHAPE_CAPTIONS).format(s=s)), ((None, s),)) for s in SHAPES]
    colors = [Caption(with_article(pick(rng, COLOR_CAPTIONS).format(c=c)), ((c, None),)) for c in COLORS]
    return shapes + colors + [full_caption(rng, c, s) for c, s in COMBOS]


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption_corpus() -> list[str]:
    """Every caption the dataset can produce with one object, and pairs in each phrasing for a few
    combinations: the tokenizer's training text."""
    lines = [template.format(c=c, s=s) for c, s in COMBOS for template in FULL_CAPTIONS]
    lines += [t.format(c=c) for t in COLOR_CAPTIONS for c in COLORS]
    lines += [t.format(s=s) for t in SHAPE_CAPTIONS for s in SHAPES]
    lines += [t.format(c=c, s=s, c2=c2, s2=s2) for t in PAIR_CAPTIONS for (c, s), (c2, s2) in zip(
        COMBOS, COMBOS[7:] + COMBOS[:7], strict=True)]
    return [with_article(line) for line in lines]
