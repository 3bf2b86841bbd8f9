"""Runs video tasks on Ray: bounded downloads feeding bounded cuts on the same node.

The driver only holds small records (paths, counts). A fetch task leaves files on its
node's scratch disk; the cut task for that video is pinned to that node, so the files
never travel and no shared filesystem is needed between workers."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lfvila_data.executor.base import crash_line
from lfvila_data.executor.cluster import node_id
from lfvila_data.executor.pool import InFlight
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, cut_video, fetch_video
from lfvila_data.output.fingerprint import SPEED
from lfvila_data.output.write import RETRY, VideoResult
from lfvila_data.records import Failure, FailureCode, Stage


@dataclass(frozen=True)
class RunConfig:
    """How many videos are worked on at once: speed only, free to change on a rerun."""

    fetch_concurrency: int = field(default=8, metadata=SPEED)
    cut_concurrency: int | None = field(default=None, metadata=SPEED)  # default: the cluster's CPUs
    cut_cpus: float = field(default=1.0, metadata=SPEED)


def _crash(job: VideoJob, stage: Stage, err: Exception) -> VideoResult:
    """A task that died (worker crash, bug) is recorded and retried on the next run."""
    reason = f"{stage.value} task failed: {crash_line(err)}"
    return VideoResult(job.video_id, RETRY, [], [Failure(job.video_id, None, stage.value, FailureCode.TASK_CRASHED,
                                                          reason, False).to_row()], {})


def _fetch_here(job: VideoJob, ctx: TaskContext) -> FetchOutcome:
    """Fetch, noting the node that holds the files so the cut can be pinned there."""
    return replace(fetch_video(job, ctx), node_id=node_id())


def run_videos(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
               on_result: Callable[[VideoResult], None], tick: Callable[[], None]) -> None:
    """Fetch and cut every job, calling `on_result` once per video as it finishes."""
    # downloads spread over the nodes; each video's cut then runs where its files are
    fetch_remote = ray.remote(_fetch_here).options(num_cpus=0, max_retries=1,
                                                   scheduling_strategy="SPREAD")
    cut_remote = ray.remote(cut_video)
    cut_slots = rc.cut_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // rc.cut_cpus))
    pending = iter(jobs)
    exhausted = False
    running: InFlight[tuple[Stage, VideoJob]] = InFlight()
    fetching = cutting = 0
    ready_to_cut: deque[FetchOutcome] = deque()
    while True:
        while (not exhausted and fetching < rc.fetch_concurrency
               and len(ready_to_cut) + cutting < 2 * cut_slots):
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            running.add(fetch_remote.remote(job, ctx), (Stage.DOWNLOAD, job))
            fetching += 1
        while ready_to_cut and cutting < cut_slots:
            outcome = ready_to_cut.popleft()
            opts: dict = {"num_cpus": rc.cut_cpus, "max_retries": 1}
            if outcome.node_id:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(outcome.node_id, soft=False)
            running.add(cut_remote.options(**opts).remote(outcome, ctx), (Stage.CUT, outcome.job))
            cutting += 1
        if not running and not ready_to_cut and exhausted:
            return
        for done in running.wait(timeout=0.5):
            stage, job = done.item
            fetching -= stage == Stage.DOWNLOAD
            cutting -= stage == Stage.CUT
            if done.error is not None:  # a crashed task is a ledger row
                on_result(_crash(job, stage, done.error))
            elif stage == Stage.DOWNLOAD:
                ready_to_cut.append(done.value)
            else:
                on_result(done.value)
        tick()
