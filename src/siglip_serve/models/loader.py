"""Pick the format adapter for a checkpoint directory and load it."""

from __future__ import annotations

import json
from pathlib import Path

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.models.device_policy import resolve_device, resolve_dtype
from siglip_serve.models.hf import load_hf_checkpoint
from siglip_serve.models.naflex import load_naflex_checkpoint
from siglip_serve.models.open_clip import load_open_clip_checkpoint
from siglip_serve.models.registry import resolve_checkpoint_dir


def load_checkpoint(spec: str, *, device: str = "auto", dtype: str = "auto") -> Checkpoint:
    """Resolve `spec` (local directory or hub id) and load it with the adapter for its format."""
    directory = resolve_checkpoint_dir(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if (directory / "open_clip_config.json").is_file():
        return load_open_clip_checkpoint(Path(directory), name=spec, device=torch_device, dtype=torch_dtype)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InvalidCheckpointError(
            f"checkpoint directory {directory} is missing config.json (or open_clip_config.json)"
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidCheckpointError(f"cannot read {config_path}: {exc}") from None
    if model_type == "siglip":
        return load_hf_checkpoint(Path(directory), name=spec, device=torch_device, dtype=torch_dtype)
    if model_type == "siglip2":  # SigLIP 2 NaFlex
        return load_naflex_checkpoint(Path(directory), name=spec, device=torch_device, dtype=torch_dtype)
    raise UnsupportedModelError(
        f"{config_path}: model_type {model_type!r} is not supported (supported: 'siglip', 'siglip2')"
    )
