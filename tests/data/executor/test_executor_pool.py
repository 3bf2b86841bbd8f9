"""The executors stages are handed, on a real local Ray and in process: bounded task maps,
the actor pool and the shuffle give every item's result once, keep at most N in flight,
and report a failed task as its own exception."""
from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial

import pytest

from lfvila_data.executor.base import WorkerCrashed, local_actors, local_map, local_shuffle
from lfvila_data.executor.pool import InFlight, RayActors, RayShuffle, RayTasks


class Refused(Exception):
    """A failure of the task's own code: it must reach the caller as this type."""


def slow_square(x: int, pause: float = 0.2) -> tuple[int, float, float]:
    started = time.time()
    if x == 3:
        raise Refused(f"no {x}")
    time.sleep(pause)
    return x * x, started, time.time()


def die(x: int) -> int:
    os._exit(1)


class Loader:
    """Stateful work: 'loads' once in __init__, answers per call with who answered."""

    def __init__(self, offset: int) -> None:
        self.offset, self.loaded_at = offset, time.time_ns()

    def __call__(self, x: int) -> tuple[int, int, int]:
        if x == 13:
            os._exit(1)  # the worker process dies: not an exception of the callable
        return x + self.offset, os.getpid(), self.loaded_at


class LoadsOnce:
    """Loads the first time only (a marker file), so a replacement actor cannot load."""

    def __init__(self, marker: str) -> None:
        if os.path.exists(marker):
            raise Refused("cannot load again")
        open(marker, "w").close()

    def __call__(self, x: int) -> int:
        if x == 13:
            os._exit(1)
        return x


class BadLoader:
    def __init__(self) -> None:
        raise Refused("cannot load")


def word_parts(line: str, num_buckets: int) -> tuple[list[Counter], int]:
    if line == "refuse":
        raise Refused(line)
    parts = [Counter() for _ in range(num_buckets)]
    for w in line.split():
        parts[len(w) % num_buckets][w] += 1
    return parts, len(line.split())


def sum_bucket(bucket: int, parts: list[Counter]) -> tuple[int, dict]:
    return bucket, dict(sum(parts, Counter()))


def test_ray_tasks_keep_at_most_n_in_flight_and_return_every_item(ray_local):
    pulled, finished, most = [], [], [0]

    def items():
        for x in range(10):
            pulled.append(x)
            most[0] = max(most[0], len(pulled) - len(finished))
            yield x

    done = []
    for d in RayTasks(max_in_flight=3, num_cpus=0)(slow_square, items()):
        finished.append(d.item)
        done.append(d)
    assert most[0] == 3  # the driver pulled items only as slots freed
    spans = [d.value[1:] for d in done if d.error is None]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert 1 <= overlap <= 3  # and the tasks themselves never ran more than 3 at once
    assert sorted(d.item for d in done) == list(range(10))
    assert {d.item: d.value[0] for d in done if d.error is None} == {x: x * x for x in range(10) if x != 3}


def test_a_failed_task_is_its_own_exception_and_the_rest_still_run(ray_local):
    done = {d.item: d for d in RayTasks(max_in_flight=2, max_retries=0)(partial(slow_square, pause=0), range(6))}
    assert type(done[3].error) is Refused and str(done[3].error) == "no 3"
    assert all(done[x].error is None for x in range(6) if x != 3)


def test_a_dead_worker_is_worker_crashed(ray_local):
    (d,) = list(RayTasks(max_in_flight=1, num_cpus=0, max_retries=0)(die, [1]))
    assert isinstance(d.error, WorkerCrashed) and d.value is None


def test_results_come_in_completion_order(ray_local):
    order = [d.item for d in RayTasks(max_in_flight=2, num_cpus=0)(time.sleep, [1.5, 0.0])]
    assert order == [0.0, 1.5]


def test_in_flight_wait_with_timeout_returns_nothing_while_tasks_run(ray_local):
    import ray

    running: InFlight[str] = InFlight()
    running.add(ray.remote(slow_square).options(num_cpus=0).remote(2, 1.0), "square")
    assert running.wait(timeout=0.05) == [] and len(running) == 1
    (done,) = running.wait()
    assert done.item == "square" and done.value[0] == 4 and len(running) == 0


def test_actor_pool_loads_once_per_actor_and_answers_every_item(ray_local):
    done = list(RayActors(num_actors=2, num_cpus=0)(partial(Loader, 100), range(12)))
    assert sorted(d.item for d in done) == list(range(12)) and all(d.error is None for d in done)
    assert all(d.value[0] == d.item + 100 for d in done)
    actors = {(pid, loaded) for _, pid, loaded in (d.value for d in done)}
    assert len(actors) == 2  # two actors, each loaded once, shared the items


def test_actor_pool_replaces_a_dead_actor(ray_local):
    done = {d.item: d for d in RayActors(num_actors=1, num_cpus=0)(partial(Loader, 0), range(10, 20))}
    assert sorted(done) == list(range(10, 20))
    lost = {x for x, d in done.items() if d.error is not None}
    # the dying actor's own items: 13, the one queued behind it, maybe a result not yet sent
    assert 13 in lost and max(lost) <= 14 and all(isinstance(done[x].error, WorkerCrashed) for x in lost)
    before = {done[x].value[1] for x in range(10, 13) if x not in lost}
    after = {done[x].value[1] for x in range(15, 20)}
    assert len(before) <= 1 and len(after) == 1 and not before & after  # a new actor took over


def test_a_replacement_that_cannot_load_fails_its_items_with_the_reason(ray_local, tmp_path):
    pool = RayActors(num_actors=1, num_cpus=0)
    done = {d.item: d for d in pool(partial(LoadsOnce, str(tmp_path / "loaded")), [13, 14, 15])}
    assert isinstance(done[13].error, WorkerCrashed)
    assert type(done[15].error) is Refused and str(done[15].error) == "cannot load again"


def test_actor_pool_raises_the_loading_error_before_any_item(ray_local):
    pulled = []

    def items():
        pulled.append(1)
        yield 1

    with pytest.raises(Refused, match="cannot load"):
        next(RayActors(num_actors=1, num_cpus=0)(BadLoader, items()))
    assert pulled == []


@pytest.mark.parametrize("on_ray", [True, False])
def test_shuffle_on_ray_and_in_process_agree(ray_local, on_ray):
    lines = ["a bb ccc", "bb dddd a", "eeeee a", "", "ccc ccc"]
    seen = []
    shuffle = RayShuffle(max_in_flight=2, num_cpus=0) if on_ray else local_shuffle
    result = dict(shuffle(partial(word_parts, num_buckets=3), lines, sum_bucket, 3, seen.append))
    assert sorted(seen) == [0, 2, 2, 3, 3] and sorted(result) == [0, 1, 2]
    words = Counter(w for line in lines for w in line.split())
    assert {w: n for b in result.values() for w, n in b.items()} == dict(words)
    assert all(len(w) % 3 == b for b, counts in result.items() for w in counts)


def test_shuffle_raises_a_failed_map_as_its_own_exception(ray_local):
    with pytest.raises(Refused):
        list(RayShuffle(num_cpus=0)(partial(word_parts, num_buckets=2), ["a b", "refuse"], sum_bucket, 2,
                                    lambda s: None))


def test_in_process_executors_match_the_ray_contract():
    done = list(local_map(partial(slow_square, pause=0), range(5)))
    assert [d.item for d in done] == list(range(5)) and type(done[3].error) is Refused
    answers = list(local_actors(partial(Loader, 1), [1, 2]))
    assert [d.value[0] for d in answers] == [2, 3] and answers[0].value[2] == answers[1].value[2]
