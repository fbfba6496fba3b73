"""Shared fixtures: tiny random checkpoints in the real on-disk layouts, built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
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
