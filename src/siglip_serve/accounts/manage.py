"""Opening the key database, and what an administrator does with keys: one code path for
`siglip-serve keys ...` and the `/v1/admin/keys` routes.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siglip_serve.accounts.keys import PREFIX_HEX, KeyHasher, load_secret, new_key, shown_prefix
from siglip_serve.accounts.types import KeyRecord, KeyStore, NewKey, UsageRow, UsageSink
from siglip_serve.errors import InvalidParameterError, KeyExistsError, KeyNotFoundError

if TYPE_CHECKING:
    from siglip_serve.accounts.pricing import Pricing
    from siglip_serve.accounts.service import Accounts
    from siglip_serve.accounts.store import SqlAccountStore
    from siglip_serve.config import Settings

_DURATION = re.compile(r"(\d+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_USAGE_DAYS = 366


def open_store(settings: Settings) -> tuple[SqlAccountStore, KeyHasher]:
    """The settings' key database, migrated, with the hasher of its secret (checked against the database)."""
    from siglip_serve.accounts.db import database_url
    from siglip_serve.accounts.store import SqlAccountStore

    store = SqlAccountStore.open(database_url(settings.database_url, settings.data_dir))
    secret = settings.key_secret.get_secret_value() if settings.key_secret is not None else None
    hasher = KeyHasher(load_secret(secret, settings.data_dir))
    try:
        store.check_secret(hasher.fingerprint())
    except Exception:
        store.close()
        raise
    return store, hasher


def build_accounts(settings: Settings, **overrides: object) -> Accounts:
    """Accounts over the settings' database, with their prices and limits; `overrides` for tests (clock, now)."""
    from siglip_serve.accounts.service import Accounts

    pricing = pricing_of(settings)
    store, hasher = open_store(settings)
    return Accounts(store, hasher, pricing=pricing, static_keys=settings.api_key, replicas=settings.replicas,
                    flush_interval_s=settings.usage_flush_interval_s, metrics_max_keys=settings.metrics_max_keys,
                    key_cache_ttl_s=settings.key_cache_ttl_s, **overrides)  # type: ignore[arg-type]


def pricing_of(settings: Settings) -> Pricing:
    from siglip_serve.accounts.pricing import Pricing

    return Pricing.parse(per_1k_images=settings.price_per_1k_images,
                         per_1m_text_tokens=settings.price_per_1m_text_tokens, model_prices=settings.model_price)


def parse_expiry(text: str | None, now: dt.datetime) -> dt.datetime | None:
    """'30d', '12h', '2w' (from now) or an ISO date or time (UTC unless it says otherwise); None: never."""
    if not text:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now + dt.timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidParameterError(f"expected a duration such as 30d or an ISO date, got {text!r}",
                                    param="expires") from None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once: only its hash is stored
    record: KeyRecord


def create_key(store: KeyStore, hasher: KeyHasher, spec: NewKey, *, now: dt.datetime) -> CreatedKey:
    if not spec.name.strip():
        raise InvalidParameterError("a key needs a name", param="name")
    for _ in range(5):  # a prefix collision is a 1 in 10^12 event; drawing again settles it
        key, prefix = new_key()
        try:
            return CreatedKey(key=key, record=store.create(spec, prefix=prefix, key_hash=hasher.hash(key), now=now))
        except KeyExistsError:
            continue
    raise KeyExistsError("could not draw a free key prefix")


def find_key(store: KeyStore, ref: str | int, *, include_revoked: bool = True) -> KeyRecord:
    """A key by id (42), prefix (0a1b2c3d4e) or shown prefix (sk-ss-0a1b2c3d4e)."""
    text = str(ref).strip()
    prefix = text.removeprefix(shown_prefix(""))
    if len(prefix) == PREFIX_HEX and not prefix.strip("0123456789abcdef"):  # prefixes are 10 hex digits, ids fewer
        stored = store.find(prefix)
        record = stored.record if stored is not None else None
    elif text.isdigit():
        record = store.get(int(text))
    else:
        record = None
    if record is None or (record.revoked_at is not None and not include_revoked):
        raise KeyNotFoundError(f"no key {text!r}", param="key")
    return record


def revoke_key(store: KeyStore, ref: str | int, *, now: dt.datetime) -> KeyRecord:
    return store.revoke(find_key(store, ref).id, now=now)


def usage_of(sink: UsageSink, key_id: int | None, *, days: int, today: dt.date) -> list[UsageRow]:
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise InvalidParameterError(f"days must be 1 to {MAX_USAGE_DAYS}", param="days")
    return sink.usage(key_id=key_id, since=today - dt.timedelta(days=days - 1))

