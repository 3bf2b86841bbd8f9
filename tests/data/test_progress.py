"""Progress while one long video is cut: the cut task reports samples done and seconds
cut as it goes, so the build's progress line moves before the video is finished — on Ray
(reports posted to a board the driver drains) and in this process (reports handed over
at once)."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build, run_journaled, run_videos_here
from lfvila_data.executor.base import local_shuffle
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.output.write import OutputDir
from lfvila_data.plan.join import PlanConfig, build_plan, read_plan
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


def config(long_video, out: Path) -> BuildConfig:
    root, meta, text = long_video
    task = TaskContext(output=str(out), fetch=FetchConfig(retries=0), workdir=str(root / "scratch"))
    return BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                       plan=PlanConfig(max_clips=4), task=task)


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


def test_ray_build_reports_samples_while_a_long_video_is_cut(long_video, tmp_path, ray_local, capsys):
    out = tmp_path / "out"
    record = run_build(config(long_video, out), progress_every_s=0)
    assert record["counts"]["samples_written"] == SAMPLES
    manifest = pd.read_parquet(out / "manifest")
    check_moves_during_the_video(progress_lines(capsys.readouterr().err),
                                 float((manifest.end - manifest.start).sum()))


def test_in_process_runner_reports_the_same_way(long_video, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = config(long_video, out)
    plan = build_plan(list(cfg.metadata), list(cfg.text), cfg.output, cfg.plan, shuffle=local_shuffle)
    assert plan.samples == SAMPLES
    progress = run_journaled(cfg, OutputDir(cfg.output), plan, None, runner=run_videos_here, progress_every_s=0)
    assert (progress.videos_done, progress.samples_written) == (1, SAMPLES)
    assert len(list((out / "videos").rglob("*.mp4"))) == SAMPLES
    planned = read_plan(cfg.output).to_pandas()
    seconds = float((planned.end - planned.start).sum())
    check_moves_during_the_video(progress_lines(capsys.readouterr().err), seconds)


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
