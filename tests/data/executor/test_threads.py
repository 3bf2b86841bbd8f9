"""The executors of a build without Ray: threads in the driver. The task map and the
fetch → cut runner give every item's result once, run in parallel within their bounds,
turn a failing step into a value (a `task_crashed` row), hand a cut's reports over before
its result, and stop early; no subprocess outlives the driver, even after kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from lfvila_data.executor.threads import ThreadTasks, fetch_then_cut_on_threads
from lfvila_data.media.task import FetchOutcome, VideoJob
from lfvila_data.output.write import DONE, OutputStopped, VideoResult
from lfvila_data.progress import CutProgress


class Refused(Exception):
    """A failure of the task's own code: it must reach the caller as this type."""


def test_thread_tasks_give_every_result_once_in_parallel_and_errors_as_values():
    both = threading.Barrier(2, timeout=60)  # two items must run at once to pass it
    running, most, lock = [0], [0], threading.Lock()
    pulled: list[int] = []

    def square(x: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            if x in (0, 1):
                both.wait()
            if x == 3:
                raise Refused(f"no {x}")
            return x * x
        finally:
            with lock:
                running[0] -= 1

    def items():
        for i in range(8):
            pulled.append(i)
            yield i

    got = list(ThreadTasks(max_in_flight=2)(square, items()))
    assert sorted(d.item for d in got) == list(range(8)) and most[0] == 2
    assert {d.item: d.value for d in got if d.error is None} == {i: i * i for i in range(8) if i != 3}
    assert [type(d.error) for d in got if d.error is not None] == [Refused]


def _job(i: int) -> VideoJob:
    return VideoJob(f"v{i}", f"http://127.0.0.1:9/{i}.mp4", (), 4)


def test_fetch_then_cut_results_reports_and_crashes():
    """v1's fetch and v2's cut raise (a bug): each is one task_crashed row at its stage;
    each cut's report arrives before its result; v0 and v3 are fetched at once."""
    both = threading.Barrier(2, timeout=60)
    events: list[tuple[str, str]] = []

    def fetch(job: VideoJob) -> FetchOutcome:
        if job.video_id in ("v0", "v3"):
            both.wait()
        if job.video_id == "v1":
            raise RuntimeError("bug in fetch")
        return FetchOutcome(job, None)

    def cut(got: FetchOutcome, post) -> VideoResult:
        post(CutProgress(got.job.video_id, 1, 1, 2.0))
        if got.job.video_id == "v2":
            raise ValueError("bug in cut")
        return VideoResult(got.job.video_id, DONE, [], [], {})

    results: dict[str, VideoResult] = {}

    def on_result(r: VideoResult) -> None:
        assert r.video_id not in results
        results[r.video_id] = r
        events.append(("result", r.video_id))

    fetch_then_cut_on_threads([_job(i) for i in range(6)], fetch, cut, 2, 2, on_result, lambda: None,
                              lambda p: events.append(("report", p.video_id)))
    assert sorted(results) == [f"v{i}" for i in range(6)]
    crashed = {vid: (r.failures[0]["stage"], r.failures[0]["code"], r.failures[0]["reason"])
               for vid, r in results.items() if r.failures}
    assert crashed == {"v1": ("download", "task_crashed", "download task failed: RuntimeError: bug in fetch"),
                       "v2": ("cut", "task_crashed", "cut task failed: ValueError: bug in cut")}
    for vid in ("v0", "v3", "v4", "v5"):
        assert events.index(("report", vid)) < events.index(("result", vid))


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether the process ended (a zombie waiting for a parent counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_stop_kills_running_subprocesses_and_starts_nothing_more():
    """The output fails at v1's result: v0's cut (a long subprocess) is killed and the
    jobs after it are never fetched."""
    fetched: list[str] = []
    sleeper: list[int] = []
    ready = threading.Event()

    def fetch(job: VideoJob) -> FetchOutcome:
        fetched.append(job.video_id)
        return FetchOutcome(job, None)

    def cut(got: FetchOutcome, post) -> VideoResult:
        if got.job.video_id == "v0":
            proc = subprocess.Popen(["sleep", "300"])
            sleeper.append(proc.pid)
            ready.set()
            proc.wait()
        else:
            ready.wait(60)
        return VideoResult(got.job.video_id, DONE, [], [], {})

    def on_result(r: VideoResult) -> None:
        raise OutputStopped(f"disk full at {r.video_id}")

    with pytest.raises(OutputStopped, match="disk full at v1"):
        fetch_then_cut_on_threads([_job(i) for i in range(20)], fetch, cut, 1, 2, on_result,
                                  lambda: None, lambda p: None)
    assert _gone(sleeper[0])
    assert len(fetched) <= 5  # at most 2 cuts running and 2 waiting, plus one fetching


DRIVER = """
import subprocess, sys, threading
from lfvila_data.executor.threads import ChildReaper

def spawn():
    child = subprocess.Popen(["sleep", "300"])
    print(child.pid, flush=True)
    child.wait()

with ChildReaper():
    threading.Thread(target=spawn, daemon=True).start()  # a pool thread's child
    threading.Event().wait()
"""


def test_kill_9_of_the_driver_kills_what_its_threads_started():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(driver.stdout.readline())
        assert not _gone(pid, timeout=0)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert _gone(pid)


def test_a_build_without_ray_does_not_import_it():
    """Importing Ray takes seconds on a busy machine: the build imports it only to run on it."""
    code = ("import sys, lfvila_data.cli, lfvila_data.build, lfvila_data.executor.threads; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"
