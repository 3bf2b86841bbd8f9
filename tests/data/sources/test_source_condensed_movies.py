"""`--source condensed-movies`: Condensed Movies' `metadata/descriptions.csv` (hand-written
here in the published layout) becomes one sample per clip with its one description; end
to end through the shards, with the videos in --video-dir."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from lfvila_data.inputs import InputError
from lfvila_data.records import FailureCode
from lfvila_data.sources.condensed_movies import parse_row, read_condensed_movies
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

DESCRIPTIONS = """videoid,imdbid,description,duration
cmAAAAAAAAA,tt0034583,"Rick meets Ilsa at the bar, and they argue about the past.",8.0
cmBBBBBBBBB,tt0066999,A car chase through the city at night.,4.5
cmCCCCCCCCC,tt0000003,,5.0
cmDDDDDDDDD,tt0000004,A fight.,long
../etc,tt0000005,An escape.,3.0
cmAAAAAAAAA,tt0034583,Described again.,8.0
cmEEEEEEEEE,tt0000006,No file for this one.,3.0
"""


def test_rows_and_their_failures():
    video, fails = parse_row({"videoid": "cmBBBBBBBBB", "description": " A  chase. ", "duration": "4.5"}, "row 1")
    assert fails == [] and video.duration == 4.5 and video.split == "all"
    assert [(s.text, s.start, s.end) for s in video.segments] == [("A chase.", 0.0, 4.5)]
    for row, code in [({"videoid": "x", "description": "", "duration": "3"}, FailureCode.NO_TEXT),
                      ({"videoid": "x", "description": "a", "duration": "inf"}, FailureCode.BAD_LINE),
                      ({"videoid": "x", "description": "a", "duration": "-1"}, FailureCode.BAD_LINE),
                      ({"videoid": "", "description": "a", "duration": "3"}, FailureCode.UNSAFE_ID)]:
        assert [f.code for f in parse_row(row, "row 1")[1]] == [code]


def test_durations_come_from_durations_csv_in_the_release_layout(tmp_path):
    # the release's own loader reads descriptions.csv by videoid and description; the
    # durations ship apart, as durations.csv ("videoid,duration", whole seconds)
    (tmp_path / "descriptions.csv").write_text("videoid,imdbid,description\ncmAAAAAAAAA,tt0034583,Rick meets Ilsa.\n"
                                               "cmFFFFFFFFF,tt0000007,No duration anywhere.\n"
                                               "cmGGGGGGGGG,tt0000008,A bad duration.\n")
    (tmp_path / "durations.csv").write_text("videoid,duration\ncmAAAAAAAAA,83\ncmGGGGGGGGG,0\n")
    videos, fails = read_condensed_movies([str(tmp_path / "descriptions.csv"), str(tmp_path / "durations.csv")])
    by_id = {v.video_id: v for v in videos}
    assert by_id["cmAAAAAAAAA"].duration == 83.0
    assert [(t.text, t.start, t.end) for t in by_id["cmAAAAAAAAA"].segments] == [("Rick meets Ilsa.", 0.0, 83.0)]
    # no duration: the clip runs to the local file's end (plan_benchmark clamps it)
    assert by_id["cmFFFFFFFFF"].duration is None and by_id["cmFFFFFFFFF"].segments[0].end == math.inf
    assert [(f.video_id, f.code) for f in fails] == [("cmGGGGGGGGG", FailureCode.BAD_LINE)]


def test_a_file_without_the_columns_is_one_line_error(tmp_path):
    (tmp_path / "clips.csv").write_text("videoid,clip_name\nx,y\n")
    with pytest.raises(InputError, match="descriptions.csv"):
        read_condensed_movies([str(tmp_path / "clips.csv")])


@pytest.fixture(scope="module")
def cmd_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("cmd")
    out, _ = benchmark_build(root, "condensed-movies", {"descriptions.csv": DESCRIPTIONS},
                             {"cmAAAAAAAAA.mp4": 6, "cmBBBBBBBBB.mkv": 6, "cmCCCCCCCCC.mp4": 2})
    return root, out


def test_one_sample_per_clip_with_its_description(cmd_build):
    _, out = cmd_build
    m = pd.read_parquet(out / "manifest").set_index("key")
    assert sorted(m.index) == ["cmAAAAAAAAA_00001_00001", "cmBBBBBBBBB_00001_00001"]
    a, b = m.loc["cmAAAAAAAAA_00001_00001"], m.loc["cmBBBBBBBBB_00001_00001"]
    assert (a.source, a.split, a.paragraph) == ("condensed-movies", "all",
                                                "Rick meets Ilsa at the bar, and they argue about the past.")
    assert a.end == pytest.approx(6.0, abs=0.1) and a.clips[0]["end"] == a.end  # the file is shorter than 8 s
    assert (b.end, [(c["start"], c["end"]) for c in b.clips]) == (4.5, [(0.0, 4.5)])


def test_bad_rows_are_coded_ledger_rows(cmd_build):
    _, out = cmd_build
    f = pd.read_parquet(out / "failures")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "unsafe_id"), ("cmAAAAAAAAA", "metadata", "duplicate"),
        ("cmCCCCCCCCC", "metadata", "no_text"), ("cmDDDDDDDDD", "metadata", "bad_line"),
        ("cmEEEEEEEEE", "download", "not_found")]


def test_shards_carry_task_and_split(cmd_build, tmp_path):
    _, out = cmd_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 2, "sentences": 2}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert {(m["task"], m["split"], m["n_clips"]) for m in metas.values()} == {("retrieval", "all", 1)}
