"""Ray Serve: replicas of the same FastAPI app, each owning one engine.

One code path: a replica builds the app with `api.app.create_app`, as `siglip-serve serve` does, and
Serve's proxy hands it every HTTP request (`serve.ingress` with the app built on the replica, by
`__serve_build_asgi_app__`, so nothing of the engine, the store or the key database is pickled). So
routes, errors, keys and metrics are those of the plain server; what differs is only what sits in
front: Serve's proxy instead of uvicorn (so the plain server's connection guards of the h11 layer,
--header-timeout-s, --max-url-bytes and --max-connections, are the proxy's business; request bodies
are still bounded by the app).

    siglip-serve serve --ray --replicas 2                # local cluster, 2 replicas
    siglip-serve serve --ray --autoscale 1:8 --ray-address auto
    serve run deploy/serve.yaml                          # the same application from a Serve config file

Each replica keeps our dynamic batcher (Serve's own batching is not used); `max_ongoing_requests`
bounds the requests Serve lets into one replica, so keep it above `max_batch_size`.
Health: Serve calls `check_health` on every replica every few seconds; it raises when the engine is
unhealthy (a dead batcher loop), and Serve then replaces the replica.
Metrics: /metrics through the proxy shows the replica that answers; --ray-metrics-dir makes every
replica a Prometheus target of its own (scaling/replica_metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from siglip_serve.config import Settings

logger = logging.getLogger("siglip_serve")

APP_NAME = "siglip-serve"
REPLICA_DEPLOYMENT = "SiglipServe"
WRITER_DEPLOYMENT = "CollectionWriter"


class EngineUnhealthyError(RuntimeError):
    """Raised by `check_health`: Serve marks the replica unhealthy and starts another."""


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX), MIN >= 0, MAX >= max(MIN, 1)."""
    low, _, high = text.partition(":")
    minimum, maximum = int(low), int(high)
    if minimum < 0 or maximum < max(minimum, 1):
        raise ValueError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return minimum, maximum


def deployment_options(settings: Settings) -> dict[str, Any]:
    """The replica deployment's Serve options, from Settings (deploy/serve.yaml may override them)."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.ray_num_cpus, "num_gpus": settings.ray_num_gpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
    }
    if settings.autoscale:
        minimum, maximum = parse_autoscale(settings.autoscale)
        options["autoscaling_config"] = {"min_replicas": minimum, "max_replicas": maximum,
                                         "target_ongoing_requests": settings.target_ongoing_requests}
    else:
        options["num_replicas"] = settings.replicas
    return options


def replica_settings(settings: Settings) -> Settings:
    """The settings one replica runs with: torch threads as the CPUs it reserved (Ray sets
    OMP_NUM_THREADS to 1 in actors otherwise), and `replicas` as the most replicas there can be, so
    that the per-key rate limits, counted per process, add up to the configured ones."""
    update: dict[str, Any] = {}
    if settings.torch_threads is None and settings.ray_num_cpus >= 1:
        update["torch_threads"] = int(settings.ray_num_cpus)
    if settings.autoscale:
        update["replicas"] = parse_autoscale(settings.autoscale)[1]
    return settings.model_copy(update=update)


def check_engine(app: Any) -> None:
    """Raise when the app's engine has been started and cannot serve (what /health answers 503 for).
    Before the lifespan has built the engine there is nothing to check: Serve waits for the constructor."""
    engine = getattr(app.state, "engine", None)
    if engine is not None and not engine.healthy:
        raise EngineUnhealthyError("the engine cannot serve (a batcher loop stopped); Serve restarts this replica")


class SiglipReplica:
    """One replica: the app of `siglip-serve serve` over its own engine. `writer`: a handle of the
    collection writer deployment (None: this replica writes its collections itself)."""

    def __init__(self, settings: Settings, writer: Any = None) -> None:
        from siglip_serve.api.app import create_app
        from siglip_serve.scaling.collections_writer import RoutedCollectionStore
        from siglip_serve.server import build_accounts, build_engine, build_store

        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.settings = settings
        store = build_store(settings)
        self.accounts = build_accounts(settings)
        collections = store if writer is None else RoutedCollectionStore(store, writer)
        # The engine is built by the app's lifespan (in a thread), which Serve runs on the replica.
        self.fastapi_app = create_app(settings, lambda: build_engine(settings), collections=collections,
                                      accounts=self.accounts)
        self.metrics_exporter = None if settings.ray_metrics_dir is None else self._export_metrics(settings)

    def _export_metrics(self, settings: Settings) -> Any:
        import ray
        from ray import serve

        from siglip_serve.scaling.replica_metrics import ReplicaMetricsExporter

        return ReplicaMetricsExporter(self.fastapi_app, directory=settings.ray_metrics_dir,
                                      replica=serve.get_replica_context().replica_id.unique_id,
                                      node=ray.get_runtime_context().get_node_id(), bind=settings.host,
                                      node_ip=ray.util.get_node_ip_address())

    def __serve_build_asgi_app__(self) -> Any:
        return self.fastapi_app

    def check_health(self) -> None:
        check_engine(self.fastapi_app)

    def replica_info(self) -> dict[str, Any]:
        """Where this replica runs (the tests find and kill replicas by these)."""
        import ray
        from ray import serve

        context = ray.get_runtime_context()
        return {"actor_id": context.get_actor_id(), "node_id": context.get_node_id(), "pid": os.getpid(),
                "replica": serve.get_replica_context().replica_id.unique_id}

    def __del__(self) -> None:
        # After Serve ran the lifespan shutdown (drained batchers, last usage written).
        exporter = getattr(self, "metrics_exporter", None)
        if exporter is not None:
            exporter.close()
        store = getattr(getattr(self, "accounts", None), "store", None)
        if store is not None:
            store.close()


def build_application(settings: Settings) -> Any:
    """The Serve application: the replica deployment, bound to one collection writer."""
    from ray import serve

    replica = serve.deployment(serve.ingress()(SiglipReplica), name=REPLICA_DEPLOYMENT)
    writer = serve.deployment(name=WRITER_DEPLOYMENT, num_replicas=1,
                              # Commits are light; num_cpus=0 so that it never keeps a replica from fitting.
                              ray_actor_options={"num_cpus": 0})(_writer_class())
    bound_writer = writer.bind(settings.data_dir, settings.ann_index_threshold)
    return replica.options(**deployment_options(settings)).bind(replica_settings(settings), bound_writer)


def _writer_class() -> type:
    from siglip_serve.scaling.collections_writer import CollectionWriter

    return CollectionWriter


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run`/`serve deploy` (deploy/serve.yaml): `args` are Settings fields (the environment's
    SIGLIP_SERVE_* apply under them); the config file's `deployments:` section can override the options."""
    return build_application(Settings(**args))


def run(settings: Settings) -> int:
    """`siglip-serve serve --ray`: deploy the application and block until SIGTERM or SIGINT, then delete it
    (and stop the local cluster, when this command started one). Returns 0."""
    import ray
    from ray import serve

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started_cluster = settings.ray_address is None
    ray.init(address=settings.ray_address, include_dashboard=False if started_cluster else None,
             logging_level=logging.WARNING)
    # After ray.init, which installs a handler of its own that aborts the driver on SIGTERM.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        # http_options apply when this call starts Serve on the cluster; a running Serve keeps its own.
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("serving %s on http://%s:%d through Ray Serve", APP_NAME, settings.host, settings.port)
        stop.wait()
        logger.info("stopping: deleting the Serve application %s", APP_NAME)
        serve.delete(APP_NAME)
        if started_cluster:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0
