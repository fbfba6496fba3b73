"""Training batches: the built-in shapes dataset, or a user's images with captions (JSONL or CSV).

Both give the same thing per step: pixel values preprocessed exactly as the serving path does
(the checkpoint's `ImageTransform`), the captions, and which (image, caption) pairs match.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import repeat
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from siglip_serve.errors import SiglipServeError
from siglip_serve.preprocess.images import ImageTransform, load_image
from siglip_serve.preprocess.text import TextCleaning, clean_text
from siglip_serve.training.shapes import (
    BROAD,
    COLORS,
    COMBOS,
    EASY,
    MIDDLE,
    SHAPES,
    Caption,
    Scene,
    Thing,
    label_captions,
    make_caption,
    make_sample,
)


class TrainingDataError(SiglipServeError):
    """A captions file that cannot be read, or that names missing images."""


@dataclass(frozen=True)
class Batch:
    pixel_values: torch.Tensor  # [B, 3, H, W] float32
    captions: list[str]  # T >= B: caption i was drawn for image i; any after B are extra texts
    positives: torch.Tensor  # [B, T] bool: caption j describes image i
    labels: torch.Tensor | None = None  # [B, len(LABELS)] float: 1 where image i shows the label (shapes data)


# What the shapes dataset's label head predicts (`TrainOptions.label_loss`): every shape, then every color.
LABELS = (*SHAPES, *COLORS)


class BatchSource(Protocol):
    def batch(self, step: int, size: int) -> Batch: ...


def stack_images(images: Sequence[Image.Image], transform: Callable[[Image.Image], np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([transform(image) for image in images]))


def resize_pixels(image: Image.Image, transform: ImageTransform) -> np.ndarray:
    """[H, W, 3] uint8: the resize step of `preprocess_image`, with the checkpoint's filter."""
    size = (transform.width, transform.height)
    return np.asarray(image if image.size == size else image.resize(size, resample=transform.resample))


def normalize_pixels(pixels: np.ndarray, transform: ImageTransform) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float32: the rest of `preprocess_image`, same arithmetic."""
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    scale = np.float32(transform.rescale_factor) / std
    normalized = pixels.astype(np.float32) * scale - mean / std
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))


COMBO_BIT = {combo: 1 << i for i, combo in enumerate(COMBOS)}  # 48 bits: fits an int64


@dataclass(frozen=True)
class ShapeFacts:
    """What a pool image shows, as far as captions can tell: its objects' colors and shapes."""

    things: tuple[Thing, ...]

    @property
    def mask(self) -> int:
        return sum({COMBO_BIT[(t.color, t.shape)] for t in self.things})

    @property
    def label_row(self) -> list[float]:
        """Multi-hot over LABELS: each shape and each color of any object in the image."""
        present = {t.shape for t in self.things} | {t.color for t in self.things}
        return [1.0 if label in present else 0.0 for label in LABELS]


@cache
def term_mask(color: str | None, shape: str | None) -> int:
    """The combinations an object may have for a caption term to be true of it."""
    return sum(bit for (c, s), bit in COMBO_BIT.items() if color in (None, c) and shape in (None, s))


def describes_matrix(captions: Sequence[Caption], facts: Sequence[ShapeFacts]) -> torch.Tensor:
    """[len(facts), len(captions)] bool: `caption.describes(fact.things)` for every pair, vectorized
    as bit masks over the 48 combinations (a term holds when one of the image's combinations is one
    it allows). A Python double loop costs ~17 ms per batch of 128 images x 190 texts, holding the
    GIL in the prefetch thread while the training step runs."""
    images = np.array([f.mask for f in facts], dtype=np.int64)[:, None]
    width = max(len(c.terms) for c in captions)
    every = term_mask(None, None)
    terms = np.array([[term_mask(*t) for t in c.terms] + [every] * (width - len(c.terms)) for c in captions],
                     dtype=np.int64)
    return torch.from_numpy(((images[:, :, None] & terms[None]) != 0).all(axis=2))


def render_pool_images(seed: int, start: int, stop: int, transform: ImageTransform,
                       scene: Scene = BROAD) -> tuple[np.ndarray, list]:
    samples = [make_sample(seed, index, scene=scene) for index in range(start, stop)]
    pixels = np.stack([resize_pixels(s.image, transform) for s in samples])
    return pixels, [ShapeFacts(s.things) for s in samples]


