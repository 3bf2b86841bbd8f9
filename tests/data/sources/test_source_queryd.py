"""`--source queryd`: QuerYD's description and times pickles (hand-written here in the
published layout: `video-<YouTube id>` -> descriptions, and -> their [start, end] seconds,
some as numpy arrays) become one sample per video whose clips are its descriptions; end
to end through the shards and the model's loader, with the videos in --video-dir."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from lfvila_data.inputs import InputError
from lfvila_data.records import FailureCode
from lfvila_data.sources.queryd import caption_text, load_mapping, parse_video, queryd_id, read_queryd
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

A, B = "video-qdAAAAAAAAA", "video-qdBBBBBBBBB"
CAPTIONS = {
    A: ["a man walks into the kitchen .", ["he", "opens", "the", "fridge", "."], "",
        "he pours a glass of milk .", "he drinks it .", "he waves goodbye .", "the credits roll ."],
    B: ["a cat sleeps on a sofa ."],
    "video-qdCCCCCCCCC": ["one", "two"],      # two descriptions, one time
    "video-qdDDDDDDDDD": ["no times at all"],  # absent from the times file
    "video-qdEEEEEEEEE": ["not in the split"],
}
TIMES = {
    # 0-10 s file: the empty one and the reversed span are dropped, 8.5-11 clamped, 12.5 is past the end
    A: np.array([[0.5, 3.0], [2.0, 5.5], [3.0, 4.0], [7.0, 6.0], [6.0, 9.0], [8.5, 11.0], [12.5, 14.0]]),
    B: [[np.float32(1.0), np.float32(4.0)]],
    "video-qdCCCCCCCCC": [[0.0, 1.0]],
    "video-qdEEEEEEEEE": [[0.0, 1.0]],
}
SPLIT = f"{A}\n{B}\nvideo-qdMISSING00\n"


def test_ids_and_descriptions():
    assert queryd_id(A) == "qdAAAAAAAAA" == queryd_id("qdAAAAAAAAA")
    assert caption_text(["he", "opens", "it", "."]) == "he opens it ." and caption_text(" a  b ") == "a b"
    assert caption_text(3) == "" and caption_text(["a", 1]) == ""
    video, fails = parse_video(A, CAPTIONS[A], TIMES[A].tolist())
    assert [f.code for f in fails] == [FailureCode.NO_TEXT, FailureCode.BAD_SPAN]
    assert [(s.text, s.start) for s in video.segments][:2] == [("a man walks into the kitchen .", 0.5),
                                                             ("he opens the fridge .", 2.0)]
    assert video.url == "https://www.youtube.com/watch?v=qdAAAAAAAAA" and video.duration is None
    assert [f.code for f in parse_video("../x", [], [])[1]] == [FailureCode.UNSAFE_ID]


def test_json_copies_read_like_the_pickles_and_other_files_are_refused(tmp_path):
    raw, times = tmp_path / "raw_captions_combined_filtered.json", tmp_path / "times_captions_combined_filtered.json"
    raw.write_text(json.dumps({B: CAPTIONS[B]}))
    times.write_text(json.dumps({B: [[1.0, 4.0]]}))
    videos, fails = read_queryd([str(raw), str(times)])
    assert [(v.video_id, v.segments[0].end) for v in videos] == [(B, 4.0)] and fails == []
    with pytest.raises(InputError, match="needs both"):
        read_queryd([str(raw)])
    with pytest.raises(InputError, match="not 'captions.json'"):
        read_queryd([str(raw.rename(tmp_path / "captions.json"))])


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    bad = tmp_path / "raw_captions_evil.pkl"
    bad.write_bytes(pickle.dumps({A: _Shell()}))
    with pytest.raises(InputError, match="posix.system|os.system|nt.system"):
        load_mapping(str(bad))


@pytest.fixture(scope="module")
def queryd_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("queryd")
    out, _ = benchmark_build(root, "queryd", {"raw_captions_combined_filtered-v2.pkl": pickle.dumps(CAPTIONS),
                                              "times_captions_combined_filtered-v2.pkl": pickle.dumps(TIMES)},
                             {"qdAAAAAAAAA.mp4": 10, f"{B}.webm": 5, "qdEEEEEEEEE.mp4": 2},
                             split_files={"test_list.txt": SPLIT})
    return root, out


def test_one_sample_per_video_with_its_descriptions(queryd_build):
    _, out = queryd_build
    m = pd.read_parquet(out / "manifest.parquet").set_index("key")
    assert sorted(m.index) == [f"{A}_00001_00004", f"{B}_00001_00001"]
    a = m.loc[f"{A}_00001_00004"]
    assert (a.video_id, a.source, a.start, a.split) == (A, "queryd", 0.0, "test")
    assert [(c["start"], round(c["end"], 1)) for c in a.clips] == [(0.5, 3.0), (2.0, 5.5), (6.0, 9.0), (8.5, 10.0)]
    assert a.paragraph == "a man walks into the kitchen . he opens the fridge . he drinks it . he waves goodbye ."
    b = m.loc[f"{B}_00001_00001"]
    assert [(c["start"], c["end"], c["text"]) for c in b.clips] == [(1.0, 4.0, "a cat sleeps on a sofa .")]


def test_bad_descriptions_are_coded_ledger_rows(queryd_build):
    _, out = queryd_build
    f = pd.read_parquet(out / "failures.parquet")
    assert sorted(zip(f.video_id, f.stage, f.code)) == [
        ("qdMISSING00", "metadata", "not_found"),  # in the split file, in no annotation file
        (A, "metadata", "bad_span"), (A, "metadata", "no_text"), (A, "metadata", "segment_outside_video"),
        ("video-qdCCCCCCCCC", "metadata", "bad_line"), ("video-qdDDDDDDDDD", "metadata", "bad_line")]


def test_shards_carry_task_and_split_and_load(queryd_build, tmp_path):
    _, out = queryd_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 2, "sentences": 5}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert {k: (m["task"], m["split"], m["source"]) for k, m in metas.items()} == {
        f"{A}_00001_00004": ("retrieval", "test", "queryd"), f"{B}_00001_00001": ("retrieval", "test", "queryd")}
