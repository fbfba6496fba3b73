"""A loaded checkpoint: towers, image transform and tokenizer, whatever the on-disk format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siglip_serve.errors import InvalidCheckpointError
from siglip_serve.models.registry import find_known

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    from PIL import Image

    from siglip_serve.models.towers import SiglipTowers
    from siglip_serve.preprocess.text import FixedLengthTokenizer

PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


class Family(StrEnum):
    SIGLIP = "siglip"
    SIGLIP2 = "siglip2"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    directory: Path
    family: Family
    format: str
    towers: SiglipTowers
    # RGB PIL image -> what `towers.encode_prepared` takes: an ImageTransform for fixed resolution.
    image_transform: Callable[[Image.Image], Any]
    tokenizer: FixedLengthTokenizer
    embed_dim: int
    patch_size: int

    @property
    def image_size(self) -> int | None:
        """The square input side; None for NaFlex, whose input size varies per image."""
        return getattr(self.image_transform, "height", None)


def cross_check_known(checkpoint: Checkpoint, *, spec: str) -> None:
    """A listed checkpoint whose files disagree with the table is a broken download or a wrong id."""
    known = find_known(spec)
    if known is None:
        return
    found = {
        "family": checkpoint.family.value,
        "format": checkpoint.format,
        "text_length": checkpoint.tokenizer.length,
        "pad_id": checkpoint.tokenizer.pad_id,
        "text_cleaning": checkpoint.tokenizer.cleaning.value,
        "embed_dim": checkpoint.embed_dim,
        "resample": getattr(checkpoint.image_transform, "resample", None),
        "image_size": checkpoint.image_size,
        "patch_size": checkpoint.patch_size,
        "max_num_patches": getattr(checkpoint.image_transform, "max_num_patches", None),
    }
    expected = {
        "family": known.family,
        "format": known.format,
        "text_length": known.text_length,
        "pad_id": known.pad_id,
        "text_cleaning": known.text_cleaning,
        "embed_dim": known.embed_dim,
        "resample": PIL_FILTERS[known.resample],
        "image_size": known.image_size,
        "patch_size": known.patch_size,
        "max_num_patches": known.max_num_patches,
    }
    wrong = [f"{key}: files say {found[key]}, table says {expected[key]}"
             for key in found if expected[key] is not None and found[key] != expected[key]]
    if wrong:
        raise InvalidCheckpointError(
            f"{checkpoint.directory} does not match the known facts of {spec}: {'; '.join(wrong)}"
        )
