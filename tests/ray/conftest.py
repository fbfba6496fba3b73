"""Fixtures of the Ray tests: a local cluster per module (`ray start --block` on loopback, 2 CPUs, its own
ports and temp dir, stopped by its own process group), this process connected to it as a driver, and
bounded polling waits."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from cluster import RayNode, short_temp_dir

# Ray 2.60 turns token authentication on when ~/.ray/auth_token exists (and writes that file when a new local
# cluster starts), so whether a test cluster wants a token would depend on what else ran on the machine; a
# node started before the file appeared then refuses one started after. These clusters listen on loopback
# only: authentication is off, explicitly, for them, this process and the commands it starts.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    temp_dir = short_temp_dir()
    node = RayNode(num_cpus=2, temp_dir=temp_dir, log_path=tmp_path_factory.mktemp("ray") / "head.log")
    try:
        node.wait_started()
        yield node
    finally:
        node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_driver(ray_head: RayNode) -> Iterator[str]:
    """This process as a driver of the module's cluster (to find, inspect and kill actors); its address."""
    import ray

    ray.init(address=ray_head.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray_head.address
    finally:
        ray.shutdown()
