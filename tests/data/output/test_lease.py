"""The output lease: two builds into one output (one proceeds, the other refuses in one
line with exit code 2), a stale lease of a dead job taken over, and a build on s3 that
lost its lease stopping before it writes the manifest."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.inputs import InputError
from lfvila_data.media.task import TaskContext
from lfvila_data.output.lease import LEASE, LeaseHeld, LeaseInfo, LeaseLost, OutputLease
from lfvila_data.output.write import OutputDir
from lfvila_data.schemas import MANIFEST_SCHEMA
from tests.support.media import decode_times


def _lease_file(path, pid: int, heartbeat: float, token: str = "other", pid_started: float = 0.0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    info = LeaseInfo("lfvila-data build", socket.gethostname(), pid, heartbeat, heartbeat, token, pid_started)
    (path / LEASE).write_text(json.dumps(info.__dict__))


def test_two_builds_into_one_output(site, tmp_path):
    out = tmp_path / "out"
    jobs = [subprocess.Popen(site.build_cmd(out, tmp_path / f"work{i}"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(j.wait(timeout=600), j.communicate()[1]) for j in jobs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, err in results]
    refused = next(err for rc, err in results if rc == 2)
    lines = [ln for ln in refused.splitlines() if "error:" in ln]
    assert len(lines) == 1 and f"{out} is in use by lfvila-data build on {socket.gethostname()} pid " in lines[0]
    assert " since " in lines[0]
    m = pd.read_parquet(out / "manifest")
    assert list(m.key) == site.keys
    assert pd.read_parquet(out / "failures").empty
    for rel, start in zip(m.video, m.start):
        times = decode_times(out / rel)
        assert len(times) > 0 and abs(times[0] - start) <= 0.5
    assert not (out / LEASE).exists()  # released at the end


def test_a_live_lease_refuses_and_a_dead_one_is_taken_over(site, tmp_path, ray_local):
    out = tmp_path / "out"
    cfg = BuildConfig(metadata=(str(site.meta),), text=(str(site.text),), output=str(out),
                      task=TaskContext(output=str(out), workdir=str(tmp_path / "work")))
    _lease_file(out, os.getpid(), time.time())  # this very process: alive
    with pytest.raises(LeaseHeld, match=r"is in use by lfvila-data build on .* pid \d+ since"):
        run_build(cfg)
    assert not (out / "plan").exists()  # refused before writing anything
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease_file(out, dead.pid, time.time())  # killed with -9: its heartbeat is still fresh
    run_build(cfg)
    assert list(pd.read_parquet(out / "manifest").key) == site.keys
    assert not (out / LEASE).exists()


def test_a_reused_pid_does_not_hold_the_lease(tmp_path):
    """The holder died and its pid now names another process (pids go round on a busy
    machine): the start time recorded with the pid tells them apart."""
    me = psutil.Process(os.getpid()).create_time()
    _lease_file(tmp_path, os.getpid(), time.time(), pid_started=me)  # the holder: alive
    with pytest.raises(LeaseHeld):
        OutputLease(OutputDir(str(tmp_path)), "test").acquire()
    _lease_file(tmp_path, os.getpid(), time.time(), pid_started=me - 3600)  # same pid, another process
    with OutputLease(OutputDir(str(tmp_path)), "test") as lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token


def test_a_lease_whose_heartbeat_stopped_is_stale(tmp_path):
    _lease_file(tmp_path, os.getpid(), time.time() - 600)  # alive, but silent for 10 minutes
    lease = OutputLease(OutputDir(str(tmp_path)), "test", timeout_s=120)
    with lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token
        lease.check()
    assert not (tmp_path / LEASE).exists()
    with pytest.raises(InputError), OutputLease(OutputDir(str(tmp_path)), "a", every_s=0.05):
        OutputLease(OutputDir(str(tmp_path)), "b").acquire()  # LeaseHeld: the CLI's one-line error


def test_a_job_that_lost_its_lease_stops(tmp_path):
    lease = OutputLease(OutputDir(str(tmp_path)), "test", every_s=0.05)
    with lease:
        _lease_file(tmp_path, os.getpid(), time.time(), token="taker")
        with pytest.raises(LeaseLost, match="took it over"):
            lease.check()
    assert json.loads((tmp_path / LEASE).read_text())["token"] == "taker"  # not removed


def test_s3_build_that_lost_its_lease_stops(site, tmp_path, s3):  # noqa: F811
    fs, env = s3
    cmd = site.build_cmd("s3://lfvila-test/out", tmp_path / "work")
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **env})
    deadline = time.monotonic() + 120
    while not fs.exists(f"lfvila-test/out/{LEASE}") and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        fs.invalidate_cache()
    time.sleep(1.0)  # past the job's read-back of its new lease
    taker = LeaseInfo("lfvila-data build", "elsewhere", 1, time.time(), time.time(), "taker")
    fs.pipe(f"lfvila-test/out/{LEASE}", json.dumps(taker.__dict__).encode())
    rc = job.wait(timeout=600)
    err = job.communicate()[1]
    assert rc == 3, err[-3000:]
    assert "lost the lease on s3://lfvila-test/out: lfvila-data build on elsewhere pid 1 took it over" in err
    fs.invalidate_cache()
    assert not fs.exists("lfvila-test/out/manifest")
    assert json.loads(fs.cat_file(f"lfvila-test/out/{LEASE}"))["token"] == "taker"


def test_shard_refuses_an_output_in_use(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    pq.write_table(MANIFEST_SCHEMA.empty_table(), build / "manifest.parquet")
    _lease_file(tmp_path / "shards", os.getpid(), time.time())
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "shard", "--input", str(build),
                        "--output", str(tmp_path / "shards")], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"lfvila-data: error: {tmp_path / 'shards'} is in use by lfvila-data build on "
        f"{socket.gethostname()} pid {os.getpid()} since "
        + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(json.loads(
            (tmp_path / "shards" / LEASE).read_text())["started"]))
        + "; wait for it to finish, or use another output"]


def test_an_unreadable_lease_is_held_until_its_file_goes_stale(tmp_path):
    (tmp_path / LEASE).write_text("{not json")
    with pytest.raises(LeaseHeld, match="in use by an unknown job"):
        OutputLease(OutputDir(str(tmp_path)), "test").acquire()
    os.utime(tmp_path / LEASE, (time.time() - 600, time.time() - 600))
    with OutputLease(OutputDir(str(tmp_path)), "test") as lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no claim or stale file left