class ShapesPool:
    """A fixed pool of shapes images, drawn once, reused with fresh captions and random flips/rotations.

    Drawing an image (background, shape, JPEG round trip, resize) costs about as much as a training
    step of the small demo model spends on it, so re-using each one several times (in the demo recipe an
    easy image ~29 times, a middle one ~14 and a broad one ~2), each time under one of
    the 8 symmetries of the square (which change neither color nor shape) and with a newly drawn
    caption, nearly doubles the images per second. Pixels are stored after the checkpoint's resize,
    as uint8; normalization is `preprocess_image`'s own arithmetic.

    With `label_bank`, every batch also carries one caption per shape, color and combination
    (`label_captions`), a dense set of hard negatives: with it (and a faster temperature) the demo
    recipe's held-out shape accuracy went from 94.3% to 95.5% (README, "The demo model").

    With `curriculum_steps`, a second, smaller pool of easy images (`shapes.EASY`: one large shape on a
    plain background) makes up the whole of each batch until `easy_steps`, then a share falling linearly
    to none at `curriculum_steps`, and the broad pool the rest.

    With `middle_share`, that share of every batch's other slots comes from a third pool (`shapes.MIDDLE`:
    the range users send first), the broad pool the rest.
    """

    def __init__(self, transform: ImageTransform, *, seed: int = 0, size: int = 40_000, workers: int = 2,
                 label_bank: bool = False, easy_size: int = 0, curriculum_steps: int = 0, easy_steps: int = 0,
                 middle_size: int = 0, middle_share: float = 0.0, progress: bool = False) -> None:
        if not 0.0 <= middle_share <= 1.0:  # above 1 would make batches larger than asked
            raise ValueError(f"middle_share must be between 0 and 1, got {middle_share}")
        self.transform, self.seed, self.label_bank = transform, seed, label_bank
        self.curriculum_steps = curriculum_steps if easy_size else 0
        self.easy_steps = min(easy_steps, self.curriculum_steps)
        self.middle_share = middle_share if middle_size else 0.0
        self.pixels, self.facts = draw_pool(transform, seed, size, BROAD, workers, progress)
        self.easy_pixels, self.easy_facts = (draw_pool(transform, seed, easy_size, EASY, workers, progress)
                                             if self.curriculum_steps else (self.pixels[:0], []))
        self.middle_pixels, self.middle_facts = (draw_pool(transform, seed, middle_size, MIDDLE, workers, progress)
                                                 if self.middle_share else (self.pixels[:0], []))

    def easy_share(self, step: int) -> float:
        if step >= self.curriculum_steps:
            return 0.0
        if step < self.easy_steps:
            return 1.0
        return max(0.0, 1.0 - (step - self.easy_steps) / (self.curriculum_steps - self.easy_steps))

    def __len__(self) -> int:
        return len(self.facts)

    def batch(self, step: int, size: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, 4])
        easy = round(size * self.easy_share(step))
        middle = round((size - easy) * self.middle_share)
        # The broad pool keeps its epoch order (positions of easy and middle slots are skipped); easy and
        # middle images are drawn with replacement (a few thousand of them, each seen several times).
        sources = self.picks(self.easy_pixels, self.easy_facts, step, 6, easy)
        # Key 7 is also MIDDLE's image stream: the picks at step k reuse the generator that drew middle
        # image k. Harmless (an index pick, not pixels), and kept: another key changes the shipped bytes.
        sources += self.picks(self.middle_pixels, self.middle_facts, step, 7, middle)
        sources += [(self.pixels, self.facts, self.index(step * size + i)) for i in range(easy + middle, size)]
        pixels = np.stack([dihedral(pool[i], int(rng.integers(8))) for pool, _, i in sources])
        facts = [facts[i] for _, facts, i in sources]
        captions = [make_caption(rng, f.things) for f in facts]
        if self.label_bank:
            captions += label_captions(rng)
        # Several captions in a batch can truly describe one image (two red circles; "a circle" and
        # any circle). Treating them as negatives, as a plain identity target would, teaches the model
        # to push apart what it should pull together; so every true description is a positive.
        return Batch(normalize_pixels(pixels, self.transform), [c.text for c in captions],
                     describes_matrix(captions, facts), torch.tensor([f.label_row for f in facts]))

    def picks(self, pixels: np.ndarray, facts: list[ShapeFacts], step: int, key: int,
              count: int) -> list[tuple[np.ndarray, list[ShapeFacts], int]]:
        """`count` images of a side pool (easy or middle), drawn with replacement by the step's `key` stream."""
        chosen = np.random.default_rng([self.seed, step, key]).integers(len(facts), size=count)
        return [(pixels, facts, int(i)) for i in chosen]

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self))
        return int(epoch_order(self.seed, epoch, len(self))[offset])


