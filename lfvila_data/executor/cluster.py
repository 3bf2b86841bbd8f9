"""Starting or joining Ray, and what the cluster offers (for sizing pools)."""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray
from ray.exceptions import AuthenticationError

from lfvila_data.inputs import InputError


def init_ray(address: str | None, num_cpus: int | None = None, processes: Path | None = None) -> None:
    """Local Ray without an address; otherwise join the given cluster unchanged.

    `processes` (a file beside the job's scratch): first the Ray processes a killed
    earlier job of the same output left there are ended, then a new local Ray's processes
    (raylet, GCS, agents) are written there, for the next start to do the same."""
    if ray.is_initialized():
        return
    if processes is not None:
        reap_processes(processes)
    _start_ray(address, num_cpus)
    if processes is not None and not address:
        record_processes(processes, psutil.Process().children(recursive=True))


def remove_on_every_node(path: Path, timeout: float = 60.0) -> int:
    """Remove `path` (a job's node-local scratch) on every live node of the cluster: what a
    killed job left on the workers, which the driver's own clean-up cannot reach. Returns
    the nodes that answered; a node that does not answer in time keeps its folder."""
    import shutil

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remove = ray.remote(num_cpus=0, max_retries=0)(lambda p: shutil.rmtree(p, ignore_errors=True))
    refs = [remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(path)) for n in ray.nodes() if n.get("Alive")]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    return len(done)


def processes_file(scratch: Path) -> Path:
    """Where a build records its local Ray's processes: beside its scratch folder (which
    is cleared before Ray starts), one file per output like the scratch itself."""
    return scratch.with_name(scratch.name + ".ray-processes.json")


