"""Helpers for the integration tests: a `siglip-serve serve` subprocess, images, error checks, metrics.

Imported by the test modules of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families
from sample_images import photo_like

STARTUP_TIMEOUT_S = 300.0  # a hang guard, not a margin: a loaded 2-core machine starts a server in minutes
STOP_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 60.0  # hang guard for one request; nothing should come close
TOL = 1e-5

# The main server's limits (conftest.main_server); the tests of bad input rely on them.
MAX_INPUTS = 4
MAX_LABELS = 6
MAX_DOCUMENTS = 5
MAX_REQUEST_BYTES = 128 * 1024
MAX_IMAGE_PIXELS = 200 * 200
API_KEYS = ("k1", "k2")  # conftest.strict_server


# --- the server subprocess --------------------------------------------------------------------------


class LiveServer:
    """`siglip-serve serve` in a subprocess on a loopback port; its output goes to a log file."""

    def __init__(self, models: dict[str, Path], args: Sequence[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "siglip_serve.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        for name, directory in models.items():
            command += ["--model", f"{name}={directory}"]
        command += list(args)
        if "--dtype" not in args:  # results are compared with the float32 library and transformers
            command += ["--dtype", "float32"]
        if "--data-dir" not in args:  # collections and keys of a test never touch the user's data directory
            command += ["--data-dir", str(log_path.parent / f"data-{self.port}")]
        self.command = command
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env = {k: v for k, v in env.items() if not k.startswith("SIGLIP_SERVE_")}
        self._log = open(log_path, "wb")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.returncode: int | None = None
        self.signalled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before /health answered:\n"
                                   f"{' '.join(self.command)}\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not healthy after {timeout:g}s:\n{' '.join(self.command)}\n{self.log()}")

    def terminate(self) -> None:
        """One SIGTERM (a second one is not part of any scenario here)."""
        if not self.signalled and self.proc.poll() is None:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM unless sent already, then wait; the exit code (killed and negative if it hangs)."""
        if self.returncode is None:
            self.terminate()
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.returncode = self.proc.wait(10)
            self._log.close()
        return self.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")


@contextmanager
def live_server(models: dict[str, Path], args: Sequence[str], log_path: Path) -> Iterator[LiveServer]:
    """A healthy server for the duration of the block; at the end SIGTERM, and exit code 0 is required."""
    server = LiveServer(models, args, log_path)
    try:
        server.wait_healthy()
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"server exited with {code} after SIGTERM (graceful shutdown must exit 0):\n{server.log()}"


# --- images -----------------------------------------------------------------------------------------


def image_bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png(seed: int = 0, width: int = 40, height: int = 30) -> bytes:
    return image_bytes(photo_like(width, height, seed=seed), "PNG")


def jpeg(seed: int = 0, width: int = 40, height: int = 30) -> bytes:
    return image_bytes(photo_like(width, height, seed=seed), "JPEG", quality=90)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


# --- responses --------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int | tuple[int, ...], *, param: str | None = "any",
                 contains: str | None = None) -> dict:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}} with a useful message."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if param != "any":
        assert error["param"] == param, f"param {error['param']!r}, expected {param!r}: {error}"
    if contains is not None:
        assert contains in error["message"], f"{contains!r} not in {error['message']!r}"
    return error


def embeddings_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [row["index"] for row in data] == list(range(len(data)))
    rows = [np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4") if isinstance(row["embedding"], str)
            else np.asarray(row["embedding"], dtype=np.float32) for row in data]
    return np.stack(rows)


def assert_close(actual, expected, tol: float = TOL) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


def assert_same_ranking(server: Sequence[tuple[object, float]], library: Sequence[tuple[object, float]],
                        tol: float = TOL) -> None:
    """Same keys in the same order with scores within `tol`; a swap is tolerated only for a library tie."""
    assert len(server) == len(library), (server, library)
    lib_scores = dict(library)
    assert {key for key, _ in server} == set(lib_scores), (server, library)
    for key, score in server:
        assert abs(score - lib_scores[key]) <= tol, (key, score, lib_scores[key])
    for (key_s, _), (key_l, score_l) in zip(server, library, strict=True):
        if key_s != key_l:
            assert abs(lib_scores[key_s] - score_l) <= 1e-6, f"order differs: {server} vs {library}"


# --- /metrics ---------------------------------------------------------------------------------------


def batch_histogram(url: str, headers: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """{batcher: {"count", "sum", "le1"}} from siglip_batch_size_{count,sum,bucket}."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=HTTP_TIMEOUT_S).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "siglip_batch_size":
            continue
        for sample in family.samples:
            batcher = f"{sample.labels['model']}/{sample.labels['tower']}"
            entry = out.setdefault(batcher, {"count": 0.0, "sum": 0.0, "le1": 0.0})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                entry["le1"] = sample.value
    return out


def gauge(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT_S).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# --- a local image host for URL inputs -------------------------------------------------------------


class ImageHost:
    """ThreadingHTTPServer on 127.0.0.1 serving fixed files; records every path it is asked for."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.files = files
        self.requests: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                host.requests.append(self.path)
                found = host.files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body, mime = found
                self.send_response(200)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ImageHost:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
