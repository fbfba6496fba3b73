"""`--dtype auto` (models/device_policy.py): float32 on every CPU, whatever its flags say, because a bf16
flag predicts neither speed (1.9x on an EPYC, 0.69x on a Xeon without AMX) nor an answer that a timing
at load time could give reliably on a shared machine; the reason is logged at startup. No timer is
involved, so there is none to fake: the decision depends on the request and the device only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_dtypes import AMX_ONLY, ICE_LAKE, SAPPHIRE_RAPIDS, ZEN4

import siglip_serve
from siglip_serve.config import Settings
from siglip_serve.models.device_policy import resolve_dtype, resolve_dtype_with_reason
from siglip_serve.server import build_engine

CPUS = {"ice-lake": ICE_LAKE, "sapphire-rapids": SAPPHIRE_RAPIDS, "zen4": ZEN4, "amx-only": AMX_ONLY, "unknown": ""}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_is_float32_on_every_cpu(cpuinfo: Path, cpu: str) -> None:
    cpuinfo.write_text(CPUS[cpu])
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_is_float32_on_cuda(cpuinfo: Path, cpu: str) -> None:
    cpuinfo.write_text(CPUS[cpu])
    dtype, why = resolve_dtype_with_reason("auto", torch.device("cuda", 1))
    assert dtype == torch.float32
    assert why == "auto: float32 on cuda until its half-precision numerics are measured"


@pytest.mark.parametrize("cpu", ["sapphire-rapids", "zen4", "amx-only"])
def test_the_reason_points_at_bf16_where_the_cpu_lists_it(cpuinfo: Path, cpu: str) -> None:
    cpuinfo.write_text(CPUS[cpu])
    _, why = resolve_dtype_with_reason("auto", torch.device("cpu"))
    assert why.startswith("auto: float32 on the CPU (exact); this CPU lists bf16 instructions")
    assert "bench/model_only.py" in why and "--dtype bfloat16" in why


def test_the_reason_says_no_bf16_where_the_cpu_lacks_it(cpuinfo: Path) -> None:
    cpuinfo.write_text(ICE_LAKE)
    assert resolve_dtype_with_reason("auto", torch.device("cpu"))[1] == \
        "auto: float32 on the CPU (exact; no native bf16 on this CPU)"


def test_a_named_dtype_is_its_own_reason(cpuinfo: Path) -> None:
    cpuinfo.write_text(ICE_LAKE)
    assert resolve_dtype_with_reason("bf16", torch.device("cpu")) == (torch.bfloat16, "--dtype bf16 as given")


def test_loading_with_auto_on_a_bf16_cpu_gives_float32_weights(cpuinfo: Path, siglip1_dir: Path) -> None:
    cpuinfo.write_text(SAPPHIRE_RAPIDS)
    model = siglip_serve.load(str(siglip1_dir), device="cpu")
    assert model.checkpoint.towers.dtype == torch.float32
    assert {p.dtype for p in model.checkpoint.towers.module.parameters()} == {torch.float32}


def test_serve_logs_the_dtype_and_why(cpuinfo: Path, siglip1_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cpuinfo.write_text(ZEN4)
    with caplog.at_level(logging.INFO, logger="siglip_serve"):
        engine = build_engine(Settings(model=[f"tiny={siglip1_dir}"], device="cpu", backend="torch"))
    assert set(engine.models) == {"tiny"}
    lines = [r.getMessage() for r in caplog.records if "torch on cpu in float32" in r.getMessage()]
    assert lines == [f"{siglip1_dir}: torch on cpu in float32 (auto: float32 on the CPU (exact); this CPU lists "
                     "bf16 instructions, which are faster on some CPUs and slower on others: measure with "
                     "bench/model_only.py and pass --dtype bfloat16 if it wins; --backend torch)"]
