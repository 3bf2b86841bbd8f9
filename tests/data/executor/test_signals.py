"""A signal is never lost: Ray's blocking calls catch the KeyboardInterrupt that a signal
handler raises inside them, so the build's handler also records the signal and the
scheduling loop raises it again (a build sent SIGINT while it asked Ray for its nodes
once went on and exited 0)."""
from __future__ import annotations

import os
import signal

import pytest

from lfvila_data.executor.base import fetch_then_cut, stop_on_signals


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_signal_still_stops_the_run(handlers, sig):
    stop_on_signals()
    try:  # what a library call that catches the interrupt does
        os.kill(os.getpid(), sig)
    except KeyboardInterrupt:
        pass
    started: list[str] = []

    def wait() -> list:
        raise AssertionError(f"the run went on after the signal: {started}")

    with pytest.raises(KeyboardInterrupt):
        fetch_then_cut(["v0", "v1"], 1, 1, started.append, lambda _: None, wait, list,
                       lambda *_: None, lambda _: None, lambda: None, lambda _: None)
    assert not started  # stopped before any download started


def test_a_new_run_starts_unsignalled(handlers):
    stop_on_signals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt:
        pass
    stop_on_signals()  # the next build in this process
    fetch_then_cut([], 1, 1, lambda _: None, lambda _: None, list, list,
                   lambda *_: None, lambda _: None, lambda: None, lambda _: None)  # no raise


SLOW_CLEANUP = """
import sys, threading, time
from lfvila_data.executor.base import stop_on_signals
from lfvila_data.executor.cluster import RayStart, shutdown_ray
stop_on_signals()
# Ray started as a build starts it: on a thread that outlives the start (Ray's processes
# get SIGKILL when the thread that spawned them ends, and a driver whose GCS is gone
# hangs in ray.shutdown)
RayStart(None, 1).wait()
try:  # the signal may come while "ready" is still being written
    print("ready", flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(4)  # a clean-up slower than the 3 s alarm of Ray's failure handler
    shutdown_ray()
    sys.exit(2)
"""


def test_a_clean_up_slower_than_rays_alarm_is_not_aborted():
    """Ray's driver puts absl's failure handler on top of ours when Ray starts after it:
    it armed a 3 s alarm that aborted the build mid-clean-up (exit -6 under load,
    test_kill's SIGTERM case failed 3 of 3 runs at load 20-25)."""
    import subprocess
    import sys

    job = subprocess.Popen([sys.executable, "-c", SLOW_CLEANUP], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "ready", job.stderr.read()[-3000:]
        job.send_signal(signal.SIGTERM)
        rc = job.wait(timeout=60)
    finally:
        job.kill()
    assert rc == 2, job.stderr.read()[-3000:]
