"""`--source how2qa`: How2QA's question and subtitle JSON lines and its vid_name -> YouTube
segment mapping (hand-written here in the VALUE release's layout) become one QA sample per
clip: its subtitle lines as clips, its questions with their four answers and label in the
shard json's `qa`; end to end through shard and verify, with unmapped clips in --video-dir
and a mapped clip cut from its whole YouTube video, fetched from a loopback mirror."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lfvila_data.localserver import MediaServer
from lfvila_data.records import FailureCode
from lfvila_data.shards.verify import check_meta
from lfvila_data.sources.benchmark import qa_split
from lfvila_data.sources.how2qa import clip_segment, parse_question, read_how2qa
from tests.support.benchbuild import benchmark_build
from tests.support.endtoend import read_metas, shard_verify_load
from tests.support.media import decode_times, make_timecoded_video

A, B, C = "yt1AAAAAAAA_30_90", "yt2BBBBBBBB_0_60", "yt3CCCCCCCC_0_60"
# VALUE's vid_names are mostly numbers; how2_vid_mapping.json places them in their YouTube
# video as "<YouTube id>_<start>_<end>" (the id may hold "_"). The real clips are 60 s; D is
# 6 s (6-12 s of a 16-s video) to keep the test small.
D, D_YT = "30012", "Yt_dAAAAAAA"
MAPPING = {D: f"{D_YT}_6_12", C: "yt3CCCCCCCC", "99999": "unusedAAAAA_0_60"}


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
    question(D, "q7", "What is chopped?", ["an onion", "a carrot", "wood", "nothing"], 1, "1.0-4.0"),
]
SUBTITLES = [
    {"vid_name": A, "sub": [{"text": "so today we cook", "start": 0.0, "end": 2.5},
                            {"text": "take  a cup", "start": 2.5, "end": 5.0}, {"text": "", "start": 5.0, "end": 6.0},
                            {"text": "and pour", "start": 6.0, "end": 9.5}]},  # the file ends at 8 s
    {"vid_name": B, "sub": [{"text": "hello there", "start": 0.5, "end": 3.0}, {"text": "bad", "start": 4, "end": 2}]},
    {"vid_name": D, "sub": [{"text": "first we chop", "start": 0.5, "end": 2.5},  # the clip's own times
                            {"text": "then we stir", "start": 3.0, "end": 5.5},
                            {"text": "after the clip", "start": 7.0, "end": 9.0}]},
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


def test_the_mapping_places_a_clip_in_its_youtube_video(tmp_path):
    assert clip_segment("Yt_dAAAAAAA_6_12") == ("Yt_dAAAAAAA", 6.0, 12.0)
    assert clip_segment("-abc_def-12_60.5_120") == ("-abc_def-12", 60.5, 120.0)
    for bad in ("yt3CCCCCCCC", "x_12_6", "x_a_b", "../x_0_60", 42, "x_-5_60"):
        assert clip_segment(bad) is None
    (tmp_path / "how2qa_val_release.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS[5:]))
    (tmp_path / "subtitles.jsonl").write_text(json.dumps(SUBTITLES[2]))
    (tmp_path / "how2_vid_mapping.json").write_text(json.dumps(MAPPING, indent=1))  # one object, many lines
    videos, fails = read_how2qa([str(tmp_path / n) for n in ("how2qa_val_release.jsonl", "subtitles.jsonl",
                                                             "how2_vid_mapping.json")])
    by_id = {v.video_id: v for v in videos}
    d, c = by_id[D], by_id[C]
    assert (d.source_id, d.offset, d.duration, d.url) == (D_YT, 6.0, 6.0, f"https://www.youtube.com/watch?v={D_YT}")
    assert [(t.start, t.end) for t in d.segments] == [(0.5, 2.5), (3.0, 5.5), (7.0, 9.0)]  # still the clip's
    assert (c.source_id, c.offset, c.url) == (None, 0.0, None)  # a bad mapping value: --video-dir only
    assert [(f.video_id, f.code) for f in fails] == [(C, FailureCode.BAD_LINE)]


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
    www = root / "www"
    www.mkdir()
    make_timecoded_video(www / f"{D_YT}.mp4", 16, width=160, height=120)  # the whole YouTube video
    lines = [json.dumps(q) for q in QUESTIONS]
    with MediaServer(www) as srv:
        out, _ = benchmark_build(
            root, "how2qa", {"how2qa_val_release.jsonl": "\n".join([*lines[:3], "not json", *lines[3:]]),
                             "subtitles.jsonl": "\n".join(map(json.dumps, SUBTITLES)),
                             "how2_vid_mapping.json": json.dumps(MAPPING)},
            {f"{A}.mp4": 8, f"{B}.mp4": 4}, video_base_url=srv.url(""))
        served = dict(srv.requests)
    return root, out, served


def test_one_sample_per_clip_with_subtitles_and_questions(how2qa_build):
    _, out, _ = how2qa_build
    m = pd.read_parquet(out / "manifest").set_index("key")
    assert sorted(m.index) == [f"{D}_00001_00002", f"{A}_00001_00003", f"{B}_00001_00001"]
    a = m.loc[f"{A}_00001_00003"]
    assert (a.source, a.split, a.paragraph) == ("how2qa", "val", "so today we cook take a cup and pour")
    assert [(c["start"], round(c["end"], 1)) for c in a.clips] == [(0.0, 2.5), (2.5, 5.0), (6.0, 8.0)]
    assert [q["qid"] for q in json.loads(a.qa)] == ["q1", "q2"]


def test_a_mapped_clip_is_cut_from_its_youtube_video_fetched_by_id(how2qa_build):
    _, out, served = how2qa_build
    d = pd.read_parquet(out / "manifest").set_index("key").loc[f"{D}_00001_00002"]
    assert d.url.endswith(f"/{D_YT}.mp4") and served[f"{D_YT}.mp4"] >= 1  # fetched from the mirror by id
    assert (d.start, d.end, d.split) == (6.0, 12.0, "val")  # the clip's span in the YouTube video
    assert [(c["start"], c["end"]) for c in d.clips] == [(6.5, 8.5), (9.0, 11.5)]  # subtitles in source time
    assert json.loads(d.qa)[0]["span"] == [1.0, 4.0]  # the question's span stays the clip's own
    shown = decode_times(out / d.video)
    assert shown[0] == pytest.approx(6.0, abs=0.34) and shown[-1] == pytest.approx(11.75, abs=0.34)


def test_bad_lines_are_coded_ledger_rows(how2qa_build):
    _, out, _ = how2qa_build
    f = pd.read_parquet(out / "failures")
    assert sorted(zip(f.video_id.fillna("-"), f.stage, f.code)) == [
        ("-", "metadata", "bad_line"), (D, "metadata", "segment_outside_video"), (A, "metadata", "bad_line"),
        (A, "metadata", "no_text"), (B, "metadata", "bad_line"), (B, "metadata", "bad_span"),
        (C, "download", "not_found"), (C, "metadata", "bad_line")]


def test_shards_carry_the_questions(how2qa_build, tmp_path):
    _, out, _ = how2qa_build
    assert shard_verify_load([out], tmp_path, multi_sentence=False) == {"samples": 3, "loaded": 0, "sentences": 6}
    metas = read_metas(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")))
    b = metas[f"{B}_00001_00001"]
    assert (b["task"], b["split"], b["n_clips"]) == ("qa", "val", 1)
    assert b["qa"] == [{"qid": "q5", "question": "Who says hello?", "answers": ["a man", "a woman", "a child", "nobody"],
                        "label": 1, "answer": "a woman", "span": [0.0, 8.0]}]
    assert [q["answer"] for q in metas[f"{A}_00001_00003"]["qa"]] == ["a cup", "a kitchen"]
    d = metas[f"{D}_00001_00002"]  # times relative to the clip again, the source's kept beside them
    assert [(c["start"], c["end"], c["source_start"]) for c in d["clips"]] == [(0.5, 2.5, 6.5), (3.0, 5.5, 9.0)]
