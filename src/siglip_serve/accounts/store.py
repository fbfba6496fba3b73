"""`KeyStore` and `UsageSink` on SQLAlchemy 2 (SQLite or PostgreSQL), over the schema in `accounts.schema`.

Every change to a key bumps `key_revision` in the same transaction; servers read that one row on every
request (on a connection of its own, outside the pool, in autocommit mode: one indexed read, about 20 us on
SQLite and one round trip on PostgreSQL) and drop their cached keys when it moved. A usage batch is one
transaction: its flush record, its events and the daily sums, so a crash loses whole batches only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from siglip_serve.accounts.db import make_engine, migrate
from siglip_serve.accounts.schema import AccountsMeta, ApiKey, KeyRevision, UsageDaily, UsageEventRow, UsageFlush
from siglip_serve.accounts.types import KeyRecord, Limits, NewKey, Spent, StoredKey, UsageEvent, UsageRow
from siglip_serve.errors import AccountsConfigError, AccountsUnavailableError, KeyExistsError, KeyNotFoundError

_REVISION_SQL = "SELECT revision FROM key_revision WHERE id = 1"
_FINGERPRINT = "key_secret_fingerprint"


class SqlAccountStore:
    """Keys and usage in one SQL database. Thread-safe: the flusher writes from its own thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader: Any = None
        self._reader_lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> SqlAccountStore:
        """The database at the SQLAlchemy URL, migrated to the newest schema."""
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        with self._reader_lock:
            self._close_reader()
        self.engine.dispose()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def check_secret(self, fingerprint: str) -> None:
        """Record the secret's fingerprint on first use; refuse another secret later (its hashes would never match)."""
        with self.engine.begin() as connection:
            stored = connection.scalar(select(AccountsMeta.value).where(AccountsMeta.name == _FINGERPRINT))
            if stored is None:
                connection.execute(insert(AccountsMeta).values(name=_FINGERPRINT, value=fingerprint))
            elif stored != fingerprint:
                raise AccountsConfigError(
                    f"the keys in {self.url} were hashed with another key secret; run every server and "
                    "`siglip-serve keys` with the same --key-secret (or DATA_DIR/key-secret file)")

    # --- KeyStore ---------------------------------------------------------------------------------

    def revision(self) -> int:
        with self._reader_lock:
            for attempt in range(2):  # a broken connection (the database restarted) gets one retry on a new one
                try:
                    return self._read_revision()
                except Exception as exc:
                    self._close_reader()
                    if attempt:
                        raise AccountsUnavailableError(
                            f"the key database cannot be read: {type(exc).__name__}") from exc
            raise AssertionError("unreachable")

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too; dropped either way
                reader.close()

    def _read_revision(self) -> int:
        if self._reader is None:
            pooled = self.engine.raw_connection()
            raw = pooled.driver_connection
            pooled.detach()  # ours for good: the pool neither recycles nor resets it
            if self.engine.dialect.name == "sqlite":
                raw.isolation_level = None  # autocommit: each read sees the latest commit
            else:
                raw.autocommit = True
            self._reader = raw
        return int(self._reader.execute(_REVISION_SQL).fetchone()[0])

    def find(self, prefix: str) -> StoredKey | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(ApiKey).where(ApiKey.prefix == prefix)).first()
        return None if row is None else StoredKey(record=_record(row), key_hash=row.key_hash)

    def get(self, key_id: int) -> KeyRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(ApiKey).where(ApiKey.id == key_id)).first()
        return None if row is None else _record(row)

    def create(self, key: NewKey, *, prefix: str, key_hash: str, now: dt.datetime) -> KeyRecord:
        values = {"prefix": prefix, "key_hash": key_hash, "name": key.name, "admin": key.admin, "created_at": now,
                  "expires_at": key.expires_at, "models": list(key.models) if key.models is not None else None,
                  "routes": list(key.routes) if key.routes is not None else None, "rpm": key.limits.rpm,
                  "images_per_minute": key.limits.images_per_minute,
                  "images_per_day": key.limits.images_per_day, "credit_usd": key.limits.credit_usd}
        try:
            with self.engine.begin() as connection:
                key_id = connection.execute(insert(ApiKey).values(**values).returning(ApiKey.id)).scalar_one()
                _bump(connection)
        except IntegrityError as exc:
            raise KeyExistsError(f"a key with prefix {prefix} exists") from exc
        record = self.get(key_id)
        assert record is not None
        return record

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        query = select(ApiKey).order_by(ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        with self.engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def revoke(self, key_id: int, *, now: dt.datetime) -> KeyRecord:
        with self.engine.begin() as connection:
            found = connection.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                                       .values(revoked_at=now)).rowcount
            if found:
                _bump(connection)
        record = self.get(key_id)
        if record is None:
            raise KeyNotFoundError(f"no key with id {key_id}", param="key_id")
        return record

    # --- UsageSink --------------------------------------------------------------------------------

    def write(self, process: str, seq: int, events: Sequence[UsageEvent]) -> None:
        daily: dict[tuple[int, dt.date, str], list[float]] = {}
        for e in events:
            sums = daily.setdefault((e.key_id, e.created_at.date(), e.model or ""), [0, 0, 0, 0, 0.0])
            sums[0] += 1
            sums[1] += e.status >= 400
            sums[2] += e.images
            sums[3] += e.text_tokens
            sums[4] += e.cost_usd
        with self.engine.begin() as connection:
            flush_id = connection.execute(insert(UsageFlush).values(
                process=process, seq=seq, events=len(events), flushed_at=_utcnow()).returning(UsageFlush.id)
            ).scalar_one()
            if events:
                connection.execute(insert(UsageEventRow), [
                    {"request_id": e.request_id, "flush_id": flush_id, "key_id": e.key_id, "key_name": e.key_name,
                     "model": e.model, "route": e.route, "status": e.status, "images": e.images,
                     "text_tokens": e.text_tokens, "cost_usd": e.cost_usd, "latency_ms": e.latency_ms,
                     "created_at": e.created_at} for e in events])
            for (key_id, day, model), (requests, errors, images, tokens, cost) in daily.items():
                connection.execute(self._add_daily(key_id=key_id, day=day, model=model, requests=int(requests),
                                                   errors=int(errors), images=int(images),
                                                   text_tokens=int(tokens), cost_usd=cost))

    def _add_daily(self, **row: Any) -> Any:
        """INSERT ... ON CONFLICT DO UPDATE adding to the sums: atomic on both databases, whoever else writes."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(UsageDaily).values(**row)
        added = {name: getattr(UsageDaily, name) + getattr(statement.excluded, name)
                 for name in ("requests", "errors", "images", "text_tokens", "cost_usd")}
        return statement.on_conflict_do_update(index_elements=["key_id", "day", "model"], set_=added)

    def flushed(self, process: str) -> list[int]:
        with self.engine.connect() as connection:
            return list(connection.scalars(select(UsageFlush.seq).where(UsageFlush.process == process)
                                           .order_by(UsageFlush.seq)))

    def spent(self, key_ids: Sequence[int], *, day: dt.date) -> dict[int, Spent]:
        if not key_ids:
            return {}
        today = func.sum(UsageDaily.images).filter(UsageDaily.day == day)
        query = (select(UsageDaily.key_id, today, func.sum(UsageDaily.cost_usd))
                 .where(UsageDaily.key_id.in_(list(key_ids))).group_by(UsageDaily.key_id))
        out = {key_id: Spent(day=day, images_today=0, cost_usd=0.0) for key_id in key_ids}
        with self.engine.connect() as connection:
            for key_id, images, cost in connection.execute(query):
                out[key_id] = Spent(day=day, images_today=int(images or 0), cost_usd=float(cost or 0.0))
        return out

    def usage(self, *, key_id: int | None, since: dt.date) -> list[UsageRow]:
        query = select(UsageDaily).where(UsageDaily.day >= since)
        if key_id is not None:
            query = query.where(UsageDaily.key_id == key_id)
        query = query.order_by(UsageDaily.day, UsageDaily.key_id, UsageDaily.model)
        with self.engine.connect() as connection:
            return [UsageRow(key_id=r.key_id, day=r.day, model=r.model, requests=r.requests, errors=r.errors,
                             images=r.images, text_tokens=r.text_tokens, cost_usd=r.cost_usd)
                    for r in connection.execute(query)]


def _bump(connection: Any) -> None:
    connection.execute(update(KeyRevision).where(KeyRevision.id == 1).values(revision=KeyRevision.revision + 1))


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id, prefix=row.prefix, name=row.name, admin=bool(row.admin), created_at=row.created_at,
        expires_at=row.expires_at, revoked_at=row.revoked_at,
        models=tuple(row.models) if row.models is not None else None,
        routes=tuple(row.routes) if row.routes is not None else None,
        limits=Limits(rpm=row.rpm, images_per_minute=row.images_per_minute, images_per_day=row.images_per_day,
                      credit_usd=row.credit_usd))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
