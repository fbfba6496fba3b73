"""Adapter for Hugging Face-format SigLIP checkpoints (config `model_type: "siglip"`).

Covers google/siglip-* (SentencePiece `spiece.model`) and fixed-resolution SigLIP 2
(google/siglip2-*-patch14-384 and siblings: `model_type` is also "siglip", with a
Gemma `tokenizer.json`). The neural network is `models.siglip_torch.SiglipModel`: transformers'
`SiglipModel` module tree without importing transformers (~3 s of a CLI run; that module says why and how
it is kept equal); preprocessing and tokenization are ours, configured from the checkpoint's files.
`load_transformers_module` is for the formats still built on transformers' classes (NaFlex's `Siglip2Model`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.models.checkpoint import Checkpoint, Family, cross_check_known
from siglip_serve.models.siglip_torch import load_siglip_model
from siglip_serve.models.tokenizer_files import build_tokenizer, tokenizer_class
from siglip_serve.models.towers import SiglipTowers
from siglip_serve.preprocess.images import ImageTransform
from siglip_serve.preprocess.text import TextCleaning

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidCheckpointError(f"cannot read {path}: {exc}") from None


def detect_family(directory: Path) -> Family:
    """SigLIP 1 ships SentencePiece; SigLIP 2 a Gemma tokenizer (the hub repos google/siglip-* and google/siglip2-*)."""
    declared = (tokenizer_class(directory) or "").lower()
    if "gemma" in declared or "siglip2" in declared:
        return Family.SIGLIP2
    if "siglip" in declared or "t5" in declared:
        return Family.SIGLIP
    if (directory / "spiece.model").is_file():
        return Family.SIGLIP
    if (directory / "tokenizer.json").is_file():
        return Family.SIGLIP2
    raise InvalidCheckpointError(f"{directory} has no tokenizer: expected spiece.model or tokenizer.json")


def image_transform_from_config(config: dict[str, Any], *, where: Path) -> ImageTransform:
    size = config.get("size") or {}
    try:
        height, width = int(size["height"]), int(size["width"])
        resample = int(config["resample"])
    except (KeyError, TypeError, ValueError):
        raise InvalidCheckpointError(
            f"{where}: expected size.height, size.width and resample"
        ) from None
    return ImageTransform(
        height=height,
        width=width,
        resample=resample,
        mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(config.get("image_std", (0.5, 0.5, 0.5))),
        rescale_factor=float(config.get("rescale_factor", 1 / 255)),
    )


def load_hf_checkpoint(directory: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    for filename in REQUIRED_FILES:
        if not (directory / filename).is_file():
            raise InvalidCheckpointError(f"checkpoint directory {directory} is missing {filename}")
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    if model_type != "siglip":
        raise UnsupportedModelError(
            f"{directory}: model_type {model_type!r} is not supported by the HF SigLIP adapter "
            "(expected 'siglip')"
        )
    family = detect_family(directory)
    transform = image_transform_from_config(
        read_json(directory / "preprocessor_config.json"), where=directory / "preprocessor_config.json"
    )
    text_length = int(config.get("text_config", {}).get("max_position_embeddings", 64))
    cleaning = TextCleaning.SIGLIP if family is Family.SIGLIP else TextCleaning.LOWERCASE
    tokenizer = build_tokenizer(directory, length=text_length, cleaning=cleaning)
    module = load_siglip_model(directory)
    checkpoint = Checkpoint(
        name=name,
        directory=directory,
        family=family,
        format="hf",
        towers=SiglipTowers(module, device=device, dtype=dtype),
        image_transform=transform,
        tokenizer=tokenizer,
        embed_dim=module.config.vision_config.hidden_size,
        patch_size=module.config.vision_config.patch_size,
    )
    cross_check_known(checkpoint, spec=name)
    return checkpoint


def load_transformers_module(class_name: str, directory: Path) -> torch.nn.Module:
    """A transformers model class in fp32 with SDPA; missing or misshapen weights are an error.

    Quiet: transformers' "Loading weights" progress bar is off, and so is the bos/eos "not in the
    vocabulary" warning that `from_pretrained` raises for *every* SigLIP checkpoint (it formats the config
    for an INFO record, which builds a default SiglipTextConfig, whose CLIP-era ids 49406/49407 fail its own
    range check against the default 32k vocabulary: configuration_utils.py `to_diff_dict`). What the load
    itself reports (missing, misshapen, unexpected weights) is checked here instead.
    """
    import transformers
    from safetensors import SafetensorError

    try:
        with quiet_transformers_loading():
            module, info = getattr(transformers, class_name).from_pretrained(
                directory, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # corrupt or truncated download
        raise InvalidCheckpointError(f"cannot load weights from {directory}: {exc}") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing:
        raise InvalidCheckpointError(f"{directory}/model.safetensors is missing weights: {', '.join(missing[:5])}")
    if mismatched:
        raise InvalidCheckpointError(f"{directory}/model.safetensors has weights of the wrong shape: {mismatched[:5]}")
    if info.get("unexpected_keys"):
        logger.warning("%s: ignoring unexpected weights %s", directory, sorted(info["unexpected_keys"])[:5])
    return module


@contextlib.contextmanager
def quiet_transformers_loading() -> Iterator[None]:
    """transformers' progress bars off and its logger at ERROR for the duration, then as they were."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
