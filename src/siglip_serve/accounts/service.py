"""`Accounts`: who is calling, whether they may, and what it cost; for the HTTP gate and the routes.

Per request, before the body: read the key revision (one row; a change drops every cached key, so a key
revoked or changed by any process, the CLI included, is refused on the very next request; with
`--key-cache-ttl-s N` it is read at most every N seconds instead, saving a database round trip per request,
and another process's revocation takes up to N s), find the key by its public prefix (cached), check its
keyed hash in constant time, its expiry, route, quotas and request rate. After the body (`admit`): its model
and images. When it answers (`finish`): meter it.

Authentication is required as soon as static keys are configured or the database has ever held a key;
a server with neither is open, and its requests are metered without a key.
"""

from __future__ import annotations

import datetime as dt
import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from siglip_serve.accounts.keys import KeyHasher, prefix_of
from siglip_serve.accounts.limits import QuotaLedger, RateLimiter
from siglip_serve.accounts.metering import KeyMetrics, UsageMeter
from siglip_serve.accounts.pricing import Pricing
from siglip_serve.accounts.types import NO_KEY_ID, KeyRecord, KeyStore, StoredKey, UsageEvent, UsageSink
from siglip_serve.errors import AuthenticationError, PermissionDeniedError

ADMIN_ROUTES = "/v1/admin/"
ALWAYS_ALLOWED = ("/v1/models", "/v1/usage")  # a key limited to some routes may still list models and its usage
STATIC_KEY_NAME = "static"
ANONYMOUS_NAME = "anonymous"
MAX_CACHED_PREFIXES = 10_000  # unknown prefixes are cached too (a flood of wrong keys never reaches the DB twice)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    admin: bool
    record: KeyRecord | None  # None: a static key, or nobody on an open server


@dataclass
class RequestAccount:
    """One request's account, from the gate to its answer."""

    principal: Principal
    started: float  # time.perf_counter() when the gate saw it
    model: str | None = None
    images: int = 0
    text_tokens: int = 0
    cost_usd: float = 0.0
    reserved: tuple[int, float] = (0, 0.0)


class StoreLike(KeyStore, UsageSink, Protocol):
    """What `Accounts` needs of its store: both interfaces (`SqlAccountStore` is one)."""


