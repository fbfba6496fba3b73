"""The key and usage schema: SQLAlchemy 2 declarative models with typed `Mapped[...]` columns.

The tables are created and changed only by the Alembic migrations in `accounts/migrations`
(tests check that the migrations produce exactly this schema). Times are naive UTC: SQLite has no time
zones, and a column of one kind everywhere keeps comparisons simple on both databases.
Money is a double: prices of fractions of a cent per request, summed per key and day.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, Double, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Alembic's version table under its own name, so that the accounts tables can share a PostgreSQL
# database with another application's migrations.
VERSION_TABLE = "siglip_accounts_version"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))  # hex HMAC-SHA256 (accounts.keys)
    name: Mapped[str] = mapped_column(String(200))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    models: Mapped[list[str] | None] = mapped_column(JSON)  # None: every model
    routes: Mapped[list[str] | None] = mapped_column(JSON)  # None: every route
    rpm: Mapped[int | None] = mapped_column(Integer)
    images_per_minute: Mapped[int | None] = mapped_column(Integer)
    images_per_day: Mapped[int | None] = mapped_column(Integer)
    credit_usd: Mapped[float | None] = mapped_column(Double)


class KeyRevision(Base):
    """One row: bumped in the same transaction as every change to a key, read on every request."""

    __tablename__ = "key_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)


class AccountsMeta(Base):
    """Facts about the database itself, e.g. the fingerprint of the secret its key hashes were made with."""

    __tablename__ = "accounts_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class UsageFlush(Base):
    """One batch of usage written by one server process: its events commit with it, or neither does."""

    __tablename__ = "usage_flushes"
    __table_args__ = (UniqueConstraint("process", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    process: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(Integer)
    flushed_at: Mapped[dt.datetime] = mapped_column(DateTime)


class UsageEventRow(Base):
    """One metered request (LiteLLM's spend log keeps the same: one row per request, by request id)."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_key_created", "key_id", "created_at"),)

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flush_id: Mapped[int] = mapped_column(ForeignKey("usage_flushes.id"))
    key_id: Mapped[int] = mapped_column(Integer)  # 0: no stored key (a static --api-key, or no keys)
    key_name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    text_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Double)
    latency_ms: Mapped[float] = mapped_column(Double)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class UsageDaily(Base):
    """Usage summed per key, UTC day and model, updated with each flush: what quotas and /v1/usage read."""

    __tablename__ = "usage_daily"

    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)  # "" for requests without a model
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    text_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Double)
