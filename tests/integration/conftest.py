"""Fixtures of the integration tests: live servers on loopback ports and the same checkpoints in-process.

The checkpoints are the session's tiny random ones (tests/conftest.py); the library models
loaded here are the reference every server answer is compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live import (
    API_KEYS,
    MAX_DOCUMENTS,
    MAX_IMAGE_PIXELS,
    MAX_INPUTS,
    MAX_LABELS,
    MAX_REQUEST_BYTES,
    ImageHost,
    LiveServer,
    jpeg,
    live_server,
    png,
)

import siglip_serve
from siglip_serve.model import Model


@pytest.fixture(scope="session")
def lib_tiny(siglip1_dir: Path) -> Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def lib_tiny2(siglip2_dir: Path) -> Model:
    return siglip_serve.load(str(siglip2_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def libs(lib_tiny: Model, lib_tiny2: Model) -> dict[str, Model]:
    return {"tiny": lib_tiny, "tiny2": lib_tiny2}


@pytest.fixture(scope="session")
def main_server(siglip1_dir: Path, siglip2_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LiveServer]:
    """Two models, loopback URLs allowed, small limits."""
    args = ["--allow-private-urls", "--max-inputs", str(MAX_INPUTS), "--max-labels", str(MAX_LABELS),
            "--max-documents", str(MAX_DOCUMENTS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--max-image-pixels", str(MAX_IMAGE_PIXELS),
            # The body-limit tests send one text as large as the body allows.
            "--max-text-chars", str(MAX_REQUEST_BYTES)]
    log = tmp_path_factory.mktemp("logs") / "main.log"
    with live_server({"tiny": siglip1_dir, "tiny2": siglip2_dir}, args, log) as server:
        yield server


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    files = {"/photo.png": (png(seed=11, width=48, height=36), "image/png"),
             "/photo.jpg": (jpeg(seed=12, width=30, height=50), "image/jpeg")}
    with ImageHost(files) as host:
        yield host


@pytest.fixture(scope="session")
def strict_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """API keys required; private and loopback URLs refused (the default)."""
    args = [arg for key in API_KEYS for arg in ("--api-key", key)]
    log = tmp_path_factory.mktemp("logs") / "strict.log"
    with live_server({"tiny": siglip1_dir}, args, log) as server:
        yield server
