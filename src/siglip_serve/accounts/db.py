"""The key and usage database: its URL, its SQLAlchemy engine, and its migrations (run at startup).

SQLite in the data directory by default: nothing to set up, one server or several processes on one
machine (WAL mode lets readers run while the flusher writes). PostgreSQL when processes on several
machines share keys and usage: ``--database-url postgresql+psycopg://user@host/db`` (``postgresql://``
is taken to mean psycopg 3, the driver installed with siglip-serve).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from siglip_serve.errors import AccountsConfigError

SQLITE_FILE = "accounts.sqlite3"
SCRIPT_LOCATION = "siglip_serve.accounts:migrations"  # a package resource: works from a wheel too
_PG_MIGRATION_LOCK = 0x5167_6C69  # any constant; names the advisory lock that serializes migrations
logger = logging.getLogger(__name__)


def database_url(database_url: str | None, data_dir: str) -> str:
    """The configured URL, else SQLite in `data_dir` (which must then be a local directory)."""
    if database_url:
        if database_url.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + database_url.split("://", 1)[1]
        return database_url
    if "://" in data_dir:
        raise AccountsConfigError(f"--data-dir {data_dir} is not a local directory: set --database-url for keys "
                                  "and usage (e.g. postgresql://user@host/db)")
    directory = Path(data_dir).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / SQLITE_FILE}"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # pre_ping: a replica outlives database restarts; statement_timeout: a hung query never holds a request.
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                             connect_args={"connect_timeout": 10, "options": "-c statement_timeout=10000"})
    raise AccountsConfigError(f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer; NORMAL: a commit is durable once the WAL is checkpointed,
    # and the database is never corrupted (sqlite.org/wal.html, sqlite.org/pragma.html#pragma_synchronous).
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision; concurrent callers (processes starting together) take turns."""
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    with _migration_lock(engine), engine.connect() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