class Accounts:
    def __init__(self, store: StoreLike, hasher: KeyHasher, *, pricing: Pricing, static_keys: Sequence[str] = (),
                 replicas: int = 1, flush_interval_s: float = 1.0, metrics_max_keys: int = 50,
                 key_cache_ttl_s: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        self.hasher = hasher
        self.pricing = pricing
        self.static_keys = [key.encode() for key in static_keys]
        self.clock = clock
        self.now = now
        self.limiter = RateLimiter(replicas=replicas, clock=clock)
        self.ledger = QuotaLedger(today=lambda: self.now().date())
        self.meter = UsageMeter(store, interval_s=flush_interval_s, on_flushed=self._flushed)
        self.metrics_max_keys = metrics_max_keys
        self.metrics: KeyMetrics | None = None
        self.key_cache_ttl_s = key_cache_ttl_s
        self._revision: int | None = None
        self._revision_read_at = -math.inf
        self._keys: dict[str, StoredKey | None] = {}

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, registry: CollectorRegistry | None = None) -> None:
        if registry is not None and self.metrics is None:
            self.metrics = KeyMetrics(registry, max_keys=self.metrics_max_keys)
        self.meter.start()

    def stop(self) -> None:
        self.meter.stop()

    # --- before the body --------------------------------------------------------------------------

    def authenticate(self, authorization: str, path: str) -> Principal:
        """The caller, allowed on `path`; else AuthenticationError (401) or PermissionDeniedError (403)."""
        revision = self._current_revision()
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token and self._is_static(token):
            principal = Principal(NO_KEY_ID, STATIC_KEY_NAME, admin=False, record=None)
        elif not self.static_keys and revision == 0:
            principal = Principal(NO_KEY_ID, ANONYMOUS_NAME, admin=False, record=None)
        elif not token:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        else:
            principal = self._stored_principal(token)
        self._check_route(principal, path)
        return principal

    def admit_request(self, principal: Principal) -> None:
        """Quotas with anything left, then one request from the rate limit; else the 429 to answer."""
        if principal.record is not None:
            self.ledger.check(principal.record)
            self.limiter.admit_request(principal.record)

    def _current_revision(self) -> int:
        """The key revision: read on every request (TTL 0), else at most every `key_cache_ttl_s` seconds."""
        now = self.clock()
        if self._revision is None or now - self._revision_read_at >= self.key_cache_ttl_s:
            revision = self.store.revision()
            self._revision_read_at = now
            if revision != self._revision:
                self._keys.clear()
                self._revision = revision
        return self._revision

    def invalidate(self) -> None:
        """Keys changed through this process: read the revision on the next request whatever the TTL."""
        self._revision_read_at = -math.inf

    def _is_static(self, token: str) -> bool:
        # Every static key is compared, never stopping early: timing says nothing about which one matched.
        matched = False
        for key in self.static_keys:
            matched |= hmac.compare_digest(token.encode(), key)
        return matched

    def _stored_principal(self, token: str) -> Principal:
        prefix = prefix_of(token)
        stored = self._find(prefix) if prefix is not None else None
        # The prefix only finds the candidate; the whole key must match its keyed hash.
        if stored is None or not self.hasher.matches(token, stored.key_hash):
            raise AuthenticationError("invalid API key")
        record = stored.record
        if record.revoked_at is not None:
            raise AuthenticationError("this API key has been revoked")
        if record.expires_at is not None and self.now() >= record.expires_at:
            raise AuthenticationError(f"this API key expired at {record.expires_at.isoformat()}Z")
        return Principal(record.id, record.name, admin=record.admin, record=record)

    def _find(self, prefix: str) -> StoredKey | None:
        if prefix in self._keys:
            return self._keys[prefix]
        stored = self.store.find(prefix)
        if len(self._keys) >= MAX_CACHED_PREFIXES:
            self._keys.clear()
        self._keys[prefix] = stored
        if stored is not None and not self.ledger.known(stored.record.id):
            self.ledger.load(self.store.spent([stored.record.id], day=self.now().date()))
        return stored

    def _check_route(self, principal: Principal, path: str) -> None:
        if path.startswith(ADMIN_ROUTES) or path == ADMIN_ROUTES.rstrip("/"):
            if not principal.admin:
                raise PermissionDeniedError("the admin routes need an admin key (siglip-serve keys create --admin)")
            return
        routes = principal.record.routes if principal.record is not None else None
        if routes is None or any(_under(path, allowed) for allowed in (*routes, *ALWAYS_ALLOWED)):
            return
        raise PermissionDeniedError(f"key {principal.name!r} may not use {path} (allowed: {', '.join(routes)})")

    # --- after the body, before any work --------------------------------------------------------

    def admit(self, account: RequestAccount, model: str, *, images: int) -> None:
        """The request's model and images are known: check them against the key before the engine runs."""
        account.model = model
        record = account.principal.record
        if record is None:
            return
        if record.models is not None and model not in record.models:
            raise PermissionDeniedError(f"key {record.name!r} may not use model {model!r} "
                                        f"(allowed: {', '.join(record.models)})", param="model")
        images_bucket = self.limiter.check_images(record, images)
        cost = self.pricing.cost(model, images=images, text_tokens=0)
        self.ledger.check(record, images=images, cost=cost)
        # No await since the checks: nothing else ran in between, so both still hold.
        if images_bucket is not None:
            images_bucket.take(images)
        self.ledger.reserve(record.id, images, cost)
        account.reserved = (account.reserved[0] + images, account.reserved[1] + cost)

    def charge(self, account: RequestAccount, model: str, *, images: int, text_tokens: int) -> float:
        """What the request used (from the engine's usage); its cost."""
        account.model = model
        account.images += images
        account.text_tokens += text_tokens
        cost = self.pricing.cost(model, images=images, text_tokens=text_tokens)
        account.cost_usd += cost
        return cost

    # --- when it answers --------------------------------------------------------------------------

    def finish(self, account: RequestAccount, *, route: str, status: int) -> str:
        """Meter the request; its request id."""
        now = self.now()
        if status >= 400:  # failed requests are not charged (OpenAI bills only what it answered)
            account.images, account.text_tokens, account.cost_usd = 0, 0, 0.0
        principal = account.principal
        if principal.record is not None:
            self.ledger.settle(principal.key_id, reserved=account.reserved,
                               used=(account.images, account.cost_usd), day=now.date())
        event = UsageEvent(request_id="", key_id=principal.key_id, key_name=principal.name, model=account.model,
                           route=route, status=status, images=account.images, text_tokens=account.text_tokens,
                           cost_usd=account.cost_usd, latency_ms=(time.perf_counter() - account.started) * 1000,
                           created_at=now)
        request_id = self.meter.record(event)
        if self.metrics is not None:
            self.metrics.observe(event)
        return request_id

    def _flushed(self, events: Sequence[UsageEvent]) -> None:
        """From the flusher, every interval: the database now has `events`; read the keys' sums again (they
        include what other processes wrote)."""
        key_ids = self.ledger.key_ids()
        self.ledger.written(events, self.store.spent(key_ids, day=self.now().date()) if key_ids else {})


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")
