"""A two-video build small enough to build and rerun several times in one test module:
vidA has two samples (neighbours in one video), vidB one; served over loopback HTTP."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.localserver import MediaServer
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video

KEYS = ["vidA_00001_00003", "vidA_00004_00006", "vidB_00001_00003"]


@dataclass
class SmallSite:
    root: Path
    srv: MediaServer
    meta: Path
    text: Path

    def config(self, out: Path, cut: CutConfig | None = None, fetch: FetchConfig | None = None,
               **kw: object) -> BuildConfig:
        """The build of `out`; fetch height and audio follow `cut`, as the CLI wires them."""
        cut, fetch = cut or CutConfig(), fetch or FetchConfig(retries=0, backoff=0.05)
        task = TaskContext(output=str(out), cut=cut, workdir=str(self.root / "scratch"),
                           fetch=replace(fetch, height=cut.height, audio=cut.audio))
        return BuildConfig(metadata=(str(self.meta),), text=(str(self.text),), output=str(out),
                           plan=PlanConfig(min_clips=2, max_clips=3), task=task, **kw)

    def build(self, out: Path) -> Path:
        """A finished build with the default settings in `out`."""
        run_build(self.config(out))
        assert list(pd.read_parquet(out / "manifest").key) == KEYS
        return out

    def cli(self, out: Path, *extra: str) -> list[str]:
        """The same build as `config(out)` through the command line."""
        return [sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(self.meta),
                "--text", str(self.text), "--output", str(out), "--min-clips", "2", "--max-clips", "3",
                "--retries", "0", "--workdir", str(self.root / "scratch"), *extra]


@contextmanager
def small_site(root: Path) -> Iterator[SmallSite]:
    """Generate the videos and metadata under `root` and serve them while in use."""
    www = root / "www"
    www.mkdir(parents=True)
    make_timecoded_video(www / "a.mp4", 30, width=320, height=240)
    make_timecoded_video(www / "b.mp4", 20, width=320, height=240)
    with MediaServer(www) as srv:
        meta, text = write_metadata(root / "meta", [VideoSpec("vidA", srv.url("a.mp4"), even_spans(6)),
                                                    VideoSpec("vidB", srv.url("b.mp4"), even_spans(3))])
        yield SmallSite(root, srv, meta, text)


def small_build_fixture() -> Callable:
    """A module fixture `small_build`: the site and its finished build, made once per
    test module (tests damage copies). Assign it in the module: `small_build = small_build_fixture()`."""
    @pytest.fixture(scope="module")
    def small_build(tmp_path_factory, ray_module) -> Iterator[tuple[SmallSite, Path]]:
        with small_site(tmp_path_factory.mktemp("site")) as site:
            yield site, site.build(tmp_path_factory.mktemp("build") / "out")

    return small_build


def copy_build(src: Path, dst: Path) -> Path:
    """A copy of a finished build with the same file times, to damage without touching
    the original."""
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def file_facts(out: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under `out`."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def read_video_stream(path: Path) -> dict:
    """Height, frame rate and decoded frame count of a file, as ffprobe (not our code) reads it."""
    res = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                          "-show_entries", "stream=height,r_frame_rate,nb_read_frames", "-of", "json",
                          str(path)], check=True, capture_output=True, text=True)
    stream = json.loads(res.stdout)["streams"][0]
    num, den = stream["r_frame_rate"].split("/")
    return {"height": int(stream["height"]), "fps": float(num) / float(den),
            "frames": int(stream["nb_read_frames"])}
