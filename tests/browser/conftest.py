"""Fixtures of the browser tests: the system's headless Chromium (Playwright's Python API pointed at it
with `executable_path`) and live `siglip-serve serve` subprocesses serving the shipped demo model.

Skipped, with the reason, where Playwright or Chromium is missing (`.ci/run` installs Debian's `chromium`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))  # live.py: the server subprocess helpers

from live import LiveServer  # noqa: E402

API_KEY = "playground-secret"
# The demo model loads in seconds on a quiet machine; the tests share the CPU with other work.
STARTUP_TIMEOUT_S = 600.0


@contextmanager
def live_server(args: list[str], log_path: Path) -> Iterator[LiveServer]:
    """live.live_server with a startup limit for a busy machine: healthy for the block, exit 0 at SIGTERM."""
    server = LiveServer({}, args, log_path)
    try:
        server.wait_healthy(STARTUP_TIMEOUT_S)
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"server exited with {code} after SIGTERM:\n{server.log()}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module, not per session: while Playwright's sync API runs, the main thread has a running event loop,
    and every later test that calls asyncio.run() in it would fail."""
    pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package (test extra)")
    from playground_driver import chromium_path, launch
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium on PATH (Debian: apt-get install chromium); Playwright's own browser "
                    "download is never used")
    with sync_playwright() as playwright:
        browser = launch(playwright, executable)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No --model: the shipped siglip-demo-shapes, which knows colored shapes."""
    log = tmp_path_factory.mktemp("logs") / "playground.log"
    with live_server(["--allow-private-urls"], log) as server:  # the image host of the URL test is on loopback
        yield server


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("logs") / "playground-keyed.log"
    with live_server(["--api-key", API_KEY], log) as server:
        yield server
