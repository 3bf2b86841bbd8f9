"""`--source activitynet-qa`: ActivityNet-QA's question and answer files (hand-written here
in the published layout: `*_q.json` and `*_a.json` lists joined by question_id) become one
QA sample per video (one clip over the whole video, no subtitles) with its questions and
answers in the shard json's `qa`; end to end through shard and verify, videos in --video-dir."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.sources.activitynet_qa import read_activitynet_qa
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

QUESTIONS = [
    {"video_name": "v_anqaAAAAAAA", "question": "is the person outdoors", "question_id": "v_anqaAAAAAAA_1"},
    {"video_name": "v_anqaAAAAAAA", "question": "what color is the ball", "question_id": "v_anqaAAAAAAA_2"},
    {"video_name": "v_anqaAAAAAAA", "question": "how many people are there", "question_id": "v_anqaAAAAAAA_3"},
    {"video_name": "anqaBBBBBBB", "question": "what is the man doing", "question_id": "anqaBBBBBBB_1"},
    {"video_name": "v_anqaMISSING", "question": "where is it", "question_id": "v_anqaMISSING_1"},
    {"video_name": "../x", "question": "unsafe", "question_id": "x_1"},
    "not an entry",
]
ANSWERS = [
    {"answer": "yes", "type": 3, "question_id": "v_anqaAAAAAAA_1"},
    {"answer": "red", "type": 4, "question_id": "v_anqaAAAAAAA_2"},  # _3 has no answer
    {"answer": "surfing", "type": 0, "question_id": "anqaBBBBBBB_1"},
    {"answer": "beach", "type": 6, "question_id": "v_anqaMISSING_1"},
]


def test_questions_join_their_answers(tmp_path):
    (tmp_path / "test_q.json").write_text(json.dumps(QUESTIONS))
    (tmp_path / "test_a.json").write_text(json.dumps(ANSWERS))
    videos, fails = read_activitynet_qa([str(tmp_path / "test_q.json"), str(tmp_path / "test_a.json")])
    assert [(v.video_id, v.split, [q["answer"] for q in v.qa]) for v in videos] == [
        ("v_anqaAAAAAAA", "test", ["yes", "red"]), ("anqaBBBBBBB", "test", ["surfing"]),
        ("v_anqaMISSING", "test", ["beach"])]
    assert sorted((f.video_id or "-", f.code.value) for f in fails) == [
        ("-", "bad_line"), ("-", "unsafe_id"), ("v_anqaAAAAAAA", "bad_line")]


@pytest.fixture(scope="module")
def anqa_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("anqa")
    out, _ = benchmark_build(root, "activitynet-qa", {"test_q.json": json.dumps(QUESTIONS),
                                                      "test_a.json": json.dumps(ANSWERS)},
                             {"anqaAAAAAAA.mp4": 4, "v_anqaBBBBBBB.webm": 3})
    return root, out


def test_one_whole_video_sample_per_video(anqa_build):
    _, out = anqa_build
    m = pd.read_parquet(out / "manifest.parquet").set_index("key")
    assert sorted(m.index) == ["anqaBBBBBBB_00001_00001", "v_anqaAAAAAAA_00001_00001"]
    a = m.loc["v_anqaAAAAAAA_00001_00001"]
    assert (a.source, a.split, a.paragraph, a.start) == ("activitynet-qa", "test", "", 0.0)
    assert [(c["start"], c["text"]) for c in a.clips] == [(0.0, "")] and a.clips[0]["end"] == a.end
    assert a.end == pytest.approx(4.0, abs=0.1)
    f = pd.read_parquet(out / "failures.parquet")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "bad_line"), ("-", "metadata", "unsafe_id"), ("v_anqaAAAAAAA", "metadata", "bad_line"),
        ("v_anqaMISSING", "download", "not_found")]


def test_shards_carry_questions_and_answers(anqa_build, tmp_path):
    _, out = anqa_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 0, "sentences": 0}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    assert metas["anqaBBBBBBB_00001_00001"]["qa"] == [
        {"qid": "anqaBBBBBBB_1", "question": "what is the man doing", "answers": None, "label": None,
         "answer": "surfing", "type": 0}]
    assert {(m["task"], m["split"], m["n_clips"]) for m in metas.values()} == {("qa", "test", 1)}
