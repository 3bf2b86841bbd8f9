"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster), one CPU per node,
for the builds that run with `--ray-address`."""
from __future__ import annotations

import pytest


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave any local Ray of other tests
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()
