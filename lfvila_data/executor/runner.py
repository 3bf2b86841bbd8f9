"""Runs video tasks on Ray: bounded downloads feeding bounded cuts on the same node.

The driver only holds small records (paths, counts). A fetch task leaves files on its
node's scratch disk; the cut task for that video is pinned to that node, so the files
never travel and no shared filesystem is needed between workers."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, cut_video, fetch_video
from lfvila_data.output.write import RETRY, VideoResult
from lfvila_data.records import Failure, FailureCode, Stage, error_line


@dataclass(frozen=True)
class RunConfig:
    fetch_concurrency: int = 8
    cut_concurrency: int | None = None  # default: the cluster's CPUs
    cut_cpus: float = 1.0


def _crash(job: VideoJob, stage: Stage, err: Exception) -> VideoResult:
    """A task that died (worker crash, bug) is recorded and retried on the next run."""
    reason = f"{stage.value} task failed: {error_line(err)}"
    return VideoResult(job.video_id, RETRY, [], [Failure(job.video_id, None, stage.value, FailureCode.TASK_CRASHED,
                                                          reason, False).to_row()], {})


def run_videos(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
               on_result: Callable[[VideoResult], None], tick: Callable[[], None]) -> None:
    """Fetch and cut every job, calling `on_result` once per video as it finishes."""
    # downloads spread over the nodes; each video's cut then runs where its files are
    fetch_remote = ray.remote(fetch_video).options(num_cpus=0, max_retries=1,
                                                   scheduling_strategy="SPREAD")
    cut_remote = ray.remote(cut_video)
    cut_slots = rc.cut_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // rc.cut_cpus))
    pending = iter(jobs)
    exhausted = False
    fetching: dict = {}
    cutting: dict = {}
    ready_to_cut: deque[FetchOutcome] = deque()
    while True:
        while (not exhausted and len(fetching) < rc.fetch_concurrency
               and len(ready_to_cut) + len(cutting) < 2 * cut_slots):
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            fetching[fetch_remote.remote(job, ctx)] = job
        while ready_to_cut and len(cutting) < cut_slots:
            outcome = ready_to_cut.popleft()
            opts: dict = {"num_cpus": rc.cut_cpus, "max_retries": 1}
            if outcome.node_id:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(outcome.node_id, soft=False)
            cutting[cut_remote.options(**opts).remote(outcome, ctx)] = outcome.job
        if not fetching and not cutting and not ready_to_cut and exhausted:
            return
        ready, _ = ray.wait(list(fetching) + list(cutting), num_returns=1, timeout=0.5)
        for ref in ready:
            if ref in fetching:
                job = fetching.pop(ref)
                try:
                    ready_to_cut.append(ray.get(ref))
                except Exception as e:  # noqa: BLE001 - a crashed task is a ledger row
                    on_result(_crash(job, Stage.DOWNLOAD, e))
            else:
                job = cutting.pop(ref)
                try:
                    on_result(ray.get(ref))
                except Exception as e:  # noqa: BLE001
                    on_result(_crash(job, Stage.CUT, e))
        tick()


def map_unordered(submit: Callable[[object], "ray.ObjectRef"], items: Iterable, concurrency: int,
                  on_result: Callable[[object], None], on_error: Callable[[object, Exception], None],
                  tick: Callable[[], None] = lambda: None) -> None:
    """Run `submit(item)` with at most `concurrency` tasks in flight; results (or the
    exception of a task that died) are handed over in completion order."""
    pending = iter(items)
    running: dict = {}
    exhausted = False
    while True:
        while not exhausted and len(running) < concurrency:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            running[submit(item)] = item
        if not running:
            return
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        for ref in ready:
            item = running.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a crashed task is a ledger row
                on_error(item, e)
            else:
                on_result(value)
        tick()
