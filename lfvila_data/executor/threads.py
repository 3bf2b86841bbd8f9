"""The executors of a build that starts no Ray: threads in the driver.

Fetching and cutting are subprocesses (ffmpeg, yt-dlp's downloads) and I/O, so threads
in one process give the same parallelism as Ray's worker processes on one machine,
without Ray's start and stop (7 of the 9 s a small build's rerun took). `run_videos_local`
keeps `runner.run_videos`' contract: results as they finish, a cut's progress while it
runs, a crashing video a ledger row, and an exception from `on_result` (the output is
full) or an interrupt stops it.

Subprocesses must not outlive the driver. `PR_SET_PDEATHSIG` would end a child when the
*thread* that spawned it exits (and yt-dlp spawns its own), so instead every child of a
run carries a marker in its environment, and a small watchdog process (`watchdog.py`)
kills the marked processes once the driver is gone, `kill -9` included. An interrupt
kills them at once."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from lfvila_data.executor import watchdog
from lfvila_data.executor.base import Done, R, RunConfig, T, crash_line, fetch_then_cut
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, cut_video, fetch_video
from lfvila_data.output.write import RETRY, VideoResult
from lfvila_data.progress import CutProgress, Throttled
from lfvila_data.records import Failure, FailureCode, Stage

STOP_GRACE_S = 5.0  # how long an interrupted run waits for its threads to notice


def local_cpus() -> int:
    """CPUs this process may use (its affinity where the OS has one, as Ray counts a local
    node's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def crash_result(job: VideoJob, is_cut: bool, err: Exception) -> VideoResult:
    """A task that died (worker crash, bug) is recorded and retried on the next run."""
    stage = Stage.CUT if is_cut else Stage.DOWNLOAD
    reason = f"{stage.value} task failed: {crash_line(err)}"
    return VideoResult(job.video_id, RETRY, [], [Failure(job.video_id, None, stage.value, FailureCode.TASK_CRASHED,
                                                          reason, False).to_row()], {})


def cut_reporting(outcome: FetchOutcome, ctx: TaskContext, post: Callable[[CutProgress], None],
                  every_s: float) -> VideoResult:
    """Cut, posting progress at most every `every_s`; the last report is posted before
    the result is returned."""
    report = Throttled(post, every_s)
    try:
        return cut_video(outcome, ctx, report)
    finally:
        report.flush()


class ThreadPool:
    """`threads` daemon threads running submitted calls, each posting `Done(tag, value)`
    (or the exception) to `done`. Daemon threads: a driver that stops does not wait for a
    download it gave up on; calls still queued when `close` is called never run."""

    def __init__(self, threads: int, done: queue.SimpleQueue, name: str) -> None:
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(done,), daemon=True, name=f"{name}-{i}")
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any, tag: Any) -> None:
        self._todo.put((fn, arg, tag))

    def _work(self, done: queue.SimpleQueue) -> None:
        while True:
            task = self._todo.get()
            if task is None or self._closed.is_set():
                return
            fn, arg, tag = task
            try:
                done.put(Done(tag, fn(arg)))
            except Exception as e:  # noqa: BLE001 - a failed call is a value, as on Ray
                done.put(Done(tag, error=e))

    def close(self) -> None:
        self._closed.set()
        for _ in self._threads:
            self._todo.put(None)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)


