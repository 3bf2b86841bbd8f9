"""Starting or joining Ray, and what the cluster offers (for sizing pools)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import ray
from ray.exceptions import AuthenticationError

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
    with _stderr_captured() as captured:
        try:
            ray.init(**kwargs)
            return
        except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
            error, said = e, captured()
    # a cluster that wants a token this job did not send: send the one this machine holds
    if not (address and _refused_token(said) and pass_token_through()):
        raise InputError(_init_error(address, error, said)) from error
    with _stderr_captured() as captured:
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
            raise InputError(_init_error(address, e, captured())) from e


def _refused_token(stderr: str) -> bool:
    return "InvalidAuthToken" in stderr or "Unauthenticated" in stderr


def pass_token_through() -> bool:
    """Send this machine's token to a cluster that refused us without one (token
    authentication is the default of `ray start` since Ray 2.59, but Ray's driver sends a
    token to an explicit address only when RAY_AUTH_MODE=token is set). True when there
    is a token to try and the user did not choose a mode."""
    if os.environ.get("RAY_AUTH_MODE"):
        return False  # the user chose; respect it
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path)):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray read its config when it was imported; this is how Ray itself makes a process see
    # a mode set later (ray._private.authentication)
    from ray._raylet import Config

    Config.initialize("")
    return True


def _init_error(address: str | None, e: BaseException, stderr: str) -> str:
    where = address or "local"
    if _refused_token(stderr) or isinstance(e, AuthenticationError):
        return (f"the Ray cluster at {where} requires token authentication and refused this job's "
                "token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, which "
                "`ray get-auth-token` prints on its head node")
    return f"cannot start or reach Ray at {where}: {e}"


@contextlib.contextmanager
def _stderr_captured() -> Iterator:
    """Keep what Ray prints while it starts (C++ network warnings, the token notice, ~20
    lines of retries against a cluster that refuses us) off the user's screen; the text
    is kept to explain a failure in one line."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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
