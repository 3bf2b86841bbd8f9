"""A node's fetcher process dying while a download is in flight (real Ray, SIGKILL): it
is restarted once and its downloads are retried once, so the build loses nothing; a
second death drops it and its downloads become coded, transient ledger rows that the
next run redoes, and the other videos still finish (no hang, no crash)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal

import pandas as pd
import psutil
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.executor.base import RunConfig
from lfvila_data.localserver import MediaServer
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.output.resume import read_resume
from lfvila_data.output.write import DONE, RETRY, OutputDir, journal_status
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video


def _fetchers() -> list[psutil.Process]:
    """The live fetcher actors' processes of this test's Ray (Ray titles an actor's process
    `ray::<class>`; its workers are its raylet's children): never those of another Ray
    running on the machine (another test run's)."""
    import ray

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    found = []
    for p in raylet.children():
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if cmd and cmd[0].startswith("ray::_Fetcher") and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


class FetcherKiller:
    """A MediaServer hook: SIGKILLs the fetcher process while it downloads `name`, up to
    `times` times, each time a fetcher it has not killed yet (the restarted one)."""

    def __init__(self, name: str, times: int) -> None:
        self.name, self.times, self.killed = name, times, []

    def __call__(self, name: str) -> None:
        if name != self.name or len(self.killed) >= self.times:
            return
        for p in _fetchers():
            if p.pid not in self.killed:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
                self.killed.append(p.pid)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Four copies of one tiny video over loopback (a file per video, so the hook can
    pick the one to kill during)."""
    root = tmp_path_factory.mktemp("restart")
    (root / "www").mkdir()
    make_timecoded_video(root / "www" / "a.mp4", 3, width=64, height=48, fps=5, audio=False)
    for name in ("once", "twice", "other"):
        shutil.copy(root / "www" / "a.mp4", root / "www" / f"{name}.mp4")
    with MediaServer(root / "www") as srv:
        yield root, srv


def _build(root, srv, out, names: list[str], downloads: int = 4) -> dict:
    videos = [VideoSpec(f"rs{name}", srv.url(f"{name}.mp4"), even_spans(2, length=0.5, gap=0.1, first=0.5))
              for name in names]
    meta, text = write_metadata(root / f"meta-{out.name}", videos)
    return run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                                 plan=PlanConfig(min_clips=2, max_clips=2),
                                 task=TaskContext(output=str(out), fetch=FetchConfig(retries=0),
                                                  workdir=str(root / "scratch"), cut=CutConfig(height=48)),
                                 run=RunConfig(fetch_concurrency=downloads, executor="ray")),
                     progress_every_s=0)


def test_a_fetcher_killed_once_is_restarted_and_its_download_retried(served, ray_module):
    root, srv = served
    srv.on_request = kill = FetcherKiller("once.mp4", times=1)
    try:
        record = _build(root, srv, root / "out1", ["once", "other"])
    finally:
        srv.on_request = None
    assert len(kill.killed) == 1
    manifest = pd.read_parquet(root / "out1" / "manifest")
    assert sorted(manifest.video_id) == ["rsonce", "rsother"] and pd.read_parquet(root / "out1" / "failures").empty
    assert record["counts"]["samples_written"] == 2


def test_a_fetcher_killed_twice_leaves_coded_transient_rows_for_the_next_run(served, ray_module):
    root, srv = served
    out = root / "out2"
    srv.on_request = kill = FetcherKiller("twice.mp4", times=2)
    try:  # one download at a time: "other" is not in the dying fetcher (it would be lost too)
        _build(root, srv, out, ["twice", "other"], downloads=1)
    finally:
        srv.on_request = None
    assert len(kill.killed) == 2
    assert list(pd.read_parquet(out / "manifest").video_id) == ["rsother"]
    failures = pd.read_parquet(out / "failures")
    assert failures[["video_id", "stage", "code", "permanent"]].values.tolist() == \
        [["rstwice", "download", "task_crashed", False]]
    # nothing lost: the journal has the video for the next run to redo, which skips only the other
    assert journal_status(OutputDir(str(out))) == {"rsother": DONE, "rstwice": RETRY}
    assert read_resume(OutputDir(str(out)), retry_failed=False).skip.to_pylist() == ["rsother"]
