"""Rate limits (token buckets, per process) and quotas (images per day, credit; shared through the database).

Rate limits: one bucket per key for requests and one for images, each holding a minute's worth and
refilling continuously (the token bucket of RFC 2697 / LiteLLM's and most gateways' rpm limits). They
live in this process: with N processes or replicas behind a balancer each enforces 1/N of the key's
limit (`--replicas N`), so together they allow about the limit. The wait until enough tokens are back
is exact, and Retry-After is that wait rounded up to whole seconds (RFC 9110 delay-seconds).

Quotas: what the database holds for the key (refreshed after every usage flush, so at most a flush
interval old), plus what this process metered since, plus what requests admitted here are about to use
(reserved when the body has been read, settled when they answer). Other processes' usage shows up
after their next flush, so N processes can together overshoot a quota by at most about one flush
interval of traffic.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from siglip_serve.accounts.types import KeyRecord, Spent, UsageEvent
from siglip_serve.errors import QuotaExceededError, RateLimitExceededError

_EPSILON = 1e-9  # float refills land a hair short of a whole token


@dataclass
class TokenBucket:
    capacity: float
    per_second: float
    tokens: float
    updated: float

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens are there (0: now; inf: never, more than the bucket holds)."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.per_second)
        self.updated = max(self.updated, now)
        if self.tokens + _EPSILON >= amount:
            return 0.0
        if amount > self.capacity + _EPSILON:
            return math.inf
        return (amount - self.tokens) / self.per_second

    def take(self, amount: float) -> None:
        """Take tokens `wait` just said were there."""
        self.tokens -= amount


class RateLimiter:
    """Requests and images per minute per key, as token buckets in this process."""

    def __init__(self, *, replicas: int = 1, clock: Callable[[], float]) -> None:
        self.replicas = replicas
        self.clock = clock
        self._buckets: dict[tuple[int, str], TokenBucket] = {}

    def _bucket(self, key: KeyRecord, kind: str, per_minute: int | None) -> TokenBucket | None:
        if per_minute is None:
            return None
        capacity = max(1.0, per_minute / self.replicas)
        bucket = self._buckets.get((key.id, kind))
        if bucket is None or bucket.capacity != capacity:  # new, or its limit was changed
            bucket = TokenBucket(capacity, capacity / 60.0, capacity, self.clock())
            self._buckets[(key.id, kind)] = bucket
        return bucket

    def admit_request(self, key: KeyRecord) -> None:
        """Before the body: take one request; refuse when no image could pass either."""
        now = self.clock()
        requests = self._bucket(key, "requests", key.limits.rpm)
        images = self._bucket(key, "images", key.limits.images_per_minute)
        if requests is not None:
            _refuse_after(requests.wait(1, now), key, "requests per minute", key.limits.rpm, 1)
        if images is not None:
            _refuse_after(images.wait(1, now), key, "images per minute", key.limits.images_per_minute, 1)
        if requests is not None:
            requests.take(1)

    def check_images(self, key: KeyRecord, count: int) -> TokenBucket | None:
        """After the body: raise unless `count` images can pass now; the bucket to `take` them from."""
        bucket = self._bucket(key, "images", key.limits.images_per_minute)
        if bucket is not None and count:
            _refuse_after(bucket.wait(count, self.clock()), key, "images per minute", key.limits.images_per_minute,
                          count)
        return bucket


def _refuse_after(wait: float, key: KeyRecord, what: str, limit: int | None, requested: int) -> None:
    if wait <= 0:
        return
    if math.isinf(wait):  # as OpenAI answers a request larger than a per-minute limit: 429, no point retrying
        raise RateLimitExceededError(f"request of {requested} is over key {key.name!r}'s limit of {limit} {what} "
                                     "and can never pass; send fewer")
    seconds = math.ceil(wait - _EPSILON)
    raise RateLimitExceededError(f"rate limit reached for key {key.name!r}: {limit} {what}; try again in "
                                 f"{seconds} s", retry_after_s=max(1, seconds))


@dataclass
class _KeyQuota:
    spent: Spent
    pending_images: dict[dt.date, int] = field(default_factory=dict)  # metered here, not yet in `spent`
    pending_cost: float = 0.0
    reserved_images: int = 0  # admitted here, not answered yet
    reserved_cost: float = 0.0


class QuotaLedger:
    """What each key has used of its quotas, as this process knows it. Thread-safe: the flusher refreshes it."""

    def __init__(self, today: Callable[[], dt.date]) -> None:
        self.today = today
        self._keys: dict[int, _KeyQuota] = {}
        self._lock = threading.Lock()

    def known(self, key_id: int) -> bool:
        return key_id in self._keys

    def key_ids(self) -> list[int]:
        with self._lock:
            return list(self._keys)

    def load(self, spent: Mapping[int, Spent]) -> None:
        with self._lock:
            for key_id, value in spent.items():
                self._keys.setdefault(key_id, _KeyQuota(spent=value)).spent = value

    def used(self, key_id: int) -> tuple[int, float]:
        """(images today, USD all time), counting what is reserved."""
        entry = self._keys[key_id]
        today = self.today()
        images = (entry.spent.images_today if entry.spent.day == today else 0) + entry.pending_images.get(today, 0)
        return images + entry.reserved_images, entry.spent.cost_usd + entry.pending_cost + entry.reserved_cost

    def check(self, key: KeyRecord, *, images: int = 0, cost: float = 0.0) -> None:
        """Raise QuotaExceededError if the key has nothing left, or not `images` and `cost` more."""
        if key.limits.images_per_day is None and key.limits.credit_usd is None:
            return
        with self._lock:
            used_images, used_cost = self.used(key.id)
        day_limit, credit = key.limits.images_per_day, key.limits.credit_usd
        if day_limit is not None and (used_images >= day_limit if not images else used_images + images > day_limit):
            raise QuotaExceededError(f"key {key.name!r} has used {used_images} of its {day_limit} images today "
                                     f"(UTC){f' and this request has {images}' if images else ''}")
        if credit is not None and (used_cost >= credit if not cost else used_cost + cost > credit + _EPSILON):
            raise QuotaExceededError(f"key {key.name!r} has used ${used_cost:.6f} of its ${credit:.2f} credit"
                                     f"{f'; this request would cost ${cost:.6f}' if cost else ''}")

    def reserve(self, key_id: int, images: int, cost: float) -> None:
        with self._lock:
            entry = self._keys[key_id]
            entry.reserved_images += images
            entry.reserved_cost += cost

    def settle(self, key_id: int, *, reserved: tuple[int, float], used: tuple[int, float], day: dt.date) -> None:
        """A request answered: its reservation becomes what it really used."""
        with self._lock:
            entry = self._keys.get(key_id)
            if entry is None:
                return
            entry.reserved_images -= reserved[0]
            entry.reserved_cost -= reserved[1]
            entry.pending_images[day] = entry.pending_images.get(day, 0) + used[0]
            entry.pending_cost += used[1]

    def written(self, events: Iterable[UsageEvent], spent: Mapping[int, Spent]) -> None:
        """After a flush: `events` are in the database, whose sums (read after the write) are `spent`."""
        with self._lock:
            for event in events:
                entry = self._keys.get(event.key_id)
                if entry is not None:
                    day = event.created_at.date()
                    entry.pending_images[day] = entry.pending_images.get(day, 0) - event.images
                    entry.pending_cost -= event.cost_usd
            for key_id, value in spent.items():
                if key_id in self._keys:
                    self._keys[key_id].spent = value
            today = self.today()
            for entry in self._keys.values():
                entry.pending_images = {d: n for d, n in entry.pending_images.items() if n and d >= today}
