"""A throwaway PostgreSQL for the tests: `initdb` into a temporary directory, a unix socket there, stopped by pid.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres`
user (created by the Debian package; `useradd` makes one when missing). Binaries are looked for on
PATH and under /usr/lib/postgresql/*/bin (Debian's layout); without them the tests that need the
server are skipped with the reason. Durability is switched off (fsync, full-page writes): nothing
here outlives the test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_USER = "postgres"
PORT = 5432  # names the socket file only: the server listens on no TCP address


def find_bin_dir() -> Path | None:
    """The directory of `initdb` and `postgres`: PATH first, else the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit()
                        else 0)
    return Path(candidates[-1]).parent if candidates else None


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: none (the current one) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        return pwd.getpwnam(SERVER_USER)


@dataclass
class PostgresServer:
    socket_dir: Path
    proc: subprocess.Popen

    def url(self, database: str = "postgres") -> str:
        """An SQLAlchemy URL (psycopg 3) over the unix socket, as the superuser (trust authentication)."""
        return f"postgresql+psycopg://{SERVER_USER}@/{database}?host={self.socket_dir}&port={PORT}"

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=str(self.socket_dir), port=PORT, user=SERVER_USER, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it (SIGINT: PostgreSQL's fast shutdown) and delete its files."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (initdb on PATH or /usr/lib/postgresql/*/bin); "
                                "install them with `apt-get install -y postgresql`")
    user = _server_user()
    # Not under pytest's tmp_path: its parents are private to the current user, which the server may not be.
    root = Path(tempfile.mkdtemp(prefix="siglip-pg-"))
    data = root / "data"
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    proc = None
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=root, env=env, **run_as)
        log = open(root / "server.log", "wb")  # noqa: SIM115  closed below, after the server is gone
        proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-k", str(root), "-p", str(PORT), "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
             "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, **run_as)
        server = PostgresServer(socket_dir=root, proc=proc)
        _wait_ready(server, root / "server.log")
        yield server
    finally:
        if proc is not None:
            _stop(proc)
            log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PostgresServer, log: Path) -> None:
    import psycopg

    until = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < until:
        if server.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with psycopg.connect(host=str(server.socket_dir), port=PORT, user=SERVER_USER, dbname="postgres",
                                 connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.05)
    raise RuntimeError(f"postgres not ready after {START_TIMEOUT_S:g} s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (import this fixture into a test module to use it)."""
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries not found (initdb on PATH or under /usr/lib/postgresql/*/bin): "
                    "`apt-get install -y postgresql` (.ci/run does)")
    with postgres_server() as server:
        yield server
