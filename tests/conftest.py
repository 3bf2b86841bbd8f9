"""Shared fixtures: a local Ray (started once, restarted if a test shut it down); and the
network isolation every test runs under (tests/support/netguard.py), set up before anything
starts a thread or a child process."""
from __future__ import annotations

import os

import pytest

from tests.support import netguard

NETWORK = netguard.isolate()

# every test server listens on loopback, which fetches refuse by default (guard.py); set
# before anything builds a FetchConfig or starts Ray, whose workers inherit it. The
# refusal tests unset it.
os.environ["LFVILA_ALLOW_PRIVATE_ADDRESSES"] = "1"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def ensure_local_ray():
    """A new local Ray with 2 CPUs (never a cluster that happens to run on the machine),
    started once and shared: starting Ray costs seconds."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
    return ray


@pytest.fixture
def ray_local():
    yield ensure_local_ray()


@pytest.fixture(scope="module")
def ray_module():
    """For module-scoped fixtures; re-checked per module (the cluster test shuts Ray down)."""
    yield ensure_local_ray()


def pytest_report_header(config):
    return NETWORK


@pytest.fixture(scope="session")
def finished_builds(tmp_path_factory):
    """Simulated finished builds of 500 and 2,000 samples (tests/support/finished.py),
    made once for the memory tests of finalize, shard planning, resume and stats."""
    from tests.support.finished import finished_pair

    return finished_pair(tmp_path_factory.mktemp("finished"))
