"""The Ray executors stages are handed: bounded task maps, an actor pool, a shuffle.

Everything waits through `InFlight`, the one place that calls `ray.wait`/`ray.get` and
turns a task's failure into a value: the exception the task raised itself (Ray's
`RayTaskError.cause`), or `WorkerCrashed` when the process running it died. Items are
pulled from their iterator only as slots free up, so an input may be a lazy stream of
millions; results come in completion order, one `Done` per item."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from lfvila_data.executor.base import Done, P, R, S, T, WorkerCrashed
from lfvila_data.executor.cluster import cluster_cpus

K = TypeVar("K")
_END = object()


def original_error(err: Exception) -> Exception:
    """The exception the task's code raised, not Ray's wrapper; a dead worker (no
    exception of the task's own) becomes WorkerCrashed."""
    if isinstance(err, RayTaskError) and isinstance(err.cause, Exception):
        return err.cause
    if isinstance(err, RayError):
        crashed = WorkerCrashed(str(err))
        crashed.__cause__ = err
        return crashed
    return err


class InFlight(Generic[K]):
    """Ray object refs in flight, each with the item it stands for."""

    def __init__(self) -> None:
        self._items: dict[ray.ObjectRef, K] = {}

    def add(self, ref: ray.ObjectRef, item: K) -> None:
        self._items[ref] = item

    def __len__(self) -> int:
        return len(self._items)

    def wait(self, timeout: float | None = None) -> list[Done[K, Any]]:
        """The results that finished within `timeout` (None: at least one), popped."""
        if not self._items:
            return []
        ready, _ = ray.wait(list(self._items), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            item = self._items.pop(ref)
            try:
                out.append(Done(item, ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a failed task is a value for the caller
                out.append(Done(item, error=original_error(e)))
        return out


def bounded(submit: Callable[[T], ray.ObjectRef], items: Iterable[T], max_in_flight: int,
            ) -> Iterator[Done[T, Any]]:
    """`submit(item)` for every item with at most `max_in_flight` refs unfinished."""
    pending = iter(items)
    running: InFlight[T] = InFlight()
    exhausted = False
    while True:
        while not exhausted and len(running) < max_in_flight:
            item = next(pending, _END)
            if item is _END:
                exhausted = True
                break
            running.add(submit(item), item)
        if not running:
            return
        yield from running.wait()


def _apply(fn: Callable, *args: Any) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class RayTasks:
    """A `TaskMap` on Ray: `fn(item)` as one task per item, at most `max_in_flight`
    (default: the cluster's CPUs over `num_cpus`, or the CPUs for tasks that reserve none)
    at once, results in completion order."""

    max_in_flight: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 1
    scheduling_strategy: Any = None   # e.g. "SPREAD"

    def __call__(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Done[T, R]]:
        opts: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": self.max_retries}
        if self.scheduling_strategy is not None:
            opts["scheduling_strategy"] = self.scheduling_strategy
        remote = ray.remote(_apply).options(**opts)
        limit = self.max_in_flight or max(1, int(cluster_cpus() // (self.num_cpus or 1)))
        fn_ref = ray.put(fn)  # shipped once, not with every task
        yield from bounded(lambda item: remote.remote(fn_ref, item), items, limit)


class _Host:
    """An actor holding one callable built by `make()`. A failing `make` is kept and
    raised by `ready`, so the caller gets the original exception (Ray reports a failed
    actor constructor only as text)."""

    def __init__(self, make: Callable[[], Callable]) -> None:
        self.fn, self.error = None, None
        try:
            self.fn = make()
        except Exception as e:  # noqa: BLE001 - raised again by ready()
            self.error = e

    def ready(self) -> bool:
        if self.error is not None:
            raise self.error
        return True

    def call(self, item: Any) -> Any:
        self.ready()  # a replacement actor that could not load fails its items with the reason
        return self.fn(item)


@dataclass(frozen=True)
class RayActors:
    """An `ActorMap` on Ray: `num_actors` actors each build `make()` once (load a model)
    and call it per item, with `queued_per_actor` items waiting on each beyond the one it
    runs. Raises the original exception of `make` before any item runs. An actor that dies
    is replaced (its lost items come back as WorkerCrashed); more than `3 * num_actors`
    replacements raise RuntimeError."""

    num_actors: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    queued_per_actor: int = 1

    def __call__(self, make: Callable[[], Callable[[T], R]], items: Iterable[T]) -> Iterator[Done[T, R]]:
        host = ray.remote(_Host).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                         max_restarts=0, max_concurrency=1)
        actors = [host.remote(make) for _ in range(self.num_actors)]
        try:
            try:
                ray.get([a.ready.remote() for a in actors])
            except Exception as e:  # noqa: BLE001 - the loading error, as its own type
                raise original_error(e) from None
            yield from self._run(host, make, actors, items)
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)

    def _run(self, host, make, actors: list, items: Iterable[T]) -> Iterator[Done[T, R]]:
        load = [0] * len(actors)
        running: InFlight[tuple[int, Any, T]] = InFlight()
        pending = iter(items)
        exhausted = False
        replacements = 0
        while True:
            while not exhausted and min(load) <= self.queued_per_actor:
                item = next(pending, _END)
                if item is _END:
                    exhausted = True
                    break
                k = load.index(min(load))
                running.add(actors[k].call.remote(item), (k, actors[k], item))
                load[k] += 1
            if not running:
                return
            for done in running.wait():
                k, actor, item = done.item
                load[k] -= 1
                died = isinstance(done.error, WorkerCrashed) and isinstance(done.error.__cause__, RayActorError)
                if died and actors[k] is actor:  # replace it once, however many of its items were lost
                    replacements += 1
                    if replacements > 3 * len(actors):
                        raise RuntimeError(f"actors keep crashing: {done.error}") from done.error
                    ray.kill(actor, no_restart=True)
                    actors[k] = host.remote(make)
                yield Done(item, done.value, done.error)


@dataclass(frozen=True)
class RayShuffle:
    """A `Shuffle` on Ray: map tasks (at most `max_in_flight`, default twice the
    cluster's CPUs) return one part per bucket, which stays in the object store until the
    reduce task of its bucket gets it, so the driver never holds the data. A failing task
    raises its original exception."""

    max_in_flight: int | None = None
    num_cpus: float = 1.0

    def __call__(self, map_fn: Callable[[T], tuple[list[P], S]], items: Sequence[T],
                 reduce_fn: Callable[[int, list[P]], R], num_buckets: int,
                 on_map: Callable[[S], None]) -> Iterator[R]:
        limit = self.max_in_flight or max(2, 2 * cluster_cpus())
        remote_map = ray.remote(_map_parts).options(num_returns=num_buckets + 1, num_cpus=self.num_cpus)
        map_ref = ray.put(map_fn)
        bucket_refs: list[list] = [[] for _ in range(num_buckets)]

        def submit(item: T) -> ray.ObjectRef:
            refs = remote_map.remote(map_ref, item)
            for b in range(num_buckets):
                bucket_refs[b].append(refs[b])
            return refs[num_buckets]  # the stats, small: the only thing the driver reads

        for done in bounded(submit, items, limit):
            on_map(_value(done))
        remote_reduce = ray.remote(_reduce_parts).options(num_cpus=self.num_cpus)
        reduce_ref = ray.put(reduce_fn)
        reducing: InFlight[int] = InFlight()
        for b in range(num_buckets):
            reducing.add(remote_reduce.remote(reduce_ref, b, *bucket_refs[b]), b)
            bucket_refs[b] = []  # the task holds its inputs; drop ours so they free on finish
        while reducing:
            for done in reducing.wait():
                yield _value(done)


class _Posts:
    """A `RayBoard`'s reports, kept in arrival order until drained (held by the actor
    that hosts the board: the driver's node's fetcher)."""

    def __init__(self) -> None:
        self.items: list = []

    def post(self, item: Any) -> None:
        self.items.append(item)

    def drain(self) -> list:
        items, self.items = self.items, []
        return items


class Poster:
    """What a task gets to post reports to a `RayBoard` (picklable): posts do not wait,
    and `wait` returns once all of this task's posts have arrived, so a task that waits
    before it returns has its reports on the board before its result is seen. Every
    unfinished post is waited for, not only the last: a board hosted in a threaded actor
    (the fetcher) need not run one caller's calls in order."""

    def __init__(self, actor: Any) -> None:
        self.actor, self.pending = actor, []

    def __call__(self, item: Any) -> None:
        if self.pending:  # posts are throttled (seconds apart): this check is cheap
            self.pending = ray.wait(self.pending, num_returns=len(self.pending), timeout=0)[1]
        self.pending.append(self.actor.post.remote(item))

    def wait(self) -> None:
        try:
            ray.get(self.pending)
        except ray.exceptions.RayActorError:
            pass  # the board's host is gone (the job ended, or it died): reports only
        self.pending = []


class RayBoard:
    """Small reports from running tasks to the driver (how far a long task is): tasks
    post to one actor, the driver drains it from its wait loop. Tasks throttle their own
    posts (`progress.Throttled`), so a large cluster does not flood the driver.

    `host` gives an actor of the caller's with `post` and `drain` methods (holding a
    `_Posts`) to keep the board in, so the board costs no worker process of its own; its
    owner ends it. A host that died takes its unread reports with it (progress only,
    never results) and the board moves to the one `host` gives next."""

    def __init__(self, host: Callable[[], Any]) -> None:
        self._host = host
        self._actor = host()

    def poster(self) -> Poster:
        return Poster(self._actor)

    def drain(self) -> list:
        """Every report posted since the last drain, in arrival order."""
        try:
            return ray.get(self._actor.drain.remote())
        except RayActorError:
            self._actor = self._host()
            return []


def _value(done: Done) -> Any:
    if done.error is not None:
        raise done.error
    return done.value


def _map_parts(map_fn: Callable, item: Any) -> tuple:
    parts, stats = map_fn(item)
    return (*parts, stats)


def _reduce_parts(reduce_fn: Callable, bucket: int, *parts: Any) -> Any:
    """Map outputs arrive as separate arguments (one per map task), so Ray resolves them."""
    return reduce_fn(bucket, list(parts))
