"""dtype plumbing: auto is bfloat16 only on CPUs with native bf16, bfloat16 stays close, bad names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_images import sample_images

import siglip_serve
from siglip_serve.errors import InvalidParameterError
from siglip_serve.models import towers
from siglip_serve.models.towers import resolve_dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bfloat16_only_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(towers, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32  # GPU numerics not measured yet
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    assert towers.cpu_has_native_bf16() == any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def test_bfloat16_is_close_to_float32(siglip1_dir: Path) -> None:
    images = list(sample_images().values())
    fp32 = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    bf16 = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="bfloat16")
    assert next(fp32.checkpoint.towers.module.parameters()).dtype == torch.float32
    assert next(bf16.checkpoint.towers.module.parameters()).dtype == torch.bfloat16
    # The temperature is read before the cast: bf16 would round log(10) to 2.296875.
    assert bf16.checkpoint.towers.temperature == fp32.checkpoint.towers.temperature
    cosine = torch.nn.functional.cosine_similarity(bf16.embed_images(images), fp32.embed_images(images))
    assert float(cosine.min()) > 0.99
    assert bf16.embed_texts(["a cat"]).dtype == torch.float32  # outputs are always float32


def test_unknown_dtype_is_refused(siglip1_dir: Path) -> None:
    with pytest.raises(InvalidParameterError, match="unknown dtype"):
        siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float8")