def draw_pool(transform: ImageTransform, seed: int, size: int, scene: Scene, workers: int,
              progress: bool) -> tuple[np.ndarray, list[ShapeFacts]]:
    """[size, H, W, 3] uint8 pixels after the checkpoint's resize, and what each image shows."""
    chunks = [(start, min(start + 960, size)) for start in range(0, size, 960)]
    starts, stops = zip(*chunks, strict=True)
    if workers <= 1:
        jobs = map(render_pool_images, repeat(seed), starts, stops, repeat(transform), repeat(scene))
        parts = list(progress_over(jobs, total=len(chunks), enabled=progress))
    else:  # drawing is plain Python/PIL/numpy: processes, not threads
        context = get_context("fork") if "fork" in get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            jobs = pool.map(render_pool_images, repeat(seed), starts, stops, repeat(transform), repeat(scene))
            parts = list(progress_over(jobs, total=len(chunks), enabled=progress))
    return np.concatenate([pixels for pixels, _ in parts]), [fact for _, facts in parts for fact in facts]


def dihedral(pixels: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 symmetries of the square: a rotation by op % 4 quarter turns, mirrored if op >= 4."""
    rotated = np.rot90(pixels, k=op % 4)
    return rotated[:, ::-1] if op >= 4 else rotated


def progress_over(items: Iterable, *, total: int, enabled: bool) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(items, total=total, disable=not enabled, desc="drawing images", unit="chunk", leave=False)


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str


def read_captions(path: Path) -> list[CaptionedImage]:
    """Rows of `image` (a path, relative to the captions file) and `caption`, from .jsonl or .csv."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"captions file {str(path)!r} does not exist")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    else:
        raise TrainingDataError(f"{path}: expected a .jsonl or .csv file of image paths and captions")
    items = []
    for where, row in rows:
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image or not isinstance(caption, str) or not caption.strip():
            raise TrainingDataError(f"{where}: expected a non-empty 'image' path and 'caption' text")
        image_path = (path.parent / image).expanduser()
        if not image_path.is_file():
            raise TrainingDataError(f"{where}: image {str(image_path)!r} does not exist")
        items.append(CaptionedImage(image_path, caption))
    if not items:
        raise TrainingDataError(f"{path} has no rows")
    return items


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TrainingDataError(f"{path}:{number}: expected a JSON object")
        rows.append((f"{path}:{number}", row))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise TrainingDataError(f"{path}: the header must name the columns 'image' and 'caption'")
        return [(f"{path}:{reader.line_num}", row) for row in reader]


@dataclass(frozen=True)
class CaptionsSource:
    """A user's captioned images, reshuffled every epoch by `seed`; images decoded per batch."""

    items: Sequence[CaptionedImage]
    transform: Callable[[Image.Image], np.ndarray]
    cleaning: TextCleaning
    seed: int = 0

    def batch(self, step: int, size: int) -> Batch:
        indices = [self.index(step * size + i) for i in range(size)]
        items = [self.items[i] for i in indices]
        images = []
        for item in items:
            try:
                images.append(load_image(item.path))
            except SiglipServeError as exc:
                raise TrainingDataError(f"{item.path}: {exc.message}") from None
        # Identical captions (after the tokenizer's cleaning) describe each other's images too.
        keys = [clean_text(item.caption, self.cleaning) for item in items]
        positives = torch.tensor([[a == b for b in keys] for a in keys])
        return Batch(stack_images(images, self.transform), [item.caption for item in items], positives)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.items))
        return int(epoch_order(self.seed, epoch, len(self.items))[offset])


@lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)
