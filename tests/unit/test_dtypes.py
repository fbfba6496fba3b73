"""The device/dtype policy (models/device_policy.py): the bf16 flags are read from /proc/cpuinfo (for the
startup log only; auto is float32 everywhere, see test_dtype_auto.py), the device is CUDA only when torch
sees it; named dtypes are used as given; bfloat16 stays close to float32; bad names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_images import sample_images

import siglip_serve
from siglip_serve.errors import InvalidParameterError
from siglip_serve.models.device_policy import cpu_has_native_bf16, resolve_device, resolve_dtype

# Abbreviated /proc/cpuinfo of real CPUs: an Ice Lake server (AVX-512, no bf16) and a Sapphire Rapids (bf16 + AMX).
ICE_LAKE = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\n"
            "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bitalg\n\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                   "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile\n\n")
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
AMX_ONLY = "processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n\n"
NEAR_MISS = "processor\t: 0\nflags\t\t: fpu avx512_bf16x bf16 amx_int8\n\n"  # no exact native-bf16 flag


@pytest.mark.parametrize(("text", "native"), [(ICE_LAKE, False), (SAPPHIRE_RAPIDS, True), (ZEN4, True),
                                              (AMX_ONLY, True), (NEAR_MISS, False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: Path, text: str, native: bool) -> None:
    cpuinfo.write_text(text)
    assert cpu_has_native_bf16() is native


def test_no_cpuinfo_means_no_native_bf16(cpuinfo: Path) -> None:
    assert not cpuinfo.exists()
    assert cpu_has_native_bf16() is False


@pytest.mark.parametrize("cpu", [SAPPHIRE_RAPIDS, ICE_LAKE])
def test_auto_is_float32_with_or_without_native_bf16(cpuinfo: Path, cpu: str) -> None:
    cpuinfo.write_text(cpu)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # a flag is not a speed (issue #18)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32  # GPU numerics not measured yet
    assert resolve_dtype("auto", torch.device("cuda", 1)) == torch.float32


@pytest.mark.parametrize(("name", "dtype"), [
    ("float32", torch.float32), ("fp32", torch.float32),
    ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16),
    ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
])
@pytest.mark.parametrize("cpu", [ICE_LAKE, SAPPHIRE_RAPIDS])
def test_named_dtypes_are_used_as_given_on_any_device(cpuinfo: Path, cpu: str, name: str,
                                                      dtype: torch.dtype) -> None:
    cpuinfo.write_text(cpu)
    assert resolve_dtype(name, torch.device("cpu")) == dtype
    assert resolve_dtype(name, torch.device("cuda")) == dtype


@pytest.mark.parametrize("name", ["float8", "FP32", "", "int8", "torch.float32"])
def test_unknown_dtype_names_are_refused_with_the_choices(name: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        resolve_dtype(name, torch.device("cpu"))
    assert info.value.param == "dtype"
    assert str(info.value) == (f"dtype: unknown dtype {name!r}; choose one of auto, "
                               "float32, fp32, float16, fp16, half, bfloat16, bf16")


@pytest.mark.parametrize(("cuda", "expected"), [(True, torch.device("cuda")), (False, torch.device("cpu"))])
def test_auto_device_is_cuda_only_when_torch_sees_it(monkeypatch: pytest.MonkeyPatch, cuda: bool,
                                                     expected: torch.device) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == expected


@pytest.mark.parametrize(("name", "expected"), [("cpu", torch.device("cpu")), ("cuda", torch.device("cuda")),
                                                ("cuda:1", torch.device("cuda", 1))])
def test_named_devices_are_used_as_given(monkeypatch: pytest.MonkeyPatch, name: str,
                                         expected: torch.device) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a name is not second-guessed
    assert resolve_device(name) == expected


@pytest.mark.parametrize("cpu", [SAPPHIRE_RAPIDS, ICE_LAKE])
def test_loading_with_auto_follows_the_policy(cpuinfo: Path, siglip1_dir: Path, cpu: str) -> None:
    cpuinfo.write_text(cpu)
    model = siglip_serve.load(str(siglip1_dir), device="cpu")
    assert model.checkpoint.towers.dtype == torch.float32
    assert next(model.checkpoint.towers.module.parameters()).dtype == torch.float32


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
