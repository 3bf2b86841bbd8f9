"""The same build on a two-node Ray cluster (ray.cluster_utils.Cluster): downloads spread
over both nodes and each video is cut on the node that downloaded it; and joining a cluster
started by `ray start` with token authentication."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pandas as pd
import psutil
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import decode_times, make_timecoded_video


def test_build_on_two_nodes(cluster, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    videos = []
    for i in range(6):
        make_timecoded_video(www / f"v{i}.mp4", 24, width=160, height=120)
        videos.append(VideoSpec(f"clusterv{i}", "", even_spans(5)))
    with MediaServer(www) as srv:
        for i, v in enumerate(videos):
            v.url = srv.url(f"v{i}.mp4")
        meta, text = write_metadata(tmp_path / "meta", videos)
        out = tmp_path / "out"
        task = TaskContext(output=str(out), fetch=FetchConfig(retries=1, backoff=0.05),
                           workdir=str(tmp_path / "scratch"))
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                              plan=PlanConfig(num_buckets=3), task=task,
                              ray_address=cluster.address))
    m = pd.read_parquet(out / "manifest")
    assert list(m.key) == [f"clusterv{i}_00001_00005" for i in range(6)]
    for row in m.itertuples():
        times = decode_times(out / row.video)
        assert row.start - 0.25 <= times[0] <= row.start + 1 / 3
    nodes = pd.read_parquet(out / "downloads").node
    assert nodes.notna().all() and nodes.nunique() == 2  # work ran on both nodes
    assert pd.read_parquet(out / "failures").empty


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def token_cluster(tmp_path):
    """A cluster started the way `ray start` does with token authentication on, in a home
    of its own (the token lands in ~/.ray/auth_token); stopped by its process group, so the
    test session's own Ray is never touched."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=60)
    gcs, agent, agent_grpc, metrics, runtime_env, node, obj = _free_ports(7)
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Unix socket paths must stay short
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--node-manager-port={node}", f"--object-manager-port={obj}", "--node-ip-address=127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", gcs)) == 0:
                break
        time.sleep(0.5)
    time.sleep(3)  # the raylet registers after the GCS listens
    yield address, home
    os.killpg(head.pid, signal.SIGKILL)  # the whole session: nothing of it is kept (a clean stop takes ~30 s)
    head.wait(timeout=60)
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in proc.info["cmdline"] or []):
            proc.kill()  # a Ray process that left the session
    shutil.rmtree(temp, ignore_errors=True)


def test_joining_a_cluster_with_token_authentication(token_cluster, tmp_path):
    """The token on this machine is passed through (Ray's driver would send none and retry
    for ~20 s), Ray's start-up chatter stays off the screen, and a wrong token is one line."""
    address, home = token_cluster
    video = VideoSpec("tokvid", "http://127.0.0.1:9/v.mp4", even_spans(5))
    meta, text = write_metadata(tmp_path / "meta", [video])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}

    def build(out: str, **env: str) -> tuple[int, list[str]]:
        r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(meta),
                            "--text", str(text), "--output", str(tmp_path / out), "--plan-only",
                            "--ray-address", address], capture_output=True, text=True, timeout=300,
                           env={**clean, "HOME": str(home), **env}, check=False)
        return r.returncode, r.stderr.strip().splitlines()

    code, lines = build("ok")
    assert code == 0, lines[-20:]
    assert not [x for x in lines if "gcs_client" in x or "Token authentication" in x or "network_util" in x]
    assert any(x.startswith("plan:") for x in lines)
    # the mode set, so the one refusal (Ray's ~20 s of retries) is the answer
    code, lines = build("wrong", RAY_AUTH_TOKEN="not-the-token", RAY_AUTH_MODE="token")
    assert code == 2 and len(lines) == 1, lines[-20:]
    assert "requires token authentication" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
