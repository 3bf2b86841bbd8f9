"""`--source how2qa`: How2QA's question and subtitle JSON lines (hand-written here in the
HERO/VALUE layout) become one QA sample per clip: its subtitle lines as clips, its
questions with their four answers and label in the shard json's `qa`; end to end through
shard and verify, with the clips in --video-dir."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.records import FailureCode
from lfvila_data.shards.verify import check_meta
from lfvila_data.sources.benchmark import qa_split
from lfvila_data.sources.how2qa import parse_question
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load

A, B, C = "yt1AAAAAAAA_30_90", "yt2BBBBBBBB_0_60", "yt3CCCCCCCC_0_60"


def question(vid: str, qid: str, q: str, answers: list[str], label: object, ts: str = "0-8") -> dict:
    return {"vid_name": vid, "qid": qid, "q": q, **{f"a{i}": a for i, a in enumerate(answers)},
            "answer_idx": label, "ts": ts}


QUESTIONS = [
    question(A, "q1", "What does the man pick up?", ["a knife", "a spoon", "a cup", "a pan"], 2, "1.5-6.0"),
    question(A, "q2", "Where is he?", ["a kitchen", "a garden", "a car", "a shop"], 0),
    question(A, "q3", "Three answers?", ["x", "y", "z"], 1),
    question(B, "q4", "Label out of range?", ["a", "b", "c", "d"], 7),
    question(B, "q5", "Who says hello?", ["a man", "a woman", "a child", "nobody"], 1),
    question(C, "q6", "No file?", ["a", "b", "c", "d"], 0),
]
SUBTITLES = [
    {"vid_name": A, "sub": [{"text": "so today we cook", "start": 0.0, "end": 2.5},
                            {"text": "take  a cup", "start": 2.5, "end": 5.0}, {"text": "", "start": 5.0, "end": 6.0},
                            {"text": "and pour", "start": 6.0, "end": 9.5}]},  # the file ends at 8 s
    {"vid_name": B, "sub": [{"text": "hello there", "start": 0.5, "end": 3.0}, {"text": "bad", "start": 4, "end": 2}]},
]


def test_questions_and_splits():
    assert [qa_split(p) for p in ("how2qa_train.jsonl", "how2qa_val_release.jsonl", "how2qa-test.jsonl")] == \
        ["train", "val", "test"]
    item, fails = parse_question(QUESTIONS[0], A)
    assert fails == [] and item == {"qid": "q1", "question": "What does the man pick up?",
                                    "answers": ["a knife", "a spoon", "a cup", "a pan"], "label": 2,
                                    "answer": "a cup", "span": [1.5, 6.0]}
    for line in (QUESTIONS[2], QUESTIONS[3], QUESTIONS[0] | {"q": " "}, QUESTIONS[0] | {"answer_idx": True}):
        assert [f.code for f in parse_question(line, A)[1]] == [FailureCode.BAD_LINE]


def test_verify_checks_the_qa_items():
    meta = {"key": "v_00001_00001", "video_id": "v", "url": "u", "source": "how2qa", "start": 0.0, "end": 2.0,
            "duration": 2.0, "fps": 3.0, "width": 8, "height": 8, "frames": 6, "n_clips": 1,
            "clips": [{"clip_id": "v.1.mp4", "start": 0.0, "end": 2.0, "source_start": 0.0, "source_end": 2.0,
                       "text": "t", "sentences": [{"text": "t", "start": 0.0, "end": 2.0}]}],
            "text_source": "annotations", "language": None, "task": "qa", "split": "val",
            "qa": [parse_question(QUESTIONS[0], A)[0]]}
    assert check_meta(meta["key"], meta) == []
    for qa in (None, [], [{"qid": "1", "question": ""}], [meta["qa"][0] | {"label": 4}],
               [{"qid": "1", "question": "q", "answers": None, "label": None, "answer": None}]):
        assert [c for c, _ in check_meta(meta["key"], meta | {"qa": qa})] == ["json"]


@pytest.fixture(scope="module")
def how2qa_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("how2qa")
    lines = [json.dumps(q) for q in QUESTIONS]
    out, _ = benchmark_build(root, "how2qa", {"how2qa_val.jsonl": "\n".join([*lines[:3], "not json", *lines[3:]]),
                                              "how2qa_subtitles.jsonl": "\n".join(map(json.dumps, SUBTITLES))},
                             {f"{A}.mp4": 8, f"{B}.mp4": 4})
    return root, out


def test_one_sample_per_clip_with_subtitles_and_questions(how2qa_build):
    _, out = how2qa_build
    m = pd.read_parquet(out / "manifest.parquet").set_index("key")
    assert sorted(m.index) == [f"{A}_00001_00003", f"{B}_00001_00001"]
    a = m.loc[f"{A}_00001_00003"]
    assert (a.source, a.split, a.paragraph) == ("how2qa", "val", "so today we cook take a cup and pour")
    assert [(c["start"], round(c["end"], 1)) for c in a.clips] == [(0.0, 2.5), (2.5, 5.0), (6.0, 8.0)]
    assert [q["qid"] for q in json.loads(a.qa)] == ["q1", "q2"]


def test_bad_lines_are_coded_ledger_rows(how2qa_build):
    _, out = how2qa_build
    f = pd.read_parquet(out / "failures.parquet")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "bad_line"), (A, "metadata", "bad_line"), (A, "metadata", "no_text"),
        (B, "metadata", "bad_line"), (B, "metadata", "bad_span"), (C, "download", "not_found")]


def test_shards_carry_the_questions(how2qa_build, tmp_path):
    _, out = how2qa_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 2, "loaded": 0, "sentences": 4}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    b = metas[f"{B}_00001_00001"]
    assert (b["task"], b["split"], b["n_clips"]) == ("qa", "val", 1)
    assert b["qa"] == [{"qid": "q5", "question": "Who says hello?", "answers": ["a man", "a woman", "a child", "nobody"],
                        "label": 1, "answer": "a woman", "span": [0.0, 8.0]}]
    assert [q["answer"] for q in metas[f"{A}_00001_00003"]["qa"]] == ["a cup", "a kitchen"]
