"""The plain types of keys and usage, and the two storage interfaces the server needs.

`KeyStore` holds keys (only their keyed hashes) and the revision counter that every change to a key
bumps; `UsageSink` takes batches of metered requests and answers usage questions. `store.SqlAccountStore`
implements both on SQLAlchemy; nothing else imports SQLAlchemy, so the HTTP layer and `siglip-serve --help`
stay light.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Key id 0 in usage rows: requests that no stored key made (a static --api-key, or a server without keys).
NO_KEY_ID = 0


@dataclass(frozen=True)
class Limits:
    """Per-key limits; None is no limit. Rates are per minute; images per day count UTC days; credit is
    the key's lifetime budget in USD (as OpenAI's prepaid credit), spent at the configured prices."""

    rpm: int | None = None
    images_per_minute: int | None = None
    images_per_day: int | None = None
    credit_usd: float | None = None


@dataclass(frozen=True)
class NewKey:
    """What a caller chooses about a key; the key itself is generated."""

    name: str
    admin: bool = False
    expires_at: dt.datetime | None = None
    models: tuple[str, ...] | None = None  # None: every served model
    routes: tuple[str, ...] | None = None  # None: every route; else path prefixes such as /v1/classify
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class KeyRecord:
    """A stored key, without anything that would let one use it (the hash stays in the store)."""

    id: int
    prefix: str  # public: shown in lists, used to find the key
    name: str
    admin: bool
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    models: tuple[str, ...] | None
    routes: tuple[str, ...] | None
    limits: Limits

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class StoredKey:
    """A key record with its hash, as the store returns it to the authenticator only."""

    record: KeyRecord
    key_hash: str


@dataclass(frozen=True)
class UsageEvent:
    """One metered request."""

    request_id: str
    key_id: int  # NO_KEY_ID when no stored key made it
    key_name: str
    model: str | None
    route: str
    status: int
    images: int
    text_tokens: int
    cost_usd: float
    latency_ms: float
    created_at: dt.datetime  # UTC


@dataclass(frozen=True)
class UsageRow:
    """Usage of one key on one UTC day with one model."""

    key_id: int
    day: dt.date
    model: str
    requests: int
    errors: int
    images: int
    text_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class Spent:
    """A key's quota counters as the database has them."""

    day: dt.date
    images_today: int
    cost_usd: float  # all time


class KeyStore(Protocol):
    def revision(self) -> int:
        """A counter bumped by every change to any key (read on every request: it must be cheap)."""

    def find(self, prefix: str) -> StoredKey | None: ...

    def get(self, key_id: int) -> KeyRecord | None: ...

    def create(self, key: NewKey, *, prefix: str, key_hash: str, now: dt.datetime) -> KeyRecord:
        """Store a key; raises KeyExistsError if the prefix is taken (the caller draws another)."""

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]: ...

    def revoke(self, key_id: int, *, now: dt.datetime) -> KeyRecord:
        """Mark the key revoked (kept for its usage); raises KeyNotFoundError."""


class UsageSink(Protocol):
    def write(self, process: str, seq: int, events: Sequence[UsageEvent]) -> None:
        """Store batch `seq` of `process` atomically: all of its events and its flush record, or nothing."""

    def flushed(self, process: str) -> list[int]:
        """The batch numbers of `process` that are stored."""

    def spent(self, key_ids: Sequence[int], *, day: dt.date) -> dict[int, Spent]: ...

    def usage(self, *, key_id: int | None, since: dt.date) -> list[UsageRow]:
        """Usage by key, day and model from `since` on; `key_id` None: every key."""
