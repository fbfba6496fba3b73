"""A two-node cluster on one machine (a head and a worker `ray start`, each with its own ports and CPUs, on
loopback): the embed job's actors and the Serve replicas land on both nodes.

Each replica and each actor asks for more than half of a node's CPUs, so two of them cannot share a node:
spreading is what the resources force, as on a real cluster of one-GPU nodes with `num_gpus=1`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import RayNode, short_temp_dir, wait_until
from ports import free_port
from sample_images import photo_like

from siglip_serve.config import Settings
from siglip_serve.jobs.embed import EmbedOptions
from siglip_serve.scaling.data_job import RayOptions, run_ray_embed
from siglip_serve.scaling.serve_app import APP_NAME, REPLICA_DEPLOYMENT, build_application

pytestmark = pytest.mark.slow  # two nodes' worth of Ray processes and two model loads per part: minutes on 2 cores

NODE_CPUS = 2


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Head and worker nodes; this process is a driver of the cluster. Yields the head's address."""
    import ray

    temp_dir = short_temp_dir()
    logs = tmp_path_factory.mktemp("two-nodes")
    head = RayNode(num_cpus=NODE_CPUS, temp_dir=temp_dir, log_path=logs / "head.log")
    worker: RayNode | None = None
    try:
        head.wait_started()
        worker = RayNode(num_cpus=NODE_CPUS, temp_dir=temp_dir, log_path=logs / "worker.log",
                         head_address=head.address)
        worker.wait_started()
        ray.init(address=head.address, logging_level="WARNING", log_to_driver=False)
        wait_until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "both nodes alive")
        yield head.address
    finally:
        ray.shutdown()
        for node in (worker, head):
            if node is not None:
                node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_embed_actors_spread_over_both_nodes(two_nodes: str, siglip1_dir: Path, tmp_path: Path) -> None:
    import ray

    images = tmp_path / "images"
    images.mkdir()
    for index in range(16):
        photo_like(32, 24, seed=index).save(images / f"{index:02d}.png")
    options = EmbedOptions(sources=[str(images)], out=str(tmp_path / "out" / "spread"), model=str(siglip1_dir),
                           device="cpu", dtype="float32", batch_size=2, quiet=True)
    # 1.5 CPUs per actor: one per node; the decode tasks fit in the half CPU left on each.
    summary = run_ray_embed(options, RayOptions(address=two_nodes, actors=2, cpus_per_actor=1.5, decode_cpus=0.5))
    assert (summary.embedded, summary.failed) == (16, 0)
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert summary.nodes and summary.nodes <= alive
    # Where the pool's actors ran (the GCS actor table keeps finished actors; the state API would need the
    # dashboard, which these clusters leave off). Which actor got which batch is Ray Data's choice.
    from ray._private.state import actors

    placed = [info["Address"]["NodeID"] for info in actors().values() if "EmbedActor" in info["ActorClassName"]]
    assert len(placed) == 2 and set(placed) == alive, f"actors on {placed}, nodes are {alive}"


def test_serve_replicas_spread_over_both_nodes(two_nodes: str, siglip1_dir: Path, tmp_path: Path) -> None:
    import ray
    from ray import serve

    settings = Settings(model=[f"tiny={siglip1_dir}"], device="cpu", dtype="float32", data_dir=str(tmp_path / "data"),
                        replicas=2, ray_num_cpus=NODE_CPUS, log_level="warning")
    # One proxy: two nodes on one machine cannot both bind the HTTP port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        handle = serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
        seen: dict[str, str] = {}

        def both_replicas_answered() -> bool:
            info = handle.replica_info.remote().result()
            seen[info["replica"]] = info["node_id"]
            return len(seen) == 2

        wait_until(both_replicas_answered, "calls answered by both replicas", poll_s=0.0)
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert set(seen.values()) == alive, f"replicas on {seen}, nodes are {alive}"
        status = serve.status().applications[APP_NAME].deployments[REPLICA_DEPLOYMENT]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
