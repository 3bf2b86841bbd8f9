"""A build on a two-node Ray cluster (`--ray-address`) whose driver is killed with -9 while
a video is cut on the worker node: Ray ends the job's workers, and no ffmpeg they started
may outlive them on any node (found by the job's scratch path in their command lines).

Measured with Ray 2.60: every such process was gone 0.5 s after the kill (also with
RAY_kill_child_processes_on_worker_exit=0): Ray starts each worker as the leader of its
own process group and ends the group, and our ffmpeg children never leave it."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from lfvila_data.localserver import MediaServer
from lfvila_data.media.task import TaskContext
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video


def _job_processes(scratch: str) -> list[psutil.Process]:
    """Live processes whose command line names the job's scratch folder."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(scratch in a for a in p.info["cmdline"] or ()):
            found.append(p)
    return found


def _under(p: psutil.Process, ancestor: int) -> bool:
    try:
        return any(a.pid == ancestor for a in p.parents())
    except psutil.Error:
        return False


def test_a_killed_driver_leaves_no_ffmpeg_on_any_node(cluster, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    for i in range(2):  # 8 clips of 4 s: cut at 1080p, 25 fps, each takes a while
        make_timecoded_video(www / f"k{i}.mp4", 40, width=160, height=120, audio=False)
    worker_raylet = cluster.list_all_nodes()[1].all_processes["raylet"][0].process.pid
    out, work = tmp_path / "out", tmp_path / "work"
    scratch = str(TaskContext(output=str(out), workdir=str(work)).scratch())
    with MediaServer(www) as srv:
        meta, text = write_metadata(tmp_path / "meta", [VideoSpec(f"killv{i}", srv.url(f"k{i}.mp4"), even_spans(8))
                                                        for i in range(2)])
        job = subprocess.Popen([sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(meta),
                                "--text", str(text), "--output", str(out), "--workdir", str(work),
                                "--ray-address", cluster.address, "--height", "1080", "--fps", "25"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not [p for p in _job_processes(scratch) if p.name() == "ffmpeg" and _under(p, worker_raylet)
                       and "libx264" in p.cmdline()]:  # a cut on the worker node
                assert job.poll() is None, job.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no cut ever ran on the worker node"
                time.sleep(0.1)
            job.kill()
            job.wait(timeout=60)
            killed = time.monotonic()
            while (left := _job_processes(scratch)) and time.monotonic() < killed + 15:
                time.sleep(0.2)
            assert not left, [(p.pid, p.info["cmdline"][:4]) for p in left]
        finally:
            job.kill()
            for p in _job_processes(scratch):
                p.kill()
