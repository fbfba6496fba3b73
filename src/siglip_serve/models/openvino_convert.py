"""Convert a loaded checkpoint's towers to OpenVINO models, and cache the result on disk.

Each tower is converted from the loaded float32 PyTorch module with `openvino.convert_model`
(OpenVINO docs, "Converting a PyTorch Model": a `torch.nn.Module` plus an `example_input` is traced
with TorchScript), wrapped so that the graph returns what `SiglipTowers` returns: the pooled output.
The batch dimension is left dynamic (`input=[PartialShape([-1, ...])]`), the rest is the checkpoint's.

The cache is one directory per key under the cache root: `vision.xml/.bin`, `text.xml/.bin` and
`meta.json`. The key hashes the checkpoint's content (every file of its directory, names and bytes),
the quantization options and the OpenVINO/NNCF versions; it never trusts paths or timestamps. Entries
are written in a temporary directory renamed into place, so a crashed or concurrent conversion never
leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch

CACHE_FORMAT_VERSION = 1  # bump when what is stored, or how it is converted, changes
TOWERS = ("vision", "text")
CHUNK_BYTES = 16 * 1024 * 1024


class _PooledVision(torch.nn.Module):
    def __init__(self, vision_model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


class _PooledText(torch.nn.Module):
    """No attention mask, as `SiglipTowers.encode_texts`: the tower was trained without one."""

    def __init__(self, text_model: torch.nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).pooler_output


def convert_tower(module: torch.nn.Module, tower: str, *, image_size: int, text_length: int) -> ov.Model:
    """One tower of a transformers SigLIP module (float32) as an OpenVINO model with a dynamic batch."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that shape checks (position embeddings vs image size, head dims) become
        # constants: they are constants, the resolution and text length being fixed per checkpoint.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # transformers' deprecation of is_gradient_checkpointing, hit by the tracer reading module attributes.
        warnings.simplefilter("ignore", FutureWarning)
        if tower == "vision":
            shape = [2, 3, image_size, image_size]  # batch 2 in the example: batch 1 can be traced as a constant
            return ov.convert_model(_PooledVision(module.vision_model).eval(), example_input=torch.zeros(shape),
                                    input=[(ov.PartialShape([-1, *shape[1:]]), ov.Type.f32)])
        ids = torch.ones((2, text_length), dtype=torch.long)
        return ov.convert_model(_PooledText(module.text_model).eval(), example_input=ids,
                                input=[(ov.PartialShape([-1, text_length]), ov.Type.i64)])


# --- the cache -----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/siglip-serve/openvino, else ~/.cache/siglip-serve/openvino (XDG base directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "siglip-serve" / "openvino"


def _checkpoint_files(directory: Path) -> Iterator[Path]:
    """Every regular file under the checkpoint directory (symlinks followed: the hub's snapshots are
    links to blobs), hidden ones excluded (download metadata such as .cache/ changes without the weights)."""
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(directory: Path, memo_path: Path | None = None) -> str:
    """sha256 over the relative names and the sha256 of each file of the checkpoint.

    A file's sha256 is remembered in `memo_path` with its size, mtime and inode, and read again only
    when one of them changes (as git's index does): hashing so400m's 3.5 GB at every start would cost
    seconds, a restart with the same files none.
    """
    memo = _read_memo(memo_path)
    digest = hashlib.sha256()
    changed = False
    for path in _checkpoint_files(directory):
        stat = path.stat()
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        key = str(path.resolve())
        if memo.get(key, {}).get("stat") != signature:
            memo[key] = {"stat": signature, "sha256": file_sha256(path)}
            changed = True
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + memo[key]["sha256"].encode())
    if changed and memo_path is not None:
        _write_atomically(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return digest.hexdigest()


def _read_memo(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable or torn by hand: start again, it is only a memo
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def cache_key(checkpoint_hash: str, options: dict[str, Any]) -> str:
    import nncf

    payload = {"format": CACHE_FORMAT_VERSION, "checkpoint": checkpoint_hash, "options": options,
               "openvino": ov.get_version(), "nncf": nncf.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Converted:
    """The towers as OpenVINO models, and what the conversion measured (for the startup log)."""

    models: dict[str, ov.Model]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheEntry:
    directory: Path
    meta: dict[str, Any]
    hit: bool

    def model_path(self, tower: str) -> Path:
        return self.directory / f"{tower}.xml"


def cached(root: Path, key: str, build: Callable[[], Converted]) -> CacheEntry:
    """The entry for `key`, built (and stored) by `build` when it is not in the cache yet."""
    final = root / key
    meta_path = final / "meta.json"
    if meta_path.is_file() and all((final / f"{tower}.bin").is_file() for tower in TOWERS):
        return CacheEntry(final, json.loads(meta_path.read_text()), hit=True)
    if final.exists():  # incomplete (entries appear by rename, so only a hand edit leaves one): rebuild
        shutil.rmtree(final, ignore_errors=True)
    converted = build()
    building = root / f".{key}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for tower, model in converted.models.items():
        # compress_to_fp16=False: save_model would otherwise round float weights to fp16 (its default).
        ov.save_model(model, building / f"{tower}.xml", compress_to_fp16=False)
    (building / "meta.json").write_text(json.dumps(converted.meta, indent=2, sort_keys=True))
    try:
        building.rename(final)
    except OSError:  # another process stored the same key first: theirs is as good as ours
        shutil.rmtree(building, ignore_errors=True)
    return CacheEntry(final, json.loads((final / "meta.json").read_text()), hit=False)
