"""A Ray node started by the tests: `ray start --block` on loopback with its own ports and temp dir.

`ray stop` would stop every Ray process of the machine, so it is never used. Each node runs in its own
session (process group); stopping sends SIGTERM to that group (`ray start --block` then stops the
processes it started), then SIGKILL to any process of the group still there, and finally to any process
whose command line names this node's own temp dir (workers Ray moved to other groups). Only processes
this node started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ports import free_ports

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # the whole suite shares 2 cores and a few GB (brief: ~200-500 MB)


def ray_executable() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayNode:
    """One `ray start --block` process group. `head_address` None: a head node."""

    def __init__(self, *, num_cpus: int, temp_dir: str, log_path: Path, head_address: str | None = None,
                 resources: str | None = None) -> None:
        self.temp_dir = temp_dir
        self.head = head_address is None
        ports = iter(free_ports(8))
        self.port = next(ports) if self.head else None
        command = [ray_executable(), "start", "--block", "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", temp_dir,
                   "--object-store-memory", str(OBJECT_STORE_BYTES),
                   "--node-manager-port", str(next(ports)), "--object-manager-port", str(next(ports)),
                   "--dashboard-agent-grpc-port", str(next(ports)), "--dashboard-agent-listen-port", str(next(ports)),
                   "--metrics-export-port", str(next(ports)), "--runtime-env-agent-port", str(next(ports)),
                   "--disable-usage-stats", "--log-style", "record"]
        if self.head:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--ray-client-server-port", str(next(ports))]
            self.address = f"127.0.0.1:{self.port}"
        else:
            command += ["--address", head_address]
            self.address = head_address
        if resources:
            command += ["--resources", resources]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SIGLIP_SERVE_"))}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_AUTH_MODE"] = "disabled"  # loopback only; see conftest.py
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_started(self, marker: str = "Ray runtime started") -> None:
        """Until `ray start` says the node runs (it prints this before it blocks)."""
        until = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log()}")
            if marker in self.log():
                return
            time.sleep(0.2)
        raise RuntimeError(f"ray node not started after {START_TIMEOUT_S:g}s:\n{self.log()}")

    def stop(self) -> None:
        pgid = self.proc.pid  # start_new_session: the group id is our child's pid
        if self.proc.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT_S)
        for pid in [*_group_members(pgid), *_processes_naming(self.temp_dir)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _processes_naming(text: str) -> list[int]:
    """Processes of this user whose command line contains `text` (this node's unique temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def short_temp_dir() -> str:
    """Ray puts unix sockets under its temp dir, whose paths must stay under 107 bytes: a short /tmp name."""
    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


WAIT_S = 180.0  # generous: the suite shares 2 cores; only a hang comes near it


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT_S, poll_s: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll_s)


def session_logs(temp_dir: str) -> Path:
    return Path(temp_dir) / "session_latest" / "logs"
