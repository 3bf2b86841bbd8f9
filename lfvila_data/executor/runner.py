"""Runs video tasks on Ray: bounded downloads feeding bounded cuts on the same node.

The driver only holds small records (paths, counts). A fetch task leaves files on its
node's scratch disk; the cut task for that video is pinned to that node, so the files
never travel and no shared filesystem is needed between workers. A cut task reports how
far it is (`CutProgress`, throttled) to a board the driver drains while it waits, so a
long video's progress shows before the video is finished."""
from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Callable, Iterable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lfvila_data.executor.base import RunConfig, crash_line
from lfvila_data.executor.cluster import node_id
from lfvila_data.executor.pool import InFlight, Poster, RayBoard
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, cut_video, fetch_video
from lfvila_data.output.write import RETRY, VideoResult
from lfvila_data.progress import CutProgress, Throttled
from lfvila_data.records import Failure, FailureCode, Stage


def _crash(job: VideoJob, stage: Stage, err: Exception) -> VideoResult:
    """A task that died (worker crash, bug) is recorded and retried on the next run."""
    reason = f"{stage.value} task failed: {crash_line(err)}"
    return VideoResult(job.video_id, RETRY, [], [Failure(job.video_id, None, stage.value, FailureCode.TASK_CRASHED,
                                                          reason, False).to_row()], {})


def _fetch_here(job: VideoJob, ctx: TaskContext) -> FetchOutcome:
    """Fetch, noting the node that holds the files so the cut can be pinned there."""
    return replace(fetch_video(job, ctx), node_id=node_id())


def _cut_reporting(outcome: FetchOutcome, ctx: TaskContext, post: Poster, every_s: float) -> VideoResult:
    """Cut, posting progress at most every `every_s`; the last report is on the board
    before the result is returned."""
    report = Throttled(post, every_s)
    try:
        return cut_video(outcome, ctx, report)
    finally:
        report.flush()
        post.wait()


def run_videos(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
               on_result: Callable[[VideoResult], None], tick: Callable[[], None],
               on_progress: Callable[[CutProgress], None], report_every_s: float = 2.0) -> None:
    """Fetch and cut every job, calling `on_result` once per video as it finishes and
    `on_progress` with what the cut tasks report (each at most every `report_every_s`)
    while they run."""
    board = RayBoard()
    try:
        _run(jobs, ctx, rc, on_result, tick, on_progress, board, report_every_s)
    finally:
        board.close()


def _run(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
         on_result: Callable[[VideoResult], None], tick: Callable[[], None],
         on_progress: Callable[[CutProgress], None], board: RayBoard, report_every_s: float) -> None:
    # downloads spread over the nodes; each video's cut then runs where its files are
    fetch_remote = ray.remote(_fetch_here).options(num_cpus=0, max_retries=1,
                                                   scheduling_strategy="SPREAD")
    cut_remote = ray.remote(_cut_reporting)
    post = board.poster()
    cut_slots = rc.cut_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // rc.cut_cpus))
    pending = iter(jobs)
    exhausted = False
    running: InFlight[tuple[Stage, VideoJob]] = InFlight()
    fetching = 0
    cutting: set[str] = set()  # videos being cut: only their reports count
    ready_to_cut: deque[FetchOutcome] = deque()
    while True:
        while (not exhausted and fetching < rc.fetch_concurrency
               and len(ready_to_cut) + len(cutting) < 2 * cut_slots):
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            running.add(fetch_remote.remote(job, ctx), (Stage.DOWNLOAD, job))
            fetching += 1
        while ready_to_cut and len(cutting) < cut_slots:
            outcome = ready_to_cut.popleft()
            opts: dict = {"num_cpus": rc.cut_cpus, "max_retries": 1}
            if outcome.node_id:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(outcome.node_id, soft=False)
            running.add(cut_remote.options(**opts).remote(outcome, ctx, post, report_every_s),
                        (Stage.CUT, outcome.job))
            cutting.add(outcome.job.video_id)
        if not running and not ready_to_cut and exhausted:
            return
        finished = running.wait(timeout=0.5)
        # drained after the wait: a finished cut's reports are all there, and come first
        for report in board.drain() if cutting else ():
            if report.video_id in cutting:  # not a late one of a crashed task
                on_progress(report)
                tick()
        for done in finished:
            stage, job = done.item
            fetching -= stage == Stage.DOWNLOAD
            if stage == Stage.CUT:
                cutting.discard(job.video_id)
            if done.error is not None:  # a crashed task is a ledger row
                on_result(_crash(job, stage, done.error))
            elif stage == Stage.DOWNLOAD:
                ready_to_cut.append(done.value)
            else:
                on_result(done.value)
        tick()
