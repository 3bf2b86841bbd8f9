"""`--source activitynet-qa`: ActivityNet-QA (open-ended questions about ActivityNet
videos, answered by classification over the training answers) to QA shards; planning is
`sources.benchmark`'s.

Its files come in pairs, both passed as `--annotations` and told apart by their
entries: questions (`train_q.json`: a list of `{"video_name", "question",
"question_id"}`) and answers (`train_a.json`: a list of `{"answer", "type",
"question_id"}`), joined by `question_id`. A video (`video_name`, the YouTube id, with or
without `v_`) is one sample covering the whole local file in `--video-dir` (the files
give no duration, so a video is not fetched). ActivityNet-QA has no subtitles: the
sample's one clip spans the video with empty text, and its questions ride in the shard
json's `qa` as `{"qid", "question", "answers": null, "label": null, "answer", "type"}`.
A sample's split is the word `train`/`val`/`test` in its questions file's name."""
from __future__ import annotations

import math
from collections import defaultdict

from lfvila_data.inputs import InputError
from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.activitynet import youtube_id
from lfvila_data.sources.benchmark import (
    AnnotatedVideo,
    BenchmarkFormat,
    load_json,
    metadata_failure,
    qa_split,
    unsafe_id,
)

WHOLE_VIDEO = TimedText("", 0.0, math.inf)  # clamped to the local file's end when planned


def _text(x: object) -> str:
    return " ".join(x.split()) if isinstance(x, str) else ""


def read_activitynet_qa(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video with answered questions, its questions in file order."""
    questions: list[tuple[str, dict]] = []  # (split, question entry)
    answers: dict[str, dict] = {}
    failures: list[Failure] = []
    for path in paths:
        data = load_json(path)
        if not isinstance(data, list):
            raise InputError(f"annotation file {path!r} is not an ActivityNet-QA list of questions or answers")
        for i, entry in enumerate(data):
            if isinstance(entry, dict) and "question" in entry:
                questions.append((qa_split(path), entry))
            elif isinstance(entry, dict) and "answer" in entry:
                answers.setdefault(str(entry.get("question_id")), entry)
            else:
                failures.append(metadata_failure(None, FailureCode.BAD_LINE, f"entry {i + 1} of {path} is neither "
                                                 "a question nor an answer"))
    by_video: dict[str, list[dict]] = defaultdict(list)
    splits: dict[str, str] = {}
    for split, q in questions:
        vid, qid = q.get("video_name"), str(q.get("question_id"))
        if not is_safe_video_id(vid):
            failures.append(unsafe_id(vid))
            continue
        answer = _text((answers.get(qid) or {}).get("answer"))
        if not _text(q.get("question")) or not answer:
            failures.append(metadata_failure(vid, FailureCode.BAD_LINE, f"question {qid[:40]} has no question "
                                             "text or no answer; dropped"))
            continue
        by_video[vid].append({"qid": qid, "question": _text(q["question"]), "answers": None, "label": None,
                              "answer": answer, "type": answers[qid].get("type")})
        splits.setdefault(vid, split)
    return [AnnotatedVideo(vid, None, (WHOLE_VIDEO,), splits[vid], None, tuple(qs))
            for vid, qs in by_video.items()], failures


ACTIVITYNET_QA = BenchmarkFormat("activitynet-qa", read_activitynet_qa, youtube_id)
