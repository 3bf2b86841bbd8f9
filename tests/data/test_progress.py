"""Progress while one long video is cut: the cut task reports samples done and seconds
cut as it goes, so the build's progress line moves before the video is finished — on Ray
(reports posted to a board the driver drains) and on the driver's threads (a queue the
driver drains), which write the same files."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.executor.base import RunConfig
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from lfvila_data.progress import BuildProgress, CutProgress, Throttled
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video

SAMPLES = 24  # 96 clips of 1 s, 4 per sample: 3 ffmpeg runs of 8 samples each
LINE = re.compile(r"build: videos (\d+)/(\d+) .*\| samples ([\d,]+)/([\d,]+) \(([\d,]+) written\), "
                  r"([\d,]+) s of video cut")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """One 2-minute video served over loopback, its metadata planning 24 samples."""
    root = tmp_path_factory.mktemp("long")
    (root / "www").mkdir()
    make_timecoded_video(root / "www" / "long.mp4", 118, width=160, height=120, fps=10, audio=False)
    with MediaServer(root / "www") as srv:
        spans = even_spans(4 * SAMPLES, length=1.0, gap=0.2)
        meta, text = write_metadata(root / "meta", [VideoSpec("vidLong", srv.url("long.mp4"), spans)])
        yield root, meta, text


def config(long_video, out: Path, executor: str = "auto") -> BuildConfig:
    root, meta, text = long_video
    task = TaskContext(output=str(out), fetch=FetchConfig(retries=0), workdir=str(root / "scratch"))
    return BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                       plan=PlanConfig(max_clips=4), task=task, run=RunConfig(executor=executor))


def progress_lines(stderr: str) -> list[tuple[int, int, int, int, int, int]]:
    """(videos finished, videos, samples done, samples, written, seconds cut) per line."""
    return [tuple(int(g.replace(",", "")) for g in m.groups()) for m in LINE.finditer(stderr)]


def check_moves_during_the_video(lines: list[tuple[int, ...]], seconds_in_samples: float) -> None:
    assert lines and all(videos == 1 and total == SAMPLES for _, videos, _, total, _, _ in lines)
    during = [ln for ln in lines if ln[0] == 0 and 0 < ln[2] < SAMPLES]
    assert during, lines  # samples done moved while the video was still being cut
    assert all(0 < written <= done and seconds > 0 for _, _, done, _, written, seconds in during)
    assert [ln[2] for ln in lines] == sorted(ln[2] for ln in lines)  # never goes back
    assert lines[-1][:5] == (1, 1, SAMPLES, SAMPLES, SAMPLES)
    assert abs(lines[-1][5] - seconds_in_samples) <= 1  # "s of video cut": the samples' source time


@pytest.fixture(scope="module")
def builds(long_video, tmp_path_factory, ray_module):
    """The same build on Ray and on the driver's threads: (output, stderr) of each."""
    made = {}
    for executor in ("ray", "local"):
        out = tmp_path_factory.mktemp(executor) / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            record = run_build(config(long_video, out, executor), progress_every_s=0)
        assert record["counts"]["samples_written"] == SAMPLES
        made[executor] = out, err.getvalue()
    return made


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_build_reports_samples_while_a_long_video_is_cut(builds, executor):
    out, err = builds[executor]
    manifest = pd.read_parquet(out / "manifest")
    check_moves_during_the_video(progress_lines(err), float((manifest.end - manifest.start).sum()))


def test_ray_and_the_driver_threads_write_the_same_files(builds):
    """`--executor` is speed only: manifest and sample files are the same, byte for byte."""
    (ray_out, _), (local_out, _) = builds["ray"], builds["local"]
    pd.testing.assert_frame_equal(pd.read_parquet(local_out / "manifest"), pd.read_parquet(ray_out / "manifest"))
    files = sorted(p.relative_to(local_out) for p in (local_out / "videos").rglob("*.mp4"))
    assert len(files) == SAMPLES
    assert files == sorted(p.relative_to(ray_out) for p in (ray_out / "videos").rglob("*.mp4"))
    assert all((local_out / f).read_bytes() == (ray_out / f).read_bytes() for f in files)


def test_throttled_sends_the_first_holds_the_rest_and_flushes_the_last():
    sent: list[int] = []
    report = Throttled(sent.append, every_s=3600)
    for i in range(1, 6):
        report(i)
    assert sent == [1]
    report.flush()
    report.flush()
    assert sent == [1, 5]
    every = Throttled(sent.append, every_s=0)
    every(6)
    every(7)
    assert sent == [1, 5, 6, 7]


def test_the_line_counts_videos_being_cut_and_their_result_replaces_the_report():
    p = BuildProgress(videos_total=2, samples_total=300, started=0.0)
    p.video_started("a", 300)
    assert "eta 0m00s" in p.line()  # nothing done yet: no rate to go by
    p.cut_progress(CutProgress("a", 100, 98, 1234.4))
    line = p.line()
    assert "videos 0/2" in line and "samples 100/300 (98 written), 1,234 s of video cut" in line
    assert "eta 0m00s" not in line  # twice the time taken so far: the samples give the rate
    p.cut_progress(CutProgress("a", 300, 297, 3700.0))
    p.video_finished("a")
    p.videos_done, p.samples_written = 1, 297
    assert "videos 1/2" in p.line() and "samples 300/300 (297 written), 3,700 s of video cut" in p.line()
