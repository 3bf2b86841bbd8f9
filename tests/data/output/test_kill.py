"""No junk after a kill: SIGTERM or SIGINT to a real build stops its Ray (no worker or
agent outlives the driver) and removes its scratch and lease; a rerun after kill -9
removes what the killed job left (scratch, temporary files, its lease) and completes.
A build on the driver's threads (`--executor local`) leaves no ffmpeg running after
SIGTERM, nor after kill -9 of the driver alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import psutil
import pytest

from lfvila_data.executor.cluster import processes_file, reap_processes, record_processes
from lfvila_data.media.task import TaskContext
from lfvila_data.output.lease import LEASE


def _start(site, out, work, executor: str = "ray") -> subprocess.Popen:
    return subprocess.Popen(site.build_cmd(out, work, "--download-concurrency", "1", "--executor", executor),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(job: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the build never got there"
        time.sleep(0.1)


def _junk(out) -> list:
    return [p for p in out.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name == LEASE]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_ray_and_removes_scratch_and_lease(site, tmp_path, sig):
    out, work = tmp_path / "out", tmp_path / "work"
    scratch = TaskContext(output=str(out), workdir=str(work)).scratch()
    job = _start(site, out, work)
    _wait_until(job, scratch.exists)  # downloading
    kids = psutil.Process(job.pid).children(recursive=True)
    assert kids  # Ray's processes
    job.send_signal(sig)
    rc = job.wait(timeout=120)
    err = job.communicate()[1]
    assert rc == 2, err[-3000:]
    assert "interrupted; rerun the same command to resume" in err
    _, alive = psutil.wait_procs(kids, timeout=60)
    assert not alive, [p.cmdline()[:3] for p in alive]
    assert not scratch.exists()
    assert not _junk(out)


def test_a_rerun_after_kill_9_cleans_up_and_completes(site, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    scratch = TaskContext(output=str(out), workdir=str(work)).scratch()
    job = _start(site, out, work)
    _wait_until(job, lambda: (out / "videos").exists())  # cutting
    job.kill()
    job.wait(timeout=60)
    assert (out / LEASE).exists()  # a killed job cannot release it
    recorded = json.loads(processes_file(scratch).read_text())  # its Ray: raylet, GCS, agents
    assert {"raylet", "gcs_server"} <= {p["name"] for p in recorded}, recorded
    (out / "_write_check.0123abcd.tmp").write_bytes(b"")  # what a write killed mid-way leaves
    rerun = site.build_cmd(out, work, "--download-concurrency", "1", "--executor", "ray")
    r = subprocess.run(rerun, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(pd.read_parquet(out / "manifest").key) == site.keys
    assert not scratch.exists()
    assert not _junk(out)
    assert not [p for p in recorded if _running(p)], "the killed job's Ray outlived the rerun's start"


def _local_build_running_ffmpeg(site, out, work) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """A `--executor local` build, once it runs ffmpeg or ffprobe: it and those children."""
    job = _start(site, out, work, "local")
    kids: list[psutil.Process] = []

    def running_ffmpeg() -> bool:
        kids[:] = []
        for p in psutil.Process(job.pid).children(recursive=True):
            try:
                if p.name().startswith("ff"):  # not the watchdog, a python child
                    kids.append(p)
            except psutil.Error:
                pass
        return bool(kids)

    _wait_until(job, running_ffmpeg)
    return job, kids


def test_local_executor_sigterm_ends_its_subprocesses_scratch_and_lease(site, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    scratch = TaskContext(output=str(out), workdir=str(work)).scratch()
    job, kids = _local_build_running_ffmpeg(site, out, work)
    job.send_signal(signal.SIGTERM)
    rc = job.wait(timeout=120)
    err = job.communicate()[1]
    assert rc == 2 and "interrupted; rerun the same command to resume" in err, err[-3000:]
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, [p.cmdline()[:3] for p in alive]
    assert not scratch.exists()
    assert not _junk(out)


def test_local_executor_kill_9_of_the_driver_ends_its_subprocesses(site, tmp_path):
    """Only the driver is killed (not its process group, as a terminal would): its ffmpeg
    children end, not left running as orphans (those that would not stop on their own,
    e.g. on a closed pipe, the watchdog kills: test_threads.py; the rerun after a kill -9
    is tested in test_build.py)."""
    job, kids = _local_build_running_ffmpeg(site, tmp_path / "out", tmp_path / "work")
    job.kill()
    job.wait(timeout=60)
    job.communicate()
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, [p.cmdline()[:3] for p in alive]


def _running(row: dict) -> bool:
    try:
        p = psutil.Process(row["pid"])
        return abs(p.create_time() - row["started"]) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_reap_ends_recorded_processes_and_spares_a_reused_pid(tmp_path):
    """What a kill -9 left (a recorded process still running) is ended on the next start;
    a pid now used by another process (another start time) is left alone."""
    left = subprocess.Popen(["sleep", "300"])
    try:
        record = tmp_path / "w" / "x.ray-processes.json"
        record_processes(record, [psutil.Process(left.pid)])
        rows = json.loads(record.read_text())
        rows.append({"pid": os.getpid(), "started": psutil.Process().create_time() - 100, "name": "python"})
        record.write_text(json.dumps(rows))
        assert reap_processes(record) == 1
        assert not _running(rows[0])  # ended (and reaped: psutil waited for it)
        assert not record.exists() and psutil.pid_exists(os.getpid())
        assert reap_processes(record) == 0  # nothing recorded: nothing to do
    finally:
        left.kill()
        left.wait()


def test_scratch_is_removed_on_every_node(tmp_path, ray_module):
    """A build joining a cluster removes a killed job's scratch on each live node (here the
    one local node, through the same pinned tasks a worker node gets)."""
    from lfvila_data.executor.cluster import remove_on_every_node

    scratch = tmp_path / "work" / "0123456789abcdef"
    (scratch / "vid").mkdir(parents=True)
    (scratch / "vid" / "part.mkv").write_bytes(b"left by a killed job")
    assert remove_on_every_node(scratch) == 1
    assert not scratch.exists()