def record_processes(path: Path, procs: list[psutil.Process]) -> None:
    """Write each process's pid and start time (a pid alone may be reused by then)."""
    rows = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rows.append({"pid": p.pid, "started": p.create_time(), "name": p.name()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(path)


def reap_processes(path: Path, grace: float = 3.0) -> int:
    """End the recorded processes still running (same pid, same start time): what a
    `kill -9` of the driver left. Returns how many were running; removes the record."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    alive = []
    for row in rows:
        with contextlib.suppress(psutil.Error, KeyError, TypeError):
            p = psutil.Process(row["pid"])
            if abs(p.create_time() - row["started"]) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(alive, timeout=grace)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=grace)
    path.unlink(missing_ok=True)
    return len(alive)


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    # "local": a new Ray on this machine, never a cluster that happens to run here
    kwargs: dict = {"address": "local", "log_to_driver": False, "include_dashboard": False,
                    "logging_level": logging.WARNING}
    if address:
        kwargs = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING}
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    with _stderr_captured() as captured:
        try:
            if address or not _start_lean(LocalRay.from_env(), num_cpus, kwargs):
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


LEAN_ENV = "LFVILA_RAY_LEAN"  # "0": a local Ray with every process ray.init starts


@dataclass(frozen=True)
class LocalRay:
    """Which of Ray's optional processes a local Ray this job starts runs (issue 15, fixed
    cost; docs/performance.md, "Ray's own processes"). The GCS, the raylet, its two agents
    and the object store always run; a cluster named by address is never changed. Each
    default leaves out what a one-machine build does not use:

    - `dashboard`: Ray's dashboard process, which `include_dashboard=False` does not
      remove but reduces to a usage-stats module that ray.init turns off; ray.init waits
      for it to come up (~1.5 CPU-s);
    - `monitor`: the autoscaler's monitor (nothing to scale on one machine);
    - `log_monitor`: it sends workers' output to the driver, which `log_to_driver=False`
      drops (the output stays in the session's log files);
    - `prestart`: a worker per CPU started when the driver connects, whether or not
      anything runs (a rerun with nothing to cut); tasks start the workers they need."""

    dashboard: bool = False
    monitor: bool = False
    log_monitor: bool = False
    prestart: bool = False

    @classmethod
    def from_env(cls) -> LocalRay | None:
        """The lean start unless LFVILA_RAY_LEAN=0 asks for Ray's own (None)."""
        return None if os.environ.get(LEAN_ENV, "1").strip() == "0" else cls()


_local_node = None  # the head node of the lean local Ray this process started, if any
_exit_hook: list = []  # shutdown_ray, once registered to run at exit


def _start_lean(lean: LocalRay | None, num_cpus: int | None, kwargs: dict) -> bool:
    """Start a local Ray without the processes `lean` leaves out, then connect to it.
    ray.init has no options for them, so this starts Ray's head node as ray.init does
    (token authentication, usage stats off) with those processes left out, and ray.init
    joins it by address. False (nothing started) where this Ray lacks the internals it
    uses: the caller then runs ray.init itself."""
    global _local_node
    if lean is None:
        return False
    try:
        from ray._common.usage import usage_lib
        from ray._private.authentication.authentication_token_setup import (
            enable_token_auth_by_default,
            ensure_token_if_auth_enabled,
        )
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        config = {} if lean.prestart else {"prestart_worker_first_driver": False}
        params = RayParams(num_cpus=num_cpus, include_dashboard=False, dashboard_port=None,
                           include_log_monitor=lean.log_monitor, no_monitor=not lean.monitor,
                           _system_config=config)
        Node.start_api_server  # noqa: B018 (what the lean node overrides must exist)
    except (ImportError, AttributeError, TypeError):
        return False

    class LeanNode(Node):
        def start_api_server(self, *args, **kwargs) -> None:
            if lean.dashboard:
                super().start_api_server(*args, **kwargs)
            else:
                self._webui_url = ""  # as when the dashboard fails to start: none

    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(config, create_token_if_missing=True)
    usage_lib.set_usage_stats_enabled_via_env_var(False)
    before = {p.pid for p in psutil.Process().children()}
    try:
        _local_node = LeanNode(params, head=True, shutdown_at_exit=False, spawn_reaper=True,
                               ray_init_cluster=True)
        ray.init(address=_local_node.address, **{k: v for k, v in kwargs.items()
                                                 if k in ("log_to_driver", "logging_level")})
    except BaseException:
        _stop_local_node()
        _end_new_children(before)  # a node that failed half-way is not in _local_node
        raise
    if not _exit_hook:  # runs before Ray's own (atexit runs the last one first)
        _exit_hook.append(atexit.register(shutdown_ray))
    return True


def _stop_local_node() -> None:
    """End the processes of the lean local Ray (the raylet first, which stops its agents
    and workers), as ray.shutdown does for a Ray that ray.init started."""
    global _local_node
    node, _local_node = _local_node, None
    if node is not None:
        with contextlib.suppress(Exception):
            node.destroy_external_storage()
        node.kill_all_processes(check_alive=False, allow_graceful=True)


def _end_new_children(before: set[int]) -> None:
    """End Ray's processes this process started since `before` (not the driver's own
    children, such as a probe the planning thread runs meanwhile)."""
    home = os.path.dirname(ray.__file__)
    procs = []
    for p in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if p.pid not in before and home in " ".join(p.cmdline()):
                procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


class RayStart:
    """Ray starting on a thread of its own while the driver does what needs no Ray
    (checks, the lease, planning small inputs): a local start takes 4-9 s on 2 cores, most
    of a small build's fixed cost. `wait()` before the first Ray call; it re-raises the
    start's error (an InputError naming the cluster)."""

    def __init__(self, address: str | None, num_cpus: int | None = None,
                 processes: Path | None = None) -> None:
        python_stderr_on_screen()
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(address, num_cpus, processes),
                                        name="ray-start", daemon=True)
        self._thread.start()

    def _start(self, address: str | None, num_cpus: int | None, processes: Path | None) -> None:
        try:
            init_ray(address, num_cpus, processes)
        except BaseException as e:  # handed to the thread that waits
            self._error = e
        finally:
            self._started.set()
        # Ray's processes die with the *thread* that started them (PR_SET_PDEATHSIG is
        # per thread on Linux), at once and ungracefully: this one lives as long as the
        # process, so they end as if the main thread had started them (after Ray's own
        # shutdown, which lets the raylet stop its agents)
        threading.Event().wait()

    def wait(self) -> None:
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Shut Ray down, a start still under way included (its processes would leak)."""
        self._started.wait()
        shutdown_ray()


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
    is kept to explain a failure in one line. (Python's own `sys.stderr` may write past
    it: see `python_stderr_on_screen`.)"""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def python_stderr_on_screen() -> None:
    """Point `sys.stderr` at a copy of file descriptor 2, so that what this process
    prints (progress lines) reaches the screen while Ray starts on another thread with
    descriptor 2 sent elsewhere. Called once, on the main thread, before that start:
    swapping streams while another thread prints would split its lines."""
    if _on_fd2(sys.stderr):
        sys.stderr.flush()
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding,
                               errors="backslashreplace")


def _on_fd2(stream: object) -> bool:
    """Whether a stream writes to file descriptor 2 (not, e.g., pytest's capture)."""
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def cluster_resources() -> dict[str, float]:
    """The cluster's total resources ("CPU", "GPU", ...)."""
    return ray.cluster_resources()


def cluster_cpus() -> int:
    """CPUs of the whole cluster, at least 1: the default number of CPU tasks at once."""
    return max(1, int(cluster_resources().get("CPU", 1)))


def node_id() -> str:
    """The node this task runs on, so a later task can be pinned next to its files."""
    return ray.get_runtime_context().get_node_id()


def shutdown_ray() -> None:
    """Stop Ray now: a local instance's processes (workers, raylet, agents) with it."""
    if ray.is_initialized():
        ray.shutdown()
    _stop_local_node()
