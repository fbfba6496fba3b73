"""Where a model runs and in which precision, when the caller says "auto" (the default everywhere).

Policy:

- device "auto" is CUDA when torch sees a GPU, else the CPU. Anything else ("cpu", "cuda", "cuda:1")
  is passed to `torch.device` as given.
- dtype "auto" is bfloat16 on a CPU with native bf16 dot products (the `avx512_bf16` or `amx_bf16`
  flag in /proc/cpuinfo: Cooper Lake, Zen 4 and later, Sapphire Rapids), and float32 everywhere
  else, CUDA included. Named dtypes (`DTYPES`) are used as given on any device.

Why: on a CPU with native bf16, bf16 against fp32 (bench/results/demo_accuracy.md, model_only.md)
gives embedding cosine >= 0.9999 and >= 99.9% top-1 agreement, on trained (demo) and random
base-224 weights, at 2.0x the speed. Without native support bf16 is emulated and slower, so auto
keeps float32. On CUDA auto stays float32 until the GPU numerics are measured; pass bfloat16 or
float16 to opt in. Whatever the dtype, the towers return float32 embeddings and read the learned
temperature before any cast (`towers.SiglipTowers`).
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
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (read once: the flags cannot change while running)."""
    try:
        flags = CPUINFO.read_text().split()
    except OSError:  # not Linux: no way to tell cheaply, stay with float32
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; any other name is torch's."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CPUs with native bf16 arithmetic, float32 elsewhere (see the module docstring)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}",
                                    param="dtype") from None
