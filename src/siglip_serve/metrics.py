"""Prometheus metrics, one registry per app so that tests can run several apps in a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 1 ms to 60 s: image fetches and CPU forwards span that range.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Everything the engine and the HTTP layer record; also the batchers' observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("siglip_requests", "HTTP requests", ["route", "status"], registry=r)
        self.errors = Counter("siglip_errors", "HTTP error responses", ["route", "status", "type"], registry=r)
        self.queue_depth = Gauge("siglip_queue_depth", "Items waiting per batcher", ["model", "tower"], registry=r)
        self.batch_size = Histogram("siglip_batch_size", "Items per model forward", ["model", "tower"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.admitted = Gauge("siglip_admitted_items", "Items admitted per model (being prepared, queued or run)",
                              ["model"], registry=r)
        self.stage_seconds = Histogram("siglip_stage_seconds", "Time per stage per item or batch",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.encoded = Counter("siglip_items_encoded", "Images and texts encoded by a tower", ["model", "tower"],
                               registry=r)
        self.cache_hits = Counter("siglip_label_cache_hits", "Text embeddings served from the cache", registry=r)
        self.cache_misses = Counter("siglip_label_cache_misses", "Text embeddings computed", registry=r)

    # engine.batcher.BatchObserver
    def on_batch(self, model: str, tower: str, size: int, run_seconds: float) -> None:
        self.batch_size.labels(model, tower).observe(size)
        self.stage_seconds.labels("inference").observe(run_seconds)
        self.encoded.labels(model, tower).inc(size)

    def on_queue_wait(self, model: str, tower: str, seconds: float) -> None:
        self.stage_seconds.labels("queue").observe(seconds)

    def on_queue_depth(self, model: str, tower: str, depth: int) -> None:
        self.queue_depth.labels(model, tower).set(depth)
