"""Runs video tasks on Ray: bounded downloads feeding bounded cuts on the same node.

The driver only holds small records (paths, counts). A fetch task leaves files on its
node's scratch disk; the cut task for that video is pinned to that node, so the files
never travel and no shared filesystem is needed between workers. A cut task reports how
far it is (`CutProgress`, throttled) to a board the driver drains while it waits, so a
long video's progress shows before the video is finished.

Downloads run in one long-lived actor per node (`FetcherPool`), on its threads, not as a
task each: a zero-CPU task per concurrent download made Ray start a worker process per
download beyond the node's CPUs and end it when idle, so a build started (and imported
our package in) about one worker per video, ~1.4 CPU-s each, 4-5x the CPU of cutting
the video (docs/performance.md, "The whole build through Ray"). Cuts stay tasks reserving
`cut_cpus`: at most a node's CPUs of them run at once, so Ray reuses its workers. The
progress board lives in the driver's node's fetcher (its own concurrency group, so a
drain never waits behind the downloads), not in an actor of its own: the build's only
actor per node is its fetcher (an actor has a worker process to itself)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lfvila_data.executor.base import Done, RunConfig, WorkerCrashed, fetch_then_cut
from lfvila_data.executor.cluster import node_id
from lfvila_data.executor.pool import InFlight, Poster, RayBoard, _Posts
from lfvila_data.executor.threads import crash_result, cut_reporting
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, fetch_video
from lfvila_data.output.write import VideoResult
from lfvila_data.progress import CutProgress


class _Fetcher:
    """A node's downloads on threads of one worker process (imports once per node).
    Each outcome names the node that holds the files, so the cut can be pinned there.
    It can host the build's progress board (`post`, `drain`: a `RayBoard` host) on a
    thread of its own, so no download delays a report."""

    def __init__(self) -> None:
        self.node = node_id()
        self._posts = _Posts()

    def fetch(self, job: VideoJob, ctx: TaskContext) -> FetchOutcome:
        return replace(fetch_video(job, ctx), node_id=self.node)

    @ray.method(concurrency_group="board")
    def post(self, item: object) -> None:
        self._posts.post(item)

    @ray.method(concurrency_group="board")
    def drain(self) -> list:
        return self._posts.drain()


class FetcherPool:
    """One `_Fetcher` actor per live node that can run a cut (CPU >= `cut_cpus`), each
    with `threads` downloads at once; a download goes to the node with the fewest running.
    Nodes that join later are picked up every `refresh_s`. A fetcher whose process dies is
    restarted once on its node and its running downloads are retried once (as a fetch task
    was); after that it is dropped and its downloads come back as WorkerCrashed (ledger
    rows, retried by the next run)."""

    def __init__(self, threads: int, cut_cpus: float, refresh_s: float = 15.0) -> None:
        self._remote = ray.remote(concurrency_groups={"board": 1})(_Fetcher)
        self._threads, self._cut_cpus, self._refresh_s = threads, cut_cpus, refresh_s
        self._actors: dict[str, Any] = {}
        self._running: dict[str, int] = {}
        self._where: dict[str, str] = {}  # video id -> node of its download
        self._refreshed = float("-inf")

    def _refresh(self) -> None:
        self._refreshed = time.monotonic()
        alive = [n for n in ray.nodes() if n.get("Alive")]
        usable = [n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU", 0) >= self._cut_cpus] \
            or [n["NodeID"] for n in alive]
        for node in usable:
            if node not in self._actors:
                self._actors[node] = self._remote.options(
                    num_cpus=0, max_concurrency=self._threads, max_restarts=1, max_task_retries=1,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                self._running.setdefault(node, 0)

    def board_host(self) -> Any:
        """The fetcher to keep the progress board in: the driver's node's, else (a head
        node that runs no cuts) any node's; once `finished` dropped a dead one, its
        replacement."""
        self._refresh()
        return self._actors.get(ray.get_runtime_context().get_node_id()) or next(iter(self._actors.values()))

    def submit(self, job: VideoJob, ctx: TaskContext) -> ray.ObjectRef:
        if not self._actors or time.monotonic() - self._refreshed > self._refresh_s:
            self._refresh()
        node = min(self._actors, key=lambda n: self._running[n])
        self._running[node] += 1
        self._where[job.video_id] = node
        return self._actors[node].fetch.remote(job, ctx)

    def finished(self, done: Done) -> None:
        """Note a download's end; drop its fetcher if that process died."""
        node = self._where.pop(done.item[1].video_id)
        self._running[node] -= 1
        if isinstance(done.error, WorkerCrashed) and isinstance(done.error.__cause__, ray.exceptions.RayActorError):
            actor = self._actors.pop(node, None)
            if actor is not None:
                ray.kill(actor, no_restart=True)

    def close(self) -> None:
        for actor in self._actors.values():
            ray.kill(actor, no_restart=True)
        self._actors.clear()


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
    fetchers = FetcherPool(rc.fetch_concurrency, rc.cut_cpus)
    try:
        board = RayBoard(fetchers.board_host)
        _run(jobs, ctx, rc, on_result, tick, on_progress, board, fetchers, report_every_s)
    finally:
        fetchers.close()


def _run(jobs: Iterable[VideoJob], ctx: TaskContext, rc: RunConfig,
         on_result: Callable[[VideoResult], None], tick: Callable[[], None],
         on_progress: Callable[[CutProgress], None], board: RayBoard, fetchers: FetcherPool,
         report_every_s: float) -> None:
    # downloads spread over the nodes' fetchers; each video's cut then runs where its files are
    cut_remote = ray.remote(_cut_reporting)
    cut_slots = rc.cut_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // rc.cut_cpus))
    running: InFlight[tuple[bool, VideoJob]] = InFlight()

    def start_cut(outcome: FetchOutcome) -> None:
        opts: dict = {"num_cpus": rc.cut_cpus, "max_retries": 1}
        if outcome.node_id:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(outcome.node_id, soft=False)
        running.add(cut_remote.options(**opts).remote(outcome, ctx, board.poster(), report_every_s), (True, outcome.job))

    def wait() -> list[Done[tuple[bool, VideoJob], Any]]:
        finished = running.wait(timeout=0.5)
        for done in finished:
            if not done.item[0]:
                fetchers.finished(done)
        return finished

    fetch_then_cut(jobs, cut_slots, rc.fetch_concurrency,
                   lambda job: running.add(fetchers.submit(job, ctx), (False, job)), start_cut,
                   wait, board.drain, crash_result, on_result, tick, on_progress)
