"""Unbounded text (issue 14, item 7): a clip text over --max-text-bytes, a subtitle file
over --max-subtitle-bytes, one clip id with two texts. Each is a coded ledger row and
the clip breaks its run; none is sharded, none crashes planning."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from lfvila_data.executor.base import local_shuffle
from lfvila_data.plan.join import PlanConfig, build_plan, group_runs, read_plan, read_plan_failures
from lfvila_data.records import Clip, FailureCode, VideoMeta
from tests.support.corpus import VideoSpec, even_spans, write_metadata


def test_a_clip_text_over_the_cap_is_a_coded_row_that_breaks_its_run():
    clips = tuple(Clip(f"v.{k}.mp4", k, 4.0 * k, 4.0 * k + 3.5) for k in range(1, 9))
    texts = {c.clip_id: f"clip {c.k} says hi" for c in clips}
    texts["v.4.mp4"] = "é" * 33  # 66 bytes in UTF-8: the cap counts bytes, not characters
    stats: Counter = Counter()
    samples, failures = group_runs(VideoMeta("v", "http://127.0.0.1/v", clips), texts,
                                   PlanConfig(min_clips=2, max_text_bytes=64), stats)
    assert [s.key for s in samples] == ["v_00001_00003", "v_00005_00008"]
    [f] = failures
    assert (f.code, f.clip_id, f.stage, f.permanent) == (FailureCode.TEXT_TOO_LONG, "v.4.mp4", "text", True)
    assert "66 bytes" in f.reason and "--max-text-bytes 64" in f.reason
    assert stats["dropped_clips:text_too_long"] == 1 and stats["dropped_words:text_too_long"] == 1


def _plan(tmp_path, extra_text: list[str], per_line: bool, **cfg):
    video = VideoSpec("vidA", "http://127.0.0.1:9/a.mp4", even_spans(6))
    meta, text = write_metadata(tmp_path / "in", [video], extra_text=extra_text)
    out = tmp_path / "plan"
    build_plan([str(meta)], [str(text)], str(out), PlanConfig(min_clips=2, **cfg), shuffle=local_shuffle,
               progress=lambda m: None, per_line=per_line)
    rows = read_plan_failures(str(out)).to_pylist()
    return sorted(read_plan(str(out)).column("key").to_pylist()), rows


@pytest.mark.parametrize("per_line", [False, True])  # the Arrow block path and the per-line parser
def test_one_clip_id_with_two_texts_is_a_conflict_row_not_first_wins(tmp_path, per_line):
    other = json.dumps({"clip_id": "vidA.3.mp4", "text": "A different caption."})
    keys, rows = _plan(tmp_path, [other], per_line)
    assert keys == ["vidA_00001_00002", "vidA_00004_00006"]
    assert [(r["code"], r["clip_id"]) for r in rows] == [("clip_text_conflict", "vidA.3.mp4")]
    assert "two different texts" in rows[0]["reason"] and rows[0]["permanent"]


@pytest.mark.parametrize("per_line", [False, True])
def test_the_same_text_twice_is_fine(tmp_path, per_line):
    same = json.dumps({"clip_id": "vidA.3.mp4", "text": "Clip 3 of vidA  says hello. "})  # same once normalised
    keys, rows = _plan(tmp_path, [same], per_line)
    assert keys == ["vidA_00001_00006"] and rows == []


@pytest.mark.parametrize("per_line", [False, True])
def test_a_50_mb_class_text_is_rejected_at_planning(tmp_path, per_line):
    """A text over the cap (scaled down: 3 KB against a 2 KB cap) never reaches a sample."""
    long = json.dumps({"clip_id": "vidA.3.mp4", "text": "word " * 600})
    video = VideoSpec("vidA", "http://127.0.0.1:9/a.mp4", even_spans(6), no_text={3})
    meta, text = write_metadata(tmp_path / "in", [video], extra_text=[long])
    out = tmp_path / "plan"
    build_plan([str(meta)], [str(text)], str(out), PlanConfig(min_clips=2, max_text_bytes=2048),
               shuffle=local_shuffle, progress=lambda m: None, per_line=per_line)
    assert sorted(read_plan(str(out)).column("key").to_pylist()) == ["vidA_00001_00002", "vidA_00004_00006"]
    assert [r["code"] for r in read_plan_failures(str(out)).to_pylist()] == ["text_too_long"]


def test_a_200_mb_subtitle_file_is_a_row_not_gigabytes_in_the_driver(tmp_path):
    """A 200 MB sidecar (sparse: no disk used) over --max-subtitle-bytes is a
    subtitle_too_large row and is never read: the driver's RSS does not grow by the file."""
    import psutil

    from lfvila_data.text.stage import TextOptions, local_text

    video = tmp_path / "talk.mp4"
    video.write_bytes(b"not read")
    with (tmp_path / "talk.en.srt").open("wb") as f:
        f.write(b"1\n00:00:01,000 --> 00:00:02,000\nhello\n\n")
        f.truncate(200 * 1024 * 1024)
    proc = psutil.Process()
    before = proc.memory_info().rss
    out = local_text(video, PlanConfig(), TextOptions(max_subtitle_bytes=50 * 1024 * 1024))
    grown = proc.memory_info().rss - before
    [f] = out.failures
    assert (f.code, f.stage, f.permanent) == (FailureCode.SUBTITLE_TOO_LARGE, "text", True)
    assert "talk.en.srt" in f.reason and str(200 * 1024 * 1024) in f.reason and "--max-subtitle-bytes" in f.reason
    assert out.samples == [] and out.asr_reason is None
    assert grown < 64 * 1024 * 1024, f"the driver grew by {grown / 2**20:.0f} MiB"
