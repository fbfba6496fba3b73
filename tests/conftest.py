"""Shared fixtures: tiny random checkpoints in the real on-disk layouts, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiny_checkpoints

# Never reach a hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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
