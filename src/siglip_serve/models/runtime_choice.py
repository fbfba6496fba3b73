"""Which runtime runs a checkpoint's towers: torch or OpenVINO on the CPU (the server's `--backend auto` default).

- ``backend="torch"``: the torch modules (models/towers.py), on any device, in the resolved dtype (the library's
  default: `siglip_serve.load` gives the reference modules unless asked).
- ``backend="openvino"``: both towers converted to OpenVINO and run on the CPU
  (models/openvino_backend.py). Refused, with the reason, where it cannot be given: a device
  other than the CPU, OpenVINO not installed, or a NaFlex checkpoint.
- ``backend="auto"`` (the server's default, `--backend`): OpenVINO where it applies (the CPU, OpenVINO
  installed, a fixed-resolution checkpoint), torch elsewhere. OpenVINO fp32 measured faster than torch
  fp32 on this project's CPU benchmark in every condition (bench/results/openvino_cpu.md: 1.41x quiet,
  2.1-3.7x beside busy neighbours, at base-224) with the same numbers (max |Δp| 6e-7 on the test and demo
  checkpoints), which is why auto prefers it where it applies.

NaFlex (SigLIP 2 `model_type: "siglip2"`) stays on torch: its vision tower resizes the position
embeddings to each image's patch grid, which transformers reads on the host (`spatial_shapes.tolist()`),
so a traced graph would hold one grid only.

``quantize`` (``int8-weights``, ``int8``) needs the OpenVINO backend; with ``auto`` on a checkpoint
that stays on torch it is dropped with a warning, with ``torch`` it is refused.
Free of openvino imports, so that the choice can be made (and tested) without it installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from siglip_serve.errors import InvalidParameterError, UnsupportedModelError
from siglip_serve.models.device_policy import resolve_device, resolve_dtype_with_reason
from siglip_serve.models.loader import load_checkpoint

if TYPE_CHECKING:
    from siglip_serve.models.checkpoint import Checkpoint

logger = logging.getLogger("siglip_serve.models")

BACKENDS = ("torch", "openvino", "auto")
QUANTIZE = ("none", "int8-weights", "int8")
INSTALL_HINT = 'pip install "siglip-serve[cpu-fast]" (openvino and nncf)'

# The least cosine (vs float32, on held-out inputs) at which a quantized tower is served; below it the
# tower falls back one step (int8 -> int8 weights -> float32; models/openvino_quantize.py). Why 0.995:
# every normal result measured is above it (bench/results/openvino_cpu.md: int8 weights 0.9995-0.9998,
# full int8 0.9969-0.9992 on the demo and base-224; issue #18: 0.99722), while a failed quantization is
# below it (the tiny test checkpoint's full int8: 0.974). At cosine c a normalized embedding moves by
# sqrt(2(1 - c)), a tenth of its length at 0.995. It is a guard against a broken result, not a
# guarantee for your images: the check is only as good as the held-out set (see models/calibration.py).
DEFAULT_MIN_COSINE = 0.995


@dataclass(frozen=True)
class OpenVinoOptions:
    """Settings of the OpenVINO backend (models/openvino_backend.py)."""

    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/siglip-serve/openvino (openvino_convert.py)
    calibration: Path | None = None  # None: the synthetic set of models/calibration.py
    threads: int | None = None  # None: torch.get_num_threads() at load time
    min_cosine: float = DEFAULT_MIN_COSINE
    pin_threads: bool = False


@dataclass(frozen=True)
class RuntimeChoice:
    backend: str  # "torch" or "openvino"
    reason: str
    quantize: str = "none"  # what will be applied ("none" on torch)


def check_names(backend: str, quantize: str) -> None:
    if backend not in BACKENDS:
        raise InvalidParameterError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}",
                                    param="backend")
    if quantize not in QUANTIZE:
        raise InvalidParameterError(f"unknown quantize {quantize!r}; choose one of {', '.join(QUANTIZE)}",
                                    param="quantize")


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (None: it can). Imports the packages: a broken install counts as missing."""
    missing = []
    for name in ("openvino", "nncf"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})" if importlib.util.find_spec(name) else name)
    return f"{' and '.join(missing)} not importable ({INSTALL_HINT})" if missing else None


