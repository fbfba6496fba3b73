"""Usage metering off the hot path: requests are appended to a buffer; a thread writes it every interval.

Each buffered event belongs to a numbered batch of this process; its request id (returned to the client
as ``x-request-id``) names that batch: ``req_<process>_<batch>_<n>``. A batch is written in one
transaction with its flush record, so after a crash the database holds whole batches: exactly those
numbered at most the last flush record, and the events of the batch being written and the one being
filled are lost, which is one flush interval plus one write. Tests count losses this way, by batch
numbers rather than by the clock.

Prometheus counters per key name: the first `max_keys` names get their own label value, later ones
count as "other", so a server with thousands of keys does not grow thousands of series.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from siglip_serve.accounts.types import UsageEvent, UsageSink

logger = logging.getLogger(__name__)
OTHER_KEYS = "other"


class UsageMeter:
    """Buffers usage events and writes them in numbered batches, from a thread, every `interval_s`."""

    def __init__(self, sink: UsageSink, *, interval_s: float,
                 on_flushed: Callable[[Sequence[UsageEvent]], None] | None = None,
                 max_buffered: int = 1_000_000) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.on_flushed = on_flushed  # after every flush, with the events it wrote (maybe none)
        self.max_buffered = max_buffered
        self.process = uuid.uuid4().hex[:12]
        self.dropped = 0  # events given up on while the database was unreachable
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = 1  # the batch being filled
        self._count = 0
        self._filling: list[UsageEvent] = []
        self._sealed: collections.deque[tuple[int, list[UsageEvent]]] = collections.deque()
        self._buffered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, event: UsageEvent) -> str:
        """Buffer `event` under a new request id naming its batch; the id."""
        with self._lock:
            self._count += 1
            request_id = f"req_{self.process}_{self._seq}_{self._count}"
            self._filling.append(dataclasses.replace(event, request_id=request_id))
            self._buffered += 1
        return request_id

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="siglip-usage-flush", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write everything buffered (on shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> int:
        """Seal the batch being filled and write every sealed batch, oldest first; events written."""
        with self._flush_lock:
            with self._lock:
                if self._filling:  # an empty batch is not sealed: its number stays the one being filled
                    self._sealed.append((self._seq, self._filling))
                    self._seq += 1
                    self._filling = []
                sealed = list(self._sealed)
            written: list[UsageEvent] = []
            for seq, events in sealed:
                try:
                    self.sink.write(self.process, seq, events)
                except Exception:
                    logger.exception("usage batch %d (%d events) not written; retrying at the next flush",
                                     seq, len(events))
                    self._drop_over_limit()
                    break
                with self._lock:
                    self._sealed.popleft()
                    self._buffered -= len(events)
                written.extend(events)
            if self.on_flushed is not None:
                try:
                    self.on_flushed(written)
                except Exception:  # the flusher thread must survive a failed read; the next flush tries again
                    logger.exception("reading the keys' usage after a flush failed")
            return len(written)

    def _drop_over_limit(self) -> None:
        with self._lock:
            while self._buffered > self.max_buffered and self._sealed:
                _, events = self._sealed.popleft()
                self._buffered -= len(events)
                self.dropped += len(events)
                logger.error("dropped %d usage events: the database has been unreachable too long", len(events))


class KeyMetrics:
    """Prometheus counters per key name, with at most `max_keys` names (then "other")."""

    def __init__(self, registry: CollectorRegistry, *, max_keys: int) -> None:
        self.max_keys = max_keys
        self._names: set[str] = set()
        self.requests = Counter("siglip_key_requests", "Requests per API key name and HTTP status",
                                ["key", "status"], registry=registry)
        self.images = Counter("siglip_key_images", "Images encoded per API key name", ["key"], registry=registry)
        self.text_tokens = Counter("siglip_key_text_tokens", "Text tokens encoded per API key name", ["key"],
                                   registry=registry)
        self.cost = Counter("siglip_key_cost_usd", "Cost in USD at the configured prices, per API key name",
                            ["key"], registry=registry)

    def label(self, name: str) -> str:
        if name in self._names:
            return name
        if len(self._names) < self.max_keys:
            self._names.add(name)
            return name
        return OTHER_KEYS

    def observe(self, event: UsageEvent) -> None:
        key = self.label(event.key_name)
        self.requests.labels(key, str(event.status)).inc()
        if event.images:
            self.images.labels(key).inc(event.images)
        if event.text_tokens:
            self.text_tokens.labels(key).inc(event.text_tokens)
        if event.cost_usd:
            self.cost.labels(key).inc(event.cost_usd)
