"""`--source didemo`: a DiDeMo annotation file (hand-written here in LocalizingMoments'
published format: a list of moments with several annotators' 5-second-segment spans)
becomes one sample per video whose clips are its moments; end to end through the shards
and the model's loader, with the Flickr videos in --video-dir."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.records import FailureCode
from lfvila_data.sources.benchmark import read_split_files, split_name
from lfvila_data.sources.didemo import didemo_id, moment_span, parse_moment
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

A, B, C = "1234567@N00_111_aaa", "99@N01_222_bbb", "55@N02_333_ccc"
A_ID = "1234567_N00_111_aaa"


def moment(video: str, description: object, times: object) -> dict:
    """A train_data.json entry: the fields the release has, the links Flickr's."""
    return {"annotation_id": 1, "description": description, "times": times, "video": video,
            "download_link": "https://www.flickr.com/x", "num_segments": 6,
            "dl_link": f"https://www.flickr.com/video_download.gne?id={video.split('_')[-2]}"}


TRAIN_DATA = [
    moment(f"{A}.mov", "A dog runs to the ball.", [[1, 1], [1, 2], [1, 1], [0, 1]]),  # most chose 5-10 s
    moment(f"{A}.mov", "The dog sits.", [[0, 0], [0, 0], [2, 2], [2, 2]]),  # a tie: the first listed
    moment(f"{A}.mov", "The camera pans away.", [[2, 2], [9, 9], [2, 2]]),  # 9 is no segment
    moment(f"{A}.mov", "   ", [[0, 0]]),
    moment(f"{A}.mov", "Nothing.", [[4, 2], ["a", 1], [0, 6]]),
    moment(f"{A}.mov", "Later a cat appears.", [[3, 4]]),  # 15-25 s: the 12 s file has ended
    moment(f"{A}.mov", "The dog lies down.", [[1, 2]]),  # 5-15 s: clamped to the file's end
    {"description": "a moment without its video", "times": [[0, 0]]},
    moment(f"{B}.m4v", "A child waves.", [[0, 0]]),
    moment(f"{C}.mov", "Gone.", [[0, 0]]),  # no file in --video-dir
]


def test_moment_span_is_the_annotators_choice_in_seconds():
    assert moment_span([[1, 1], [1, 2], [1, 1], [0, 1]]) == (5.0, 10.0)
    assert moment_span([[0, 0], [0, 0], [2, 2], [2, 2]]) == (0.0, 5.0)
    assert moment_span([[5, 5]]) == (25.0, 30.0)
    assert moment_span([[4, 2], [0, 6], [-1, 0], [True, 1], [0.5, 1]]) is None
    assert moment_span("0 1") is None and moment_span([]) is None


def test_ids_and_bad_moments():
    assert didemo_id(f"{A}.mov") == A_ID == didemo_id(A_ID)
    assert split_name("train_data.json") == "train" and split_name("test_data.json") == "test"
    vid, m, link, fails = parse_moment(TRAIN_DATA[0], "moment 1")
    assert (vid, m.start, m.end, link, fails) == (A_ID, 5.0, 10.0, TRAIN_DATA[0]["dl_link"], [])
    renamed = {k: v for k, v in TRAIN_DATA[0].items() if k != "dl_link"} | {"download_link": "https://x/v.mp4"}
    assert parse_moment(renamed, "moment 1")[2] == "https://x/v.mp4"  # the data README's name for it
    for entry, code in [(TRAIN_DATA[3], FailureCode.NO_TEXT), (TRAIN_DATA[4], FailureCode.BAD_SPAN),
                        (TRAIN_DATA[7], FailureCode.BAD_LINE), ("[1]", FailureCode.BAD_LINE)]:
        assert [f.code for f in parse_moment(entry, "m")[3]] == [code]


def test_split_lines_name_videos_as_the_files_do(tmp_path):
    (tmp_path / "test_list.txt").write_text(f"{A}.mp4\n{B}\n")
    assert read_split_files([str(tmp_path / "test_list.txt")], didemo_id) == {A_ID: "test", didemo_id(B): "test"}


@pytest.fixture(scope="module")
def didemo_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("didemo")
    out, _ = benchmark_build(root, "didemo", {"train_data.json": json.dumps(TRAIN_DATA)},
                             {f"{A}.mp4": 12, f"{B}.webm": 6})
    return root, out


def test_one_sample_per_video_with_its_moments(didemo_build):
    _, out = didemo_build
    m = pd.read_parquet(out / "manifest").set_index("key")
    assert sorted(m.index) == [f"{A_ID}_00001_00004", "99_N01_222_bbb_00001_00001"]
    a = m.loc[f"{A_ID}_00001_00004"]
    assert (a.video_id, a.source, a.start, a.split) == (A_ID, "didemo", 0.0, "train")
    assert a.end == pytest.approx(12.0, abs=0.1)  # no duration in DiDeMo: the file's
    assert [(c["start"], round(c["end"], 1), c["text"]) for c in a.clips] == [
        (0.0, 5.0, "The dog sits."), (5.0, 10.0, "A dog runs to the ball."), (5.0, 12.0, "The dog lies down."),
        (10.0, 12.0, "The camera pans away.")]
    assert a.paragraph == "The dog sits. A dog runs to the ball. The dog lies down. The camera pans away."
    b = m.loc["99_N01_222_bbb_00001_00001"]
    assert [(c["start"], c["end"], c["text"]) for c in b.clips] == [(0.0, 5.0, "A child waves.")]


def test_bad_moments_are_coded_ledger_rows(didemo_build):
    _, out = didemo_build
    f = pd.read_parquet(out / "failures")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "bad_line"), (A_ID, "metadata", "bad_span"), (A_ID, "metadata", "no_text"),
        (A_ID, "metadata", "segment_outside_video"), ("55_N02_333_ccc", "download", "not_found")]


def test_shards_carry_task_and_split_and_load(didemo_build, tmp_path):
    _, out = didemo_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 2, "sentences": 5}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert {k: (m["task"], m["split"], m["source"], m["n_clips"]) for k, m in metas.items()} == {
        f"{A_ID}_00001_00004": ("retrieval", "train", "didemo", 4),
        "99_N01_222_bbb_00001_00001": ("retrieval", "train", "didemo", 1)}
