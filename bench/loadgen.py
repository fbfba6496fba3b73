"""HTTP load for the benchmarks: a server subprocess on a loopback port and a closed-loop client.

Closed loop: `concurrency` workers each send a request, wait for the whole response, and send
the next, until `max_requests` were sent or `max_duration_s` passed (requests in flight then
finish and count). Throughput = successful responses / wall time of the cell. Only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import httpx

BodyFactory = Callable[[int], bytes]  # request index -> JSON body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def json_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class ServerProcess:
    """A server subprocess on 127.0.0.1 (its output in a log file), healthy on `health_path`."""

    def __init__(self, command: Sequence[str], *, port: int, name: str, health_path: str = "/health") -> None:
        self.command = list(command)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.health_path = health_path
        self.log_path = Path(tempfile.gettempdir()) / f"siglip-bench-{name}-{port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGLIP_SERVE_")}
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=common.REPO)
        self.started = time.monotonic()
        self.startup_s: float | None = None

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_healthy(self, timeout_s: float = 900.0) -> None:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{' '.join(self.command)}\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=5).status_code == 200:
                    self.startup_s = time.monotonic() - self.started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:g} s:\n{self.log_tail()}")

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM this process (only it), wait, then SIGKILL it if needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def siglip_serve_command(checkpoint: Path, *, port: int, device: str = "cpu", dtype: str = "auto",
                         extra: Sequence[str] = ()) -> list[str]:
    """`siglip-serve serve` for one model named "bench", with a deadline long enough for slow CPU cells
    (1,000 cold labels are about a minute of text tower on 2 cores)."""
    return [sys.executable, "-m", "siglip_serve.cli", "serve", "--model", f"bench={checkpoint}",
            "--host", "127.0.0.1", "--port", str(port), "--device", device, "--dtype", dtype,
            "--log-level", "warning", "--request-timeout-s", "3600", *extra]


# --- the closed loop ----------------------------------------------------------------------------


async def _closed_loop(url: str, make_body: BodyFactory, *, concurrency: int, max_requests: int,
                       max_duration_s: float, timeout_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    first_error: list[str] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        started = time.perf_counter()
        deadline = started + max_duration_s

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                index = issued
                issued += 1
                body = make_body(index)
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers={"content-type": "application/json"})
                    status = str(response.status_code)
                    if response.status_code != 200 and not first_error:
                        first_error.append(f"{status}: {response.text[:300]}")
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    if not first_error:
                        first_error.append(f"{status}: {exc}")
                elapsed = time.perf_counter() - t0
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(elapsed)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ok = len(latencies)
    return {"concurrency": concurrency, "requests": issued, "ok": ok, "statuses": statuses,
            "first_error": first_error[0] if first_error else None, "wall_s": wall,
            "throughput_rps": ok / wall if wall > 0 else None, "latency_s": common.summarize(latencies)}


def run_cell(url: str, make_body: BodyFactory, *, concurrency: int, max_requests: int, max_duration_s: float,
             timeout_s: float = 3600.0) -> dict[str, Any]:
    """One closed-loop cell (see module docstring); returns throughput, latency percentiles, statuses."""
    return asyncio.run(_closed_loop(url, make_body, concurrency=concurrency, max_requests=max_requests,
                                    max_duration_s=max_duration_s, timeout_s=timeout_s))


def post(url: str, body: bytes, timeout_s: float = 3600.0) -> httpx.Response:
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:500]}")
    return response


# --- server metrics (ours) ----------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Flat {sample name + labels: value} of the Prometheus families the benchmark reads."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("siglip_batch_size", "siglip_stage_seconds", "siglip_label_cache")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        if not family.name.startswith(wanted):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count", "_total")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean batch size per batcher, mean seconds per stage and cache hits/misses during one cell."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    summary: dict[str, Any] = {}
    for key, count in delta.items():
        if key.endswith("}") and "_count{" in key and count > 0:
            name, labels = key.split("_count{")
            total = delta.get(f"{name}_sum{{{labels}", 0.0)
            short = "mean_batch" if name == "siglip_batch_size" else "mean_s"
            summary[f"{short}[{labels.rstrip('}')}]"] = total / count
    for key, value in delta.items():
        if key.startswith("siglip_label_cache") and value:
            summary[key.split("{")[0].removesuffix("_total")] = value
    return summary
