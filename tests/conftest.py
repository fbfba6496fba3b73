"""Shared fixtures: tiny random checkpoints in the real on-disk layouts, built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny_checkpoints

# Never reach a hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Servers default to --backend auto (OpenVINO on the CPU), which converts each checkpoint once into a cache:
# the session's own, inherited by every server subprocess, so that no test writes into the user's cache.
if "SIGLIP_SERVE_OPENVINO_CACHE_DIR" not in os.environ:
    _OPENVINO_CACHE = tempfile.mkdtemp(prefix="siglip-serve-tests-openvino-")
    os.environ["SIGLIP_SERVE_OPENVINO_CACHE_DIR"] = _OPENVINO_CACHE
    atexit.register(shutil.rmtree, _OPENVINO_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def siglip1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoints.build_siglip1(tmp_path_factory.mktemp("ckpt") / "tiny-siglip")


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoints.build_siglip2(tmp_path_factory.mktemp("ckpt") / "tiny-siglip2")


@pytest.fixture(scope="session", params=["siglip1", "siglip2"])
def checkpoint_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture
def cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fake /proc/cpuinfo for models/device_policy.py to read (write it before the code under test
    runs); the cached answer is dropped before and after, so that the next reader sees the real CPU."""
    from siglip_serve.models import device_policy

    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(device_policy, "CPUINFO", path)
    device_policy.cpu_has_native_bf16.cache_clear()
    yield path
    device_policy.cpu_has_native_bf16.cache_clear()
