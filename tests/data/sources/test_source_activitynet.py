"""`--source activitynet`: ActivityNet Captions annotation files (hand-written here in the
published format) and a collaborative-experts split file become one sample per video whose
clips are the annotated, possibly overlapping, segments; end to end through the shards
and the model's loader."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.media.cut import media_duration
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext, fit_to_media
from lfvila_data.plan.join import PlanConfig
from lfvila_data.records import Clip, FailureCode, PlannedSample
from lfvila_data.shards.stats import collect_stats
from lfvila_data.shards.verify import check_meta
from lfvila_data.shards.write import sample_json
from lfvila_data.sources.activitynet import parse_entry, plan_video, split_name, youtube_id
from tests.support.endtoend import read_metas, shard_verify_load
from tests.support.media import make_timecoded_video

# ActivityNet Captions val_1.json: video id -> duration, [start, end] per segment, sentences
# (with the stray spaces of the real files). Segments overlap and are not in time order.
OVERLAPPING = {"duration": 30.0,
               "timestamps": [[8.0, 20.0], [0, 12.5], [25.0, 31.0], [2.0, 6.0], [15.5, 29.0]],
               "sentences": ["A man picks up a guitar.", " A man walks into a room.",
                             "He bows to the crowd.  ", "He sits down on a chair.",
                             " He plays a song while people watch."]}
BAD = {"duration": 40.0,  # the file is 20 s long: its container duration ends the sample
       "timestamps": [[1.0, 5.0], [6.0, 6.0], [3.0, 9.0], [25.0, 30.0], [10.0, 14.0], [12.0, 18.0],
                      [15.0, 19.0]],
       "sentences": ["A dog runs.", "Nothing happens.", "   ", "The dog sleeps after the end.",
                     "The dog jumps.", "The dog barks.", "The dog lies down."]}
ANNOTATIONS = {"v_overlapAAAA": OVERLAPPING, "v_badsegment": BAD,
               "v_missingfile": {"duration": 12.0, "timestamps": [[0, 5.0]], "sentences": ["Gone."]},
               "v_notinsplit": {"duration": 6.0, "timestamps": [[0, 5.0]], "sentences": ["Not asked for."]}}
# the collaborative-experts split lists ids with v_, or (as some copies do) without it
SPLIT = "v_overlapAAAA\nbadsegment\nv_missingfile\n"


def test_ids_and_split_names():
    assert youtube_id("v_QOlSCBRmfWY") == "QOlSCBRmfWY" and youtube_id("QOlSCBRmfWY") == "QOlSCBRmfWY"
    assert [split_name(p) for p in ("val_1_list.txt", "train_list.txt", "data/val_2.json", "train.json")] == \
        ["val1", "train", "val2", "train"]


def test_bad_entries_and_segments_are_ledger_rows():
    video, fails = parse_entry("v_badsegment", BAD, "val1")
    assert [(f.code, f.stage) for f in fails] == [(FailureCode.BAD_SPAN, "metadata"), (FailureCode.NO_TEXT, "metadata")]
    sample, fails = plan_video(video, "/v.mp4", 20.0)
    assert [f.code for f in fails] == [FailureCode.SEGMENT_OUTSIDE_VIDEO]
    assert [(c.start, c.end, c.text) for c in sample.clips] == [
        (1.0, 5.0, "A dog runs."), (10.0, 14.0, "The dog jumps."), (12.0, 18.0, "The dog barks."),
        (15.0, 19.0, "The dog lies down.")]
    for vid, entry, code in [("v_x", {"duration": "long", "timestamps": [], "sentences": []}, FailureCode.BAD_LINE),
                             ("v_x", {"duration": 3, "timestamps": [[0, 1]], "sentences": []}, FailureCode.BAD_LINE),
                             ("../v", OVERLAPPING, FailureCode.UNSAFE_ID), ("v_x", [1], FailureCode.BAD_LINE)]:
        video, fails = parse_entry(vid, entry, "train")
        assert video is None and [f.code for f in fails] == [code]


def test_fit_to_media_keeps_overlapping_clips_that_end_in_time():
    clips = (Clip("v.1.mp4", 1, 0.0, 30.0, "long"), Clip("v.2.mp4", 2, 5.0, 10.0, "a"),
             Clip("v.3.mp4", 3, 8.0, 12.0, "b"))
    fit, fails = fit_to_media(PlannedSample("v_00001_00003", "v", "u", 0.0, 30.0, clips), 20.0, min_clips=1)
    assert [f.clip_id for f in fails] == ["v.1.mp4"]
    assert [c.k for c in fit.clips] == [2, 3] and fit.end == 12.0


def test_shard_json_task_and_split_are_checked():
    row = {"key": "v_a_00001_00001", "video_id": "v_a", "url": "u", "source": "activitynet", "start": 0.0,
           "end": 4.0, "duration": 4.0, "fps": 3.0, "width": 160, "height": 120, "frames": 12,
           "clips": [{"clip_id": "v_a.1.mp4", "start": 0.0, "end": 4.0, "text": "t",
                      "sentences": [{"text": "t", "start": 0.0, "end": 4.0}]}],
           "text_source": "annotations", "language": None, "split": "val1"}
    meta = sample_json(row)
    assert (meta["task"], meta["split"]) == ("retrieval", "val1") and check_meta(row["key"], meta) == []
    pretraining = sample_json(row | {"source": "hdvila", "split": None})
    assert (pretraining["task"], pretraining["split"]) == ("pretraining", None)
    assert [c for c, _ in check_meta(row["key"], meta | {"task": "qa-ish"})] == ["json"]
    assert [c for c, _ in check_meta(row["key"], meta | {"split": 3})] == ["json"]


@pytest.fixture(scope="module")
def anet_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("anet")
    videos = root / "videos"
    videos.mkdir()
    make_timecoded_video(videos / "overlapAAAA.mp4", 32, width=160, height=120)  # named without v_
    make_timecoded_video(videos / "v_badsegment.webm", 20, width=160, height=120, codec="vp9")
    make_timecoded_video(videos / "v_notinsplit.mp4", 6, width=160, height=120)
    (root / "val_1.json").write_text(json.dumps(ANNOTATIONS))
    (root / "val_1_list.txt").write_text(SPLIT)
    out = root / "out"
    cfg = BuildConfig(metadata=(), text=(), output=str(out), source="activitynet",
                      annotations=(str(root / "val_1.json"),), video_dir=str(videos),
                      split_files=(str(root / "val_1_list.txt"),), plan=PlanConfig(allow_local_files=True),
                      task=TaskContext(output=str(out), source="activitynet",
                                       fetch=FetchConfig(allow_local_files=True)))
    run_build(cfg)
    return root, out, cfg


def test_one_sample_per_video_with_the_annotated_segments(anet_build):
    root, out, _ = anet_build
    m = pd.read_parquet(out / "manifest").set_index("key")
    assert sorted(m.index) == ["v_badsegment_00001_00004", "v_overlapAAAA_00001_00005"]
    a = m.loc["v_overlapAAAA_00001_00005"]
    assert (a.video_id, a.source, a.start, a.end, a.split) == ("v_overlapAAAA", "activitynet", 0.0, 30.0, "val1")
    spans = sorted(zip(OVERLAPPING["timestamps"], OVERLAPPING["sentences"]))
    assert [(c["start"], c["end"]) for c in a.clips] == [(0, 12.5), (2.0, 6.0), (8.0, 20.0), (15.5, 29.0),
                                                         (25.0, 30.0)]  # the last clamped to the video
    assert [c["text"] for c in a.clips] == [s.strip() for _, s in spans]
    assert a.paragraph == " ".join(s.strip() for _, s in spans)
    assert a.duration == pytest.approx(30.0, abs=0.34)  # the whole video, to one frame at 3 fps
    b = m.loc["v_badsegment_00001_00004"]
    assert b.end == pytest.approx(media_duration(root / "videos" / "v_badsegment.webm"))
    assert [(c["start"], c["end"]) for c in b.clips] == [(1.0, 5.0), (10.0, 14.0), (12.0, 18.0), (15.0, 19.0)]
    assert b.split == "val1"


def test_bad_cases_are_coded_ledger_rows(anet_build):
    _, out, _ = anet_build
    f = pd.read_parquet(out / "failures")
    assert sorted(zip(f.video_id, f.stage, f.code)) == [
        ("v_badsegment", "metadata", "bad_span"), ("v_badsegment", "metadata", "no_text"),
        ("v_badsegment", "metadata", "segment_outside_video"), ("v_missingfile", "download", "not_found")]
    assert "v_notinsplit" not in set(f.video_id)  # not in the split file: neither built nor failed


def test_shards_carry_task_and_split_and_load(anet_build, tmp_path):
    _, out, _ = anet_build
    got = shard_verify_load([out], tmp_path, multi_sentence=False)
    assert got == {"samples": 2, "loaded": 2, "sentences": 9}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert {k: (m["task"], m["split"], m["source"]) for k, m in metas.items()} == {
        "v_badsegment_00001_00004": ("retrieval", "val1", "activitynet"),
        "v_overlapAAAA_00001_00005": ("retrieval", "val1", "activitynet")}
    clips = metas["v_overlapAAAA_00001_00005"]["clips"]
    assert [(c["source_start"], c["source_end"]) for c in clips] == [(0, 12.5), (2.0, 6.0), (8.0, 20.0),
                                                                     (15.5, 29.0), (25.0, 30.0)]
    assert collect_stats(str(out))["dataset_splits"] == {"val1": 2}
    assert collect_stats(str(tmp_path / "shards"))["dataset_splits"] == {"val1": 2}


def test_rerun_resumes_to_the_same_manifest(anet_build):
    _, out, cfg = anet_build
    before = pd.read_parquet(out / "manifest")
    record = run_build(cfg)
    assert record["last_run"]["videos_processed"] == 0  # everything journaled as done
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), before)
