"""Known checkpoints (data in `known_checkpoints.toml`) and resolution of a model spec to a directory.

A spec is a local directory, a Hugging Face hub id (``google/siglip-base-patch16-512``)
or either with a prefix (``local-dir:PATH``, ``hf-hub:ID``), as open_clip's factory parses them,
or ``siglip-demo-shapes``: the small demo model inside the package.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path

from siglip_serve.demo import DEMO_MODEL_NAME, demo_model_dir
from siglip_serve.errors import CheckpointNotFoundError

# Files a SigLIP checkpoint may need; everything else in a hub repo (other weight formats,
# READMEs, images) is not downloaded.
HUB_ALLOW_PATTERNS = [
    "*.json",
    "model.safetensors",
    "open_clip_model.safetensors",
    # open_clip repos that ship only a pickle; loaded with weights_only=True (models/open_clip.py).
    "open_clip_pytorch_model.bin",
    "spiece.model",
    "tokenizer.model",
]


# Whether a hub download shows huggingface_hub's progress bars: off unless the caller of `siglip_serve.load`
# asks (progress=True), so that the library and the server print nothing by default. A ContextVar, because
# the loading path between `load` and the download (runtime_choice, loader) need not carry the flag.
_DOWNLOAD_PROGRESS: ContextVar[bool] = ContextVar("siglip_serve_download_progress", default=False)


@contextlib.contextmanager
def download_progress(enabled: bool) -> Iterator[None]:
    token = _DOWNLOAD_PROGRESS.set(enabled)
    try:
        yield
    finally:
        _DOWNLOAD_PROGRESS.reset(token)


@dataclass(frozen=True)
class KnownCheckpoint:
    id: str
    family: str
    format: str
    patch_size: int
    resample: str
    pad_id: int
    text_cleaning: str
    text_length: int
    embed_dim: int
    seed: bool = False
    image_size: int | None = None
    max_num_patches: int | None = None
    params_m: float | None = None
    gflops_per_image: float | None = None
    imagenet_zero_shot: float | None = None
    accuracy_source: str | None = None
    note: str | None = None


@cache
def known_checkpoints() -> tuple[KnownCheckpoint, ...]:
    """The table, with the demo model's parameter count read from the weights that ship in the package
    (so it cannot go stale when the demo is retrained at another size)."""
    text = resources.files("siglip_serve.models").joinpath("known_checkpoints.toml").read_text()
    names = {f.name for f in fields(KnownCheckpoint)}
    rows = tomllib.loads(text)["checkpoint"]
    for row in rows:
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"known_checkpoints.toml: unknown fields {sorted(unknown)} in {row['id']}")
    weights = demo_model_dir() / "model.safetensors"
    return tuple(
        KnownCheckpoint(**row, params_m=round(safetensors_parameter_count(weights) / 1e6, 2))
        if row["id"] == DEMO_MODEL_NAME and "params_m" not in row and weights.is_file() else KnownCheckpoint(**row)
        for row in rows
    )


def safetensors_parameter_count(path: Path) -> int:
    """Elements of every tensor in a .safetensors file, from its header alone (no torch, no weights read).

    The format: an 8-byte little-endian header length, then a JSON header mapping each tensor name to its
    dtype, shape and offsets, plus an optional "__metadata__" entry (huggingface/safetensors README).
    """
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def find_known(spec: str) -> KnownCheckpoint | None:
    repo_id = spec.removeprefix("hf-hub:")
    return next((c for c in known_checkpoints() if c.id == repo_id), None)


def resolve_checkpoint_dir(spec: str) -> Path:
    """Return a local directory holding the checkpoint named by `spec`.

    Hub ids go through huggingface_hub's cache: downloaded when online, read from the
    cache when offline (HF_HUB_OFFLINE=1), and a clear error when neither works.
    """
    if spec == DEMO_MODEL_NAME:
        path = demo_model_dir()
        if not (path / "config.json").is_file():
            raise CheckpointNotFoundError(f"the {DEMO_MODEL_NAME} checkpoint is missing from the package ({path})")
        return path
    if spec.startswith("local-dir:"):
        path = Path(spec.removeprefix("local-dir:")).expanduser()
        if not path.is_dir():
            raise CheckpointNotFoundError(f"local checkpoint directory {str(path)!r} does not exist")
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    repo_id = spec.removeprefix("hf-hub:")
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")) or os.sep in repo_id.split("/")[0]:
        raise CheckpointNotFoundError(
            f"{spec!r} is neither an existing directory nor a Hugging Face hub id like 'google/siglip-base-patch16-224'"
        )
    return _download_from_hub(repo_id)


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        with _hub_progress_bars(_DOWNLOAD_PROGRESS.get()):
            return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). On a machine with network access run "
            f"`hf download {repo_id}` (or copy the checkpoint directory here) and pass the "
            "directory or the id again."
        ) from None
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise CheckpointNotFoundError(f"hub id {repo_id!r} cannot be resolved: {exc}") from None


@contextlib.contextmanager
def _hub_progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's bars off for the download unless `enabled`; left as they were afterwards.

    Only ever turned off here, never on: HF_HUB_DISABLE_PROGRESS_BARS=1 (or quiet_transformers) wins.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
