"""Shared fixtures: a local Ray (started once, restarted if a test shut it down)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture
def ray_local():
    """A local Ray with 2 CPUs; starting Ray costs seconds, so it is shared by tests."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
    yield ray
