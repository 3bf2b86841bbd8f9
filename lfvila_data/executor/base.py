"""What a stage sees of an executor: `Done` and the in-process executors.

Stages take the executor as an argument (a `TaskMap`, an `ActorMap` or a `Shuffle`) and
never import Ray; the build and shard commands pass the Ray ones (`executor.pool`), unit
tests pass these, which run everything in this process in input order."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lfvila_data.output.fingerprint import SPEED
from lfvila_data.records import error_line

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")
S = TypeVar("S")


@dataclass(frozen=True)
class RunConfig:
    """How many videos are worked on at once: speed only, free to change on a rerun.
    (Here, not beside the Ray runner, so the command line is read without importing Ray.)"""

    fetch_concurrency: int = field(default=8, metadata=SPEED)
    cut_concurrency: int | None = field(default=None, metadata=SPEED)  # default: the cluster's CPUs
    cut_cpus: float = field(default=1.0, metadata=SPEED)


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


def local_fetch_cut(fetch: Callable[[T], S], cut: Callable[[S, Callable[[P], None]], R],
                    items: Iterable[T], on_result: Callable[[R], None], tick: Callable[[], None],
                    on_progress: Callable[[P], None]) -> None:
    """The fetch → cut runner (`executor.runner.run_videos`) in this process, in input
    order: `cut` gets a `report` callable that hands its reports to `on_progress` (then
    ticks) at once, as the Ray runner does with the reports it drains while a cut runs.
    A failing step raises."""
    def report(value: P) -> None:
        on_progress(value)
        tick()

    for item in items:
        on_result(cut(fetch(item), report))
        tick()


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
