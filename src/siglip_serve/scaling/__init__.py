"""Beyond one machine, on Ray (issue #15; needs the `ray` extra).

- `serve_app`: Ray Serve replicas of the same FastAPI app (`siglip-serve serve --ray`, deploy/serve.yaml).
- `collections_writer`: the one writer of collections that every replica sends its writes to.
- `replica_metrics`: every replica a Prometheus target of its own (`--ray-metrics-dir`).
- `data_job`: `siglip-serve embed --ray`, the bulk job on Ray Data with the model in an actor pool.

Nothing here is imported by the plain server or the plain job: Ray is imported only when asked for.
"""
