"""`siglip-serve serve`, the composition root: load the models, build the engine and the app,
run uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from siglip_serve.config import Settings, parse_model_entry
from siglip_serve.engine.engine import Engine, EngineConfig
from siglip_serve.errors import CheckpointNotFoundError
from siglip_serve.memory import configure_image_memory

if TYPE_CHECKING:
    from siglip_serve.accounts.service import Accounts
    from siglip_serve.storage.collections import LanceCollectionStore

logger = logging.getLogger("siglip_serve")


def build_engine(settings: Settings) -> Engine:
    from pathlib import Path

    import torch

    from siglip_serve.model import load, quiet_transformers
    from siglip_serve.models.runtime_choice import OpenVinoOptions

    if not settings.model:
        raise CheckpointNotFoundError("no model to serve: pass --model SPEC (or set SIGLIP_SERVE_MODEL)")
    logger.info("image memory: %s", configure_image_memory())
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    quiet_transformers()
    # Threads: None, so that OpenVINO takes torch's count as set above (one setting sizes both runtimes).
    openvino = OpenVinoOptions(cache_dir=Path(settings.openvino_cache_dir) if settings.openvino_cache_dir else None,
                               calibration=Path(settings.calibration) if settings.calibration else None,
                               min_cosine=settings.quantize_min_cosine)
    models = {}
    for entry in settings.model:
        name, spec = parse_model_entry(entry)
        logger.info("loading %s from %s", name, spec)
        models[name] = load(spec, device=settings.device, dtype=settings.dtype,
                            max_pixels=settings.max_image_pixels, batch_size=settings.max_batch_size,
                            jpeg_draft=settings.jpeg_draft, backend=settings.backend, quantize=settings.quantize,
                            openvino=openvino)  # logs the runtime and dtype it chose, and why
        if settings.compile:
            logger.info("compiling %s for batches of up to %d", name, settings.max_batch_size)
            models[name].compile()
    return Engine(models, EngineConfig.from_settings(settings))


def build_store(settings: Settings) -> LanceCollectionStore:
    """The collections in `settings.data_dir` (a LanceDB database; created when missing)."""
    from siglip_serve.storage.collections import LanceCollectionStore

    logger.info("collections in %s", settings.data_dir)
    return LanceCollectionStore(settings.data_dir, ann_index_threshold=settings.ann_index_threshold)


def build_accounts(settings: Settings) -> Accounts:
    """Keys, limits and metering over the key database (SQLite in the data dir, or --database-url), migrated."""
    from siglip_serve.accounts.manage import build_accounts as build

    accounts = build(settings)
    logger.info("keys and usage in %s", accounts.store.url)
    return accounts


def serve(settings: Settings) -> int:
    """Blocks until SIGTERM or SIGINT; uvicorn then stops accepting, finishes in-flight requests
    and runs the lifespan shutdown, which drains the batchers. Returns 0.

    With `settings.ray`: the same app as Ray Serve replicas (scaling/serve_app.py) instead of uvicorn."""
    if settings.ray:
        from siglip_serve.scaling.serve_app import run

        return run(settings)
    import uvicorn

    from siglip_serve.api.app import create_app
    from siglip_serve.http_protocol import guarded_h11_protocol, max_head_bytes

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = build_engine(settings)  # load before binding the port: a bad checkpoint fails fast
    accounts = build_accounts(settings)
    app = create_app(settings, engine, collections=build_store(settings), accounts=accounts)
    # After its graceful shutdown uvicorn restores the previous SIGTERM handler and re-raises the
    # signal; with the default handler the process would die with 143 instead of exiting 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.request_timeout_s,
        # Always h11 (uvicorn would pick httptools when importable): the connection limits hook into it.
        http=guarded_h11_protocol(header_timeout_s=settings.header_timeout_s, max_url_bytes=settings.max_url_bytes),
        h11_max_incomplete_event_size=max_head_bytes(settings.max_header_bytes, settings.max_url_bytes),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float is fine: call_later
        limit_concurrency=settings.max_connections,
        # Connections the kernel queues before uvicorn accepts them; past max_connections they would only
        # be answered 503, so queue about that many (uvicorn's default of 2048 as the ceiling).
        backlog=min(2048, max(128, settings.max_connections)),
    )
    accounts.store.close()  # the lifespan shutdown has written the last usage
    return 0
