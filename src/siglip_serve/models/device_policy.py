"""Where a model runs and in which precision, when the caller says "auto" (the default everywhere).

Policy:

- device "auto" is CUDA when torch sees a GPU, else the CPU. Anything else ("cpu", "cuda", "cuda:1")
  is passed to `torch.device` as given.
- dtype "auto" is float32 on every device. Named dtypes (`DTYPES`) are used as given on any device.

Why float32 on the CPU, even where /proc/cpuinfo lists `avx512_bf16` or `amx_bf16`: a flag says an
instruction exists, not that it is fast. With the same flag, torch bf16 at base-224 was 1.9x fp32 on
an AMD EPYC (Zen 4; bench/results/model_only.md) and 0.69x fp32 on an Intel Xeon without AMX (issue
#18, one interleaved run), so a flag rule makes the default slower *and* less exact on some CPUs.
A short timing at load time cannot settle it either on a shared machine: on the same 2-core EPYC,
interleaved runs of the base-224 image tower measured bf16 at 2.03x fp32 quiet, 1.75x beside two busy
processes, and 0.57x, 1.07x, 1.34x and 1.20x with other jobs on the machine (bench/results/
openvino_cpu*.md); ten interleaved pairs at load 5-8 gave per-pair ratios from 0.23 to 1.86. A
"bf16 if >= 1.3x" rule would flip with the neighbours' load, and the flip would be cached. And the
embeddings a server returns (and stores in collections) should follow from its settings, not from a
timing. So auto keeps the exact dtype. The opt-ins: `--dtype bfloat16` where bench/model_only.py
shows it faster (embedding cosine >= 0.9999 and >= 99.9% top-1 agreement vs fp32,
bench/results/demo_accuracy.md), and `--backend openvino` (models/openvino_backend.py). On CUDA auto
stays float32 until the GPU numerics are measured; pass bfloat16 or float16 to opt in. Whatever the
dtype, the towers return float32 embeddings and read the learned temperature before any cast
(`towers.SiglipTowers`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from siglip_serve.errors import InvalidParameterError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# /proc/cpuinfo flags of x86 CPUs with bf16 dot products (Cooper Lake, Zen 4 and later; AMX on Sapphire Rapids).
# Only reported in the reason for the choice: they do not decide it (see the module docstring).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU reports bf16 dot products (read once: the flags cannot change while running)."""
    try:
        flags = CPUINFO.read_text().split()
    except OSError:  # not Linux: no way to tell cheaply
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; any other name is torch's."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on every device (see the module docstring); a named dtype is used as given."""
    return resolve_dtype_with_reason(dtype, device)[0]


def resolve_dtype_with_reason(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype `resolve_dtype` picks and, for the startup log, why."""
    if dtype != "auto":
        try:
            return DTYPES[dtype], f"--dtype {dtype} as given"
        except KeyError:
            raise InvalidParameterError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}",
                                        param="dtype") from None
    if device.type != "cpu":
        return torch.float32, f"auto: float32 on {device.type} until its half-precision numerics are measured"
    if cpu_has_native_bf16():
        return torch.float32, ("auto: float32 on the CPU (exact); this CPU lists bf16 instructions, which are "
                               "faster on some CPUs and slower on others: measure with bench/model_only.py "
                               "and pass --dtype bfloat16 if it wins")
    return torch.float32, "auto: float32 on the CPU (exact; no native bf16 on this CPU)"
