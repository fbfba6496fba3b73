"""Images and prompts for calibrating full int8 and for checking any quantization against float32.

Images: the user's directory (`--calibration DIR`: its image files, sorted by path; every fifth one is
held out for the check, the rest calibrate), else a synthetic set documented here: `SYNTHETIC_IMAGES`
photo-like 320x240 images, each 1/f ("pink") colour noise under a few soft-edged ellipses and
rectangles, seeded 0, 1, 2, ... (the same construction as bench/common.py `photo_like`, smaller).
The synthetic set is a stand-in: it exercises the activation ranges of natural-image statistics, not
of your data, so the held-out check on it says nothing about your images. Give a directory of real
ones for a check that does.

Prompts (text tower check): "a photo of a {noun}." over `NOUNS`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from siglip_serve.errors import InvalidParameterError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SYNTHETIC_IMAGES = 80  # 64 calibrate (the measured setting) and 16 are held out
HOLD_OUT_EVERY = 5
MIN_IMAGES = 10  # at least 8 to calibrate and 2 to check
MAX_CALIBRATION = 300  # NNCF's default subset_size
NOUNS = ("cat", "dog", "car", "bird", "tree", "house", "bicycle", "boat", "train", "flower", "apple", "pizza",
         "chair", "clock", "phone", "book", "airplane", "horse", "bus", "mountain", "river", "beach", "bridge",
         "guitar", "lamp", "shoe", "hat", "bottle", "cup", "bear", "zebra", "robot")


@dataclass(frozen=True)
class CalibrationSet:
    calibrate: list[Any]  # image sources (paths or PIL images), for nncf.quantize
    held_out: list[Any]  # never calibrated on: the check against float32
    source: str  # for the log and the cache key


SYNTHETIC_SOURCE = f"synthetic-v1x{SYNTHETIC_IMAGES}"


def calibration_source(directory: str | Path | None) -> str:
    """What identifies the set (for the log and the cache key) without building it."""
    if directory is None:
        return SYNTHETIC_SOURCE
    root = Path(directory)
    paths = _image_paths(root)
    return f"{root.resolve()}: {len(paths)} images, sha256 {_digest(root, paths)}"


def calibration_set(directory: str | Path | None) -> CalibrationSet:
    images: list[Any] = ([synthetic_image(seed) for seed in range(SYNTHETIC_IMAGES)] if directory is None
                         else list(_image_paths(Path(directory))))
    held = [img for i, img in enumerate(images) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    calibrate = [img for i, img in enumerate(images) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    return CalibrationSet(calibrate[:MAX_CALIBRATION], held, calibration_source(directory))


def _image_paths(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InvalidParameterError(f"calibration directory {root} does not exist", param="calibration")
    paths = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if len(paths) < MIN_IMAGES:
        raise InvalidParameterError(f"calibration directory {root} has {len(paths)} images; "
                                    f"at least {MIN_IMAGES} are needed", param="calibration")
    return paths


def _digest(root: Path, paths: list[Path]) -> str:
    """Names and bytes of the calibration files: other images are another calibration (and cache key)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def prompts() -> list[str]:
    return [f"a photo of a {noun}." for noun in NOUNS]


def synthetic_image(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A deterministic photo-like image (see the module docstring)."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 7):  # amplitude ~ 1/f over octaves of 2..64 cells across
        cells = 2**octave
        small = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(small[..., c], "F").resize((width, height), Image.BICUBIC))
                          for c in range(3)], axis=-1)
        canvas += layer * (60.0 / octave)
    canvas += rng.uniform(60, 180, 3).astype(np.float32)  # a random mean colour per image
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):  # objects with edges
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1, y1 = x0 + int(rng.integers(width // 10, width // 3)), y0 + int(rng.integers(height // 10, height // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=0.6))
