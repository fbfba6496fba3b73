"""Without a cluster: the Serve options derived from Settings, the replicas' health check, and the
deploy/ files (Serve's schema, the builder they name)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes import FakeBackend
from pydantic import ValidationError

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine
from siglip_serve.errors import EngineUnavailableError
from siglip_serve.scaling.serve_app import (
    REPLICA_DEPLOYMENT,
    WRITER_DEPLOYMENT,
    EngineUnhealthyError,
    app_builder,
    check_engine,
    deployment_options,
    parse_autoscale,
    replica_settings,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GUARD_S = 30.0


def test_fixed_replicas_from_settings() -> None:
    settings = Settings(ray=True, replicas=3, ray_num_cpus=2, ray_num_gpus=0.5, max_ongoing_requests=40)
    assert deployment_options(settings) == {
        "num_replicas": 3, "max_ongoing_requests": 40, "ray_actor_options": {"num_cpus": 2, "num_gpus": 0.5}}
    per_replica = replica_settings(settings)
    assert per_replica.torch_threads == 2  # the CPUs it reserved, not Ray's OMP_NUM_THREADS=1
    assert per_replica.replicas == 3  # rate limits divided by 3


def test_autoscaling_from_settings() -> None:
    settings = Settings(ray=True, autoscale="1:8", target_ongoing_requests=12, torch_threads=3)
    options = deployment_options(settings)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 12}
    per_replica = replica_settings(settings)
    assert per_replica.replicas == 8 and per_replica.torch_threads == 3


@pytest.mark.parametrize("text", ["3:1", "0:0"])
def test_bad_autoscale_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="autoscale"):
        parse_autoscale(text)


def test_autoscale_must_be_min_colon_max() -> None:
    with pytest.raises(ValidationError):
        Settings(autoscale="4")


def test_check_health_follows_the_engine() -> None:
    """Serve's health check raises exactly when /health answers 503: a batcher loop that died."""
    engine = Engine({"fake": FakeBackend()})
    app = create_app(Settings(model=["fake"]), lambda: engine)  # a factory, as a replica builds its engine

    async def main() -> None:
        check_engine(app)  # before the lifespan has built the engine: nothing to report
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                assert (await client.get("/health")).status_code == 200
                check_engine(app)
                batcher = engine.models["fake"].batchers[0]

                def broken(size: int) -> list[Any]:
                    raise RuntimeError("bug in the loop")

                batcher._pop_live = broken  # type: ignore[method-assign]
                with pytest.raises(EngineUnavailableError):
                    await batcher.submit([b"img:1"])
                assert (await client.get("/health")).status_code == 503
                with pytest.raises(EngineUnhealthyError):
                    check_engine(app)

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def serve_configs() -> dict[str, dict[str, Any]]:
    service = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    return {"serve.yaml": yaml.safe_load((DEPLOY / "serve.yaml").read_text()),
            "rayservice.yaml": yaml.safe_load(service["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("name", ["serve.yaml", "rayservice.yaml"])
def test_deploy_files_are_valid_serve_configs(name: str, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = serve_configs()[name]
    ServeDeploySchema.parse_obj(config)  # Serve's own check of `serve run`/`serve deploy` files (pydantic v1 API)
    application = config["applications"][0]
    assert application["import_path"] == "siglip_serve.scaling.serve_app:app_builder"
    assert {d["name"] for d in application["deployments"]} == {REPLICA_DEPLOYMENT, WRITER_DEPLOYMENT}
    args = {**application["args"], "data_dir": str(tmp_path)}
    Settings(**args)  # every arg is a setting
    app_builder(args)  # builds the application (the replicas' constructors run only on the cluster)
    settings = Settings(**args)
    scaling = deployment_options(settings)
    replica = next(d for d in application["deployments"] if d["name"] == REPLICA_DEPLOYMENT)
    # The file's Serve knobs agree with what its args derive (rate limits are divided by MAX).
    assert replica["autoscaling_config"] == scaling["autoscaling_config"]
    assert replica["ray_actor_options"] == scaling["ray_actor_options"]
    assert replica["max_ongoing_requests"] == scaling["max_ongoing_requests"]
