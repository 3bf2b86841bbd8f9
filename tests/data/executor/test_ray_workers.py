"""How many worker processes a build through Ray starts. Each costs ~1.4 CPU-s (Python,
Ray's core worker, our imports), more than cutting a short video: downloads run in one
fetcher actor per node and cuts reserve CPUs, so the count stays bounded by the node's
CPUs whatever the number of videos (zero-CPU download tasks started one per download
running at once, and Ray ended them when idle). The progress board lives in the driver
node's fetcher, and a cut worker imports neither numpy nor pyarrow."""
from __future__ import annotations

import subprocess
import sys
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
        actors_before = set(_actors(ray_local))
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                              plan=PlanConfig(min_clips=4, max_clips=4),
                              task=TaskContext(output=str(out), fetch=FetchConfig(retries=0),
                                               workdir=str(tmp_path / "scratch"), cut=CutConfig(height=48)),
                              run=RunConfig(fetch_concurrency=VIDEOS, executor="ray")), progress_every_s=0)
        started = _workers_started(ray_local) - before
        actors = sorted(name for actor, name in _actors(ray_local).items() if actor not in actors_before)
    assert len(pd.read_parquet(out / "manifest")) == VIDEOS and pd.read_parquet(out / "failures").empty
    cpus = int(ray_local.cluster_resources()["CPU"])
    # an actor has a worker process to itself, tasks share theirs: the build's only actor is
    # the node's fetcher, which holds the progress board (before: a board actor as well)
    assert actors == ["_Fetcher"], actors
    assert started <= cpus + 1, started  # in a Ray other tests used, idle workers are reused


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
