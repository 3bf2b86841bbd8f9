"""What a stage sees of an executor: `Done` and the in-process executors.

Stages take the executor as an argument (a `TaskMap`, an `ActorMap` or a `Shuffle`) and
never import Ray; the build and shard commands pass the Ray ones (`executor.pool`), unit
tests pass these, which run everything in this process in input order."""
from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lfvila_data.output.fingerprint import SPEED
from lfvila_data.records import error_line

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")
S = TypeVar("S")
J = TypeVar("J")  # a video job
F = TypeVar("F")  # what its fetch hands to its cut


@dataclass(frozen=True)
class RunConfig:
    """How many videos are worked on at once: speed only, free to change on a rerun.
    (Here, not beside the Ray runner, so the command line is read without importing Ray.)"""

    fetch_concurrency: int = field(default=8, metadata=SPEED)
    cut_concurrency: int | None = field(default=None, metadata=SPEED)  # default: the cluster's CPUs
    cut_cpus: float = field(default=1.0, metadata=SPEED)
    # "ray", "local" (threads in the driver) or "auto" (build.choose_executor decides)
    executor: str = field(default="auto", metadata=SPEED)


class WorkerCrashed(Exception):
    """The process running a task or an actor died (killed, out of memory, lost node):
    the task's own code raised nothing, so a rerun may well succeed."""


def crash_line(err: Exception) -> str:
    """A failed task's exception as one ledger line, "Type: message" as Ray wrote it."""
    return error_line(err) if isinstance(err, WorkerCrashed) else f"{type(err).__name__}: {error_line(err)}"


@dataclass(frozen=True)
class Done(Generic[T, R]):
    """One finished item: its value, or the exception its task raised (the original
    exception, never a wrapper, so callers test its type)."""

    item: T
    value: R | None = None
    error: Exception | None = None


# fn, items -> one Done per item (as items finish); the executor holds the resources
TaskMap = Callable[[Callable[[T], R], Iterable[T]], Iterator[Done[T, R]]]
# make, items -> one Done per item; `make()` builds a callable that loads once (a model)
ActorMap = Callable[[Callable[[], Callable[[T], R]], Iterable[T]], Iterator[Done[T, R]]]
# map_fn, items, reduce_fn, num_buckets, on_map -> reduce results (see local_shuffle)
Shuffle = Callable[[Callable[[T], tuple[list[P], S]], Sequence[T], Callable[[int, list[P]], R], int,
                    Callable[[S], None]], Iterator[R]]


def local_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Done[T, R]]:
    """A `TaskMap` in this process, in input order."""
    for item in items:
        try:
            yield Done(item, fn(item))
        except Exception as e:  # noqa: BLE001 - a failed item is a value, as on Ray
            yield Done(item, error=e)


def local_actors(make: Callable[[], Callable[[T], R]], items: Iterable[T]) -> Iterator[Done[T, R]]:
    """An `ActorMap` in this process: one instance, built before the first item."""
    yield from local_map(make(), items)


def local_shuffle(map_fn: Callable[[T], tuple[list[P], S]], items: Sequence[T],
                  reduce_fn: Callable[[int, list[P]], R], num_buckets: int,
                  on_map: Callable[[S], None]) -> Iterator[R]:
    """A `Shuffle` in this process: `map_fn(item)` gives one part per bucket and its
    stats (handed to `on_map`); `reduce_fn(b, parts)` gets bucket b's parts in item order.
    A failing map or reduce raises."""
    buckets: list[list[P]] = [[] for _ in range(num_buckets)]
    for item in items:
        parts, stats = map_fn(item)
        for b, part in enumerate(parts):
            buckets[b].append(part)
        on_map(stats)
    for b in range(num_buckets):
        yield reduce_fn(b, buckets[b])


def fetch_then_cut(jobs: Iterable[J], cut_slots: int, fetch_slots: int, start_fetch: Callable[[J], None],
                   start_cut: Callable[[F], None], wait: Callable[[], list[Done[tuple[bool, J], object]]],
                   drain: Callable[[], list[P]], crashed: Callable[[J, bool, Exception], R],
                   on_result: Callable[[R], None], tick: Callable[[], None],
                   on_progress: Callable[[P], None]) -> None:
    """The scheduling both fetch → cut runners share (Ray's and the driver's threads):
    at most `fetch_slots` downloads, and only while fewer than `2 * cut_slots` videos wait
    for or run a cut, so downloads never run far ahead of cutting. `start_fetch(job)` and
    `start_cut(outcome)` start a task whose `Done` (item: (is_cut, job)) `wait()` returns
    once finished (waiting at most a short while); `drain()` gives the cut reports posted
    since (each has a `video_id`). A failed task becomes `crashed(job, is_cut, error)`."""
    pending = iter(jobs)
    exhausted = False
    fetching = 0
    cutting: set[str] = set()  # videos being cut: only their reports count
    ready_to_cut: deque[F] = deque()
    while True:
        raise_if_signalled()
        while not exhausted and fetching < fetch_slots and len(ready_to_cut) + len(cutting) < 2 * cut_slots:
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            start_fetch(job)
            fetching += 1
        while ready_to_cut and len(cutting) < cut_slots:
            outcome = ready_to_cut.popleft()
            start_cut(outcome)
            cutting.add(outcome.job.video_id)  # type: ignore[attr-defined]
        if not fetching and not cutting and not ready_to_cut and exhausted:
            return
        finished = wait()
        # drained after the wait: a finished cut's reports are all there, and come first
        for report in drain() if cutting else ():
            if report.video_id in cutting:  # type: ignore[attr-defined]  # not a late one of a crashed task
                on_progress(report)
                tick()
        for done in finished:
            is_cut, job = done.item
            if is_cut:
                cutting.discard(job.video_id)  # type: ignore[attr-defined]
            else:
                fetching -= 1
            if done.error is not None:  # a crashed task is a ledger row
                on_result(crashed(job, is_cut, done.error))
            elif is_cut:
                on_result(done.value)  # type: ignore[arg-type]
            else:
                ready_to_cut.append(done.value)  # type: ignore[arg-type]
        tick()


_signalled = threading.Event()


def _interrupt(signum: int, _frame: object) -> None:
    # Ray's driver installs absl's failure handler on top of this one when it starts after
    # it: that handler prints "*** SIGTERM received", arms a 3 s alarm that aborts the
    # process, then calls this one. Cancel the alarm, or a clean-up slower than 3 s (a
    # loaded machine) ends in SIGABRT with Ray's processes and the job's scratch left over.
    signal.alarm(0)
    _signalled.set()
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM, SIGHUP and SIGINT stop the driver the way Ctrl-C does (Ray's own SIGTERM
    handler just exits), so the build unwinds: Ray or the driver's threads are stopped and
    the job's scratch and lease are removed instead of outliving it. (Here, not beside the
    Ray start, so a build without Ray never imports Ray.)"""
    if threading.current_thread() is threading.main_thread():
        _signalled.clear()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, _interrupt)


def raise_if_signalled() -> None:
    """Raise again the interrupt of a signal that a library call swallowed (likely Ray's
    blocking calls, which catch the KeyboardInterrupt a handler raises inside them and
    report a status some callers drop): once a build sent SIGINT went on and exited 0."""
    if _signalled.is_set():
        raise KeyboardInterrupt("signal")