def choose_backend(backend: str, *, quantize: str, device: torch.device, missing: str | None,
                   naflex: bool) -> RuntimeChoice:
    """The runtime for one checkpoint, and why; raises where an explicit request cannot be met."""
    check_names(backend, quantize)
    if backend == "torch":
        if quantize != "none":
            raise InvalidParameterError(f"--quantize {quantize} needs --backend openvino (or auto)", param="quantize")
        return RuntimeChoice("torch", "--backend torch")
    why_not = None
    if device.type != "cpu":
        why_not = f"OpenVINO runs on the CPU here and the device is {device}"
    elif missing:
        why_not = missing
    elif naflex:
        why_not = "NaFlex checkpoints stay on torch (the vision graph depends on each image's patch grid)"
    if why_not is None:
        reason = ("--backend auto: OpenVINO where it applies (measured faster than torch at equal float32 results, "
                  "bench/results/openvino_cpu.md)") if backend == "auto" else "--backend openvino"
        return RuntimeChoice("openvino", reason, quantize)
    if backend == "openvino":
        error = UnsupportedModelError if naflex else InvalidParameterError
        raise error(f"--backend openvino: {why_not}", param="backend")
    dropped = f"; --quantize {quantize} not applied" if quantize != "none" else ""
    return RuntimeChoice("torch", f"--backend auto: torch, since {why_not}{dropped}")


def load_for_backend(spec: str, *, device: str, dtype: str, backend: str, quantize: str,
                     options: OpenVinoOptions | None = None) -> Checkpoint:
    """Load `spec` on the runtime `choose_backend` picks and log the runtime, dtype and why."""
    torch_device = resolve_device(device)
    missing = openvino_missing() if backend != "torch" else None  # importing them takes a second
    choice = choose_backend(backend, quantize=quantize, device=torch_device, missing=missing, naflex=False)
    if choice.backend == "torch":
        return _torch_checkpoint(spec, torch_device, dtype, choice, quantize=quantize)
    # The conversion source is always the float32 module; `dtype` becomes OpenVINO's inference precision.
    checkpoint = load_checkpoint(spec, device="cpu", dtype="float32")
    choice = choose_backend(backend, quantize=quantize, device=torch_device, missing=None,
                            naflex=checkpoint.image_size is None)
    if choice.backend == "torch":
        precision, _ = resolve_dtype_with_reason(dtype, torch_device)
        return _torch_checkpoint(spec, torch_device, dtype, choice, quantize=quantize,
                                 loaded=checkpoint if precision == torch.float32 else None)
    from siglip_serve.models.openvino_backend import openvino_checkpoint

    converted = openvino_checkpoint(checkpoint, dtype=dtype, quantize=quantize, options=options or OpenVinoOptions())
    logger.info("%s: %s (%s)", spec, converted.towers.description, choice.reason)
    return converted


def _torch_checkpoint(spec: str, device: torch.device, dtype: str, choice: RuntimeChoice, *, quantize: str,
                      loaded: Checkpoint | None = None) -> Checkpoint:
    if quantize != "none":  # auto fell back to torch: the quantization asked for is not applied
        logger.warning("%s: %s", spec, choice.reason)
    checkpoint = loaded or load_checkpoint(spec, device=str(device), dtype=dtype)
    _, why = resolve_dtype_with_reason(dtype, device)
    precision = str(checkpoint.towers.dtype).removeprefix("torch.")
    logger.info("%s: torch on %s in %s (%s; %s)", spec, checkpoint.towers.device, precision, why, choice.reason)
    return checkpoint