def finished(done: queue.SimpleQueue, timeout: float) -> list[Done]:
    """What finished within `timeout` (at most that long for the first), all of it."""
    try:
        out = [done.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            out.append(done.get_nowait())
        except queue.Empty:
            return out


def drained(q: queue.SimpleQueue) -> list:
    return finished(q, 0) if not q.empty() else []


@dataclass(frozen=True)
class ThreadTasks:
    """A `TaskMap` on threads of this process (default: its CPUs), results in completion
    order: for I/O-bound tasks (subtitle look-ups, shard writing) of a build without Ray."""

    max_in_flight: int | None = None

    def __call__(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Done[T, R]]:
        limit = self.max_in_flight or local_cpus()
        done: queue.SimpleQueue = queue.SimpleQueue()
        pool = ThreadPool(limit, done, "tasks")
        try:
            running = 0
            for item in items:
                if running == limit:
                    result = done.get()
                    running -= 1
                    yield result
                pool.submit(fn, item, item)
                running += 1
            for _ in range(running):
                yield done.get()
        finally:
            pool.close()


class ChildReaper:
    """Every process started inside this scope (and their children) carries a marker in
    its environment; a watchdog process kills the marked ones when the driver dies, and
    `kill_all` kills them now (an interrupted run). A scope left by an exception keeps
    its watchdog until the process exits: a thread still winding down may spawn one more."""

    def __init__(self) -> None:
        self.mark = f"{watchdog.MARK}={os.getpid()}-{uuid.uuid4().hex}"
        self._watchdog: subprocess.Popen | None = None
        self._before: str | None = None

    def __enter__(self) -> Self:
        env = {k: v for k, v in os.environ.items() if k != watchdog.MARK}
        # its own session: a Ctrl-C to the terminal's process group must not end it first
        self._watchdog = subprocess.Popen([sys.executable, "-I", "-S", str(Path(watchdog.__file__)), self.mark],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self._before = os.environ.get(watchdog.MARK)
        os.environ[watchdog.MARK] = self.mark.partition("=")[2]
        return self

    def kill_all(self) -> int:
        """Kill the marked processes still running; how many there were."""
        return len(watchdog.kill_marked(self.mark.encode(), spare={self._watchdog.pid} if self._watchdog else set()))

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._before is None:
            os.environ.pop(watchdog.MARK, None)
        else:
            os.environ[watchdog.MARK] = self._before
        self.kill_all()
        if exc_type is None and self._watchdog is not None:
            self._watchdog.stdin.close()  # it checks once more, then exits
            self._watchdog.wait()


def run_videos_local(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
                     on_result: Callable[[VideoResult], None], tick: Callable[[], None],
                     on_progress: Callable[[CutProgress], None], report_every_s: float = 2.0) -> None:
    """`runner.run_videos` on threads of the driver: `rc.fetch_concurrency` downloads and
    `rc.cut_concurrency` cuts (default: this machine's CPUs over the cut threads) at once."""
    fetch_then_cut_on_threads(jobs, lambda job: fetch_video(job, ctx),
                              lambda got, post: cut_reporting(got, ctx, post, report_every_s),
                              rc.fetch_concurrency, rc.cut_concurrency or max(1, int(local_cpus() // rc.cut_cpus)),
                              on_result, tick, on_progress)


def fetch_then_cut_on_threads(jobs: Iterable[VideoJob], fetch: Callable[[VideoJob], FetchOutcome],
                              cut: Callable[[FetchOutcome, Callable[[CutProgress], None]], VideoResult],
                              fetch_slots: int, cut_slots: int, on_result: Callable[[VideoResult], None],
                              tick: Callable[[], None], on_progress: Callable[[CutProgress], None]) -> None:
    """`fetch(job)` then `cut(outcome, post)` per job on two thread pools, within a
    `ChildReaper`; `post` hands a cut's reports to the driver, which drains them while it
    waits. A step that raises is a `task_crashed` result; when `on_result` (or an
    interrupt) raises, what the threads still run is killed and nothing more starts."""
    done: queue.SimpleQueue = queue.SimpleQueue()
    reports: queue.SimpleQueue = queue.SimpleQueue()
    with ChildReaper() as reaper:
        fetchers = ThreadPool(fetch_slots, done, "fetch")
        cutters = ThreadPool(cut_slots, done, "cut")
        try:
            fetch_then_cut(jobs, cut_slots, fetch_slots, lambda job: fetchers.submit(fetch, job, (False, job)),
                           lambda got: cutters.submit(lambda o: cut(o, reports.put), got, (True, got.job)),
                           lambda: finished(done, 0.5), lambda: drained(reports), crash_result,
                           on_result, tick, on_progress)
        finally:
            fetchers.close()
            cutters.close()
            _wind_down(reaper, fetchers, cutters)


def _wind_down(reaper: ChildReaper, *pools: ThreadPool) -> None:
    """After an early stop: kill what the threads still run (a retry may start another)
    until they end, for at most STOP_GRACE_S; after a normal end they are idle already."""
    deadline = time.monotonic() + STOP_GRACE_S
    while any(p.alive() for p in pools) and time.monotonic() < deadline:
        reaper.kill_all()
        time.sleep(0.05)
