"""`--source violin`: VIOLIN's `violin_annotation.json` (hand-written here in the
published layout: per clip its file, split, subtitle lines and [true, false] statement
pairs) becomes one QA sample per clip, its statements labelled 1/0 in the shard json's
`qa`; end to end through shard and verify, with the clips in --video-dir."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.records import FailureCode
from lfvila_data.sources.violin import parse_clip, statements
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

A, B = "friends_s01e01_seg01_clip_00", "movieclips_abc"
ANNOTATION = {
    "1": {"file": A, "source": "friends", "split": "test",
          "sub": [["Hi Ross.", 0.5, 2.0], ["Hey!", 2.0, 3.0], ["Coffee?", 3.5, 5.0], ["No thanks.", 6, 5]],
          "statement": [["Rachel greets Ross.", "Rachel ignores Ross."], ["Ross declines coffee.", ""]]},
    "2": {"file": B, "source": "movieclips", "split": "train", "sub": [["Run!", 0.0, 1.5]],
          "statement": [["Someone shouts.", "Everyone is silent."]]},
    "3": {"file": "nostatement_clip", "split": "train", "sub": [["x", 0, 1]], "statement": "oops"},
    "4": [1, 2],
    "5": {"file": "missing_clip", "split": "test", "sub": [["y", 0, 1]], "statement": [["a", "b"]]},
}


def test_statements_become_labelled_items():
    items, fails = statements(A, ANNOTATION["1"]["statement"])
    assert [f.code for f in fails] == [FailureCode.BAD_LINE]
    assert items == [{"qid": f"{A}-1-true", "question": "Rachel greets Ross.", "answers": None, "label": 1,
                      "answer": None},
                     {"qid": f"{A}-1-false", "question": "Rachel ignores Ross.", "answers": None, "label": 0,
                      "answer": None}]
    video, fails = parse_clip("1", ANNOTATION["1"], "violinannotation")
    assert (video.video_id, video.split, len(video.segments)) == (A, "test", 3)
    assert [f.code for f in fails] == [FailureCode.BAD_LINE, FailureCode.BAD_SPAN]
    assert parse_clip("3", ANNOTATION["3"], "x")[0] is None


@pytest.fixture(scope="module")
def violin_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("violin")
    out, _ = benchmark_build(root, "violin", {"violin_annotation.json": json.dumps(ANNOTATION)},
                             {f"{A}.mp4": 6, f"{B}.webm": 3})
    return root, out


def test_one_sample_per_clip_and_coded_ledger_rows(violin_build):
    _, out = violin_build
    m = pd.read_parquet(out / "manifest.parquet").set_index("key")
    assert sorted(m.index) == [f"{A}_00001_00003", f"{B}_00001_00001"]
    a = m.loc[f"{A}_00001_00003"]
    assert (a.source, a.split, a.paragraph) == ("violin", "test", "Hi Ross. Hey! Coffee?")
    assert m.loc[f"{B}_00001_00001"].split == "train"
    f = pd.read_parquet(out / "failures.parquet")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "bad_line"), (A, "metadata", "bad_line"), (A, "metadata", "bad_span"),
        ("missing_clip", "download", "not_found"), ("nostatement_clip", "metadata", "bad_line")]


def test_shards_carry_the_statements(violin_build, tmp_path):
    _, out = violin_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 0, "sentences": 4}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert {k: (m["task"], m["split"], [(q["question"], q["label"]) for q in m["qa"]]) for k, m in metas.items()} == {
        f"{A}_00001_00003": ("qa", "test", [("Rachel greets Ross.", 1), ("Rachel ignores Ross.", 0)]),
        f"{B}_00001_00001": ("qa", "train", [("Someone shouts.", 1), ("Everyone is silent.", 0)])}
