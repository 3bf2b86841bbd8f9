"""Starting or joining Ray, and what the cluster offers (for sizing pools)."""
from __future__ import annotations

import logging
import signal
import threading

import ray

from lfvila_data.inputs import InputError


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray without an address; otherwise join the given cluster unchanged."""
    if ray.is_initialized():
        return
    # "local": a new Ray on this machine, never a cluster that happens to run here
    kwargs: dict = {"address": "local", "log_to_driver": False, "include_dashboard": False,
                    "logging_level": logging.WARNING}
    if address:
        kwargs = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING}
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot start or reach Ray at {address or 'local'}: {e}") from e


def cluster_resources() -> dict[str, float]:
    """The cluster's total resources ("CPU", "GPU", ...)."""
    return ray.cluster_resources()


def cluster_cpus() -> int:
    """CPUs of the whole cluster, at least 1: the default number of CPU tasks at once."""
    return max(1, int(cluster_resources().get("CPU", 1)))


def node_id() -> str:
    """The node this task runs on, so a later task can be pinned next to its files."""
    return ray.get_runtime_context().get_node_id()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop the driver the way Ctrl-C does (Ray's own SIGTERM handler
    just exits), so the build unwinds: Ray is shut down and the job's scratch and lease
    are removed instead of outliving it."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)


def shutdown_ray() -> None:
    """Stop Ray now: a local instance's processes (workers, raylet, agents) with it."""
    if ray.is_initialized():
        ray.shutdown()
