"""Runs video tasks on Ray: bounded downloads feeding bounded cuts on the same node.

The driver only holds small records (paths, counts). A fetch task leaves files on its
node's scratch disk; the cut task for that video is pinned to that node, so the files
never travel and no shared filesystem is needed between workers. A cut task reports how
far it is (`CutProgress`, throttled) to a board the driver drains while it waits, so a
long video's progress shows before the video is finished."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lfvila_data.executor.base import RunConfig, fetch_then_cut
from lfvila_data.executor.cluster import node_id
from lfvila_data.executor.pool import InFlight, Poster, RayBoard
from lfvila_data.executor.threads import crash_result, cut_reporting
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, fetch_video
from lfvila_data.output.write import VideoResult
from lfvila_data.progress import CutProgress


def _fetch_here(job: VideoJob, ctx: TaskContext) -> FetchOutcome:
    """Fetch, noting the node that holds the files so the cut can be pinned there."""
    return replace(fetch_video(job, ctx), node_id=node_id())


def _cut_reporting(outcome: FetchOutcome, ctx: TaskContext, post: Poster, every_s: float) -> VideoResult:
    """Cut, posting progress at most every `every_s`; the last report is on the board
    before the result is returned."""
    try:
        return cut_reporting(outcome, ctx, post, every_s)
    finally:
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
    running: InFlight[tuple[bool, VideoJob]] = InFlight()

    def start_cut(outcome: FetchOutcome) -> None:
        opts: dict = {"num_cpus": rc.cut_cpus, "max_retries": 1}
        if outcome.node_id:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(outcome.node_id, soft=False)
        running.add(cut_remote.options(**opts).remote(outcome, ctx, post, report_every_s), (True, outcome.job))

    fetch_then_cut(jobs, cut_slots, rc.fetch_concurrency,
                   lambda job: running.add(fetch_remote.remote(job, ctx), (False, job)), start_cut,
                   lambda: running.wait(timeout=0.5), board.drain, crash_result, on_result, tick, on_progress)
