"""Per-replica Prometheus metrics under Ray Serve.

Behind Serve's proxy, GET /metrics is answered by whichever replica the proxy picks, so a scrape there
sees one replica's counters at a time. With `--ray-metrics-dir DIR`, each replica also serves its own
registry (the same `siglip_*` metrics as /metrics) on an ephemeral port of its node, and writes a
Prometheus file-based service discovery target file, DIR/<replica>.json
(https://prometheus.io/docs/prometheus/latest/configuration/configuration/#file_sd_config), removed
when the replica stops; Prometheus scrapes every replica, labelled by `replica` and `node`. Serve's
own metrics (requests, latency and queue per replica and deployment) come through Ray's metrics
endpoint on each node as usual (ray_serve_*).

A replica killed without a graceful stop leaves its file; Prometheus then reports that target down
until the file is deleted (the replacement replica writes its own).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric


class _EngineMetrics:
    """A collector of the app's engine registry, read at scrape time (the lifespan builds the engine later)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        engine = getattr(self.app.state, "engine", None)
        if engine is not None:
            yield from engine.metrics.registry.collect()


class ReplicaMetricsExporter:
    """Serves the app's metrics on `bind` (the server's --host), a free port, and advertises it in
    `directory`/`replica`.json."""

    def __init__(self, app: Any, *, directory: str, replica: str, node: str, bind: str, node_ip: str) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_EngineMetrics(app))  # type: ignore[arg-type]  # a collector needs only collect()
        self.server, self.thread = start_http_server(0, addr=bind, registry=registry)
        self.port = self.server.server_port
        # Bound to every interface (--host 0.0.0.0): Prometheus reaches it at the node's address.
        host = node_ip if bind in ("0.0.0.0", "::", "") else bind
        self.path = Path(directory) / f"{replica}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = [{"targets": [f"{host}:{self.port}"], "labels": {"replica": replica, "node": node}}]
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(target))
        os.replace(tmp, self.path)  # Prometheus never reads half a file

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.server.shutdown()
        self.server.server_close()
