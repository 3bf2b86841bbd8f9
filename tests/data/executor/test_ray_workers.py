"""How many worker processes a build through Ray starts. Each costs ~1.4 CPU-s (Python,
Ray's core worker, our imports), more than cutting a short video: downloads run in one
fetcher actor per node and cuts reserve CPUs, so the count stays bounded by the node's
CPUs whatever the number of videos (zero-CPU download tasks started one per download
running at once, and Ray ended them when idle). The progress board lives in the driver
node's fetcher, and a cut worker imports neither numpy nor pyarrow.

Beyond those, Ray itself may start one worker that runs nothing: a task's lease request
reports a backlog that counts the task itself, and the raylet prestarts a worker for that
backlog besides the one it starts for the lease (docs/performance.md, "Why Ray starts one
cut worker beyond the CPUs")."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.executor.base import RunConfig
from lfvila_data.localserver import MediaServer
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video

VIDEOS = 8


def _workers_started(ray) -> int:
    """Worker processes this Ray session has started: one core-worker log each (the log
    monitor moves those of ended workers to old/)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return len(list(logs.rglob("python-core-worker-*.log")))


def _worker_roles(ray) -> dict[str, str]:
    """What each worker process of this Ray session did (worker log name -> "fetcher",
    "cut" or "nothing"), from the task and actor names Ray writes into a worker's stderr
    file when it starts running them."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    roles = {}
    for f in logs.rglob("worker-*.err"):
        text = f.read_text(errors="replace")
        roles[f.name] = ("fetcher" if ":actor_name:_Fetcher" in text
                         else "cut" if ":task_name:_cut_reporting" in text else "nothing")
    return roles


def _actors(ray) -> dict[str, str]:
    """Every actor of this Ray session, dead or alive (id -> class), from the GCS (Ray's
    public state API needs the dashboard, which the tests' Ray leaves out)."""
    return {k: v["ActorClassName"] for k, v in ray._private.state.actors().items()}


def test_a_ray_build_starts_a_bounded_number_of_worker_processes(ray_local, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    make_timecoded_video(www / "v.mp4", 4, width=64, height=48, fps=5, audio=False)
    with MediaServer(www) as srv:
        videos = [VideoSpec(f"wk{i}", srv.url("v.mp4"), even_spans(4, length=0.5, gap=0.1, first=0.5))
                  for i in range(VIDEOS)]
        meta, text = write_metadata(tmp_path / "meta", videos)
        out = tmp_path / "out"
        before = _workers_started(ray_local)
        roles_before = set(_worker_roles(ray_local))
        actors_before = set(_actors(ray_local))
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                              plan=PlanConfig(min_clips=4, max_clips=4),
                              task=TaskContext(output=str(out), fetch=FetchConfig(retries=0),
                                               workdir=str(tmp_path / "scratch"), cut=CutConfig(height=48)),
                              run=RunConfig(fetch_concurrency=VIDEOS, executor="ray")), progress_every_s=0)
        started = _workers_started(ray_local) - before
        roles = Counter(r for name, r in _worker_roles(ray_local).items() if name not in roles_before)
        actors = sorted(name for actor, name in _actors(ray_local).items() if actor not in actors_before)
    assert len(pd.read_parquet(out / "manifest")) == VIDEOS and pd.read_parquet(out / "failures").empty
    cpus = int(ray_local.cluster_resources()["CPU"])
    # an actor has a worker process to itself, tasks share theirs: the build's only actor is
    # the node's fetcher, which holds the progress board (before: a board actor as well)
    assert actors == ["_Fetcher"], actors
    # the workers started during the build: the fetcher (unless it took an idle worker of
    # an earlier test), one per cut slot, and one more that Ray's raylet prestarts for the
    # backlog of the first cut lease that found no worker idle or starting (the lease's
    # backlog counts the task itself: docs/performance.md, "Why Ray starts one cut worker
    # beyond the CPUs"); that one mostly runs nothing, but may take a later cut while
    # another worker idles
    assert roles["fetcher"] <= 1 and roles["nothing"] <= 1 and roles["cut"] + roles["nothing"] <= cpus + 1, roles
    assert started <= cpus + 2, (started, roles)


def test_a_cut_worker_imports_neither_numpy_nor_pyarrow():
    """What a cut task's process imports to run it (the task's module) and what its work
    calls (a manifest row, the result's payload, a file written into the output): numpy
    and pyarrow cost a worker process ~0.3 CPU-s and it needs neither."""
    code = ("import sys, tempfile\n"
            "from lfvila_data.executor.runner import _cut_reporting\n"
            "from lfvila_data.media.cut import Probe\n"
            "from lfvila_data.output.write import OutputDir, VideoResult\n"
            "from lfvila_data.records import Clip, PlannedSample\n"
            "from lfvila_data.schemas import manifest_row\n"
            "s = PlannedSample('k', 'v', 'http://127.0.0.1/v.mp4', 0.0, 1.0, (Clip('v.1.mp4', 1, 0.0, 1.0, 't'),))\n"
            "row = manifest_row(s, 'videos/v/k.mp4', Probe(0.0, 1.0, 64, 48, 'h264', 5.0, False, 5), 10, 'hdvila')\n"
            "VideoResult('v', 'done', [row], [], {'k': 10}).payload()\n"
            "OutputDir(tempfile.mkdtemp()).write_bytes('a/b.json', b'{}')\n"
            "print(sorted(m for m in ('numpy', 'pyarrow', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
