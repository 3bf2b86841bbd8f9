"""`--source how2qa`: How2QA (multiple-choice video QA with subtitles, as HERO/VALUE
distribute it) to QA shards; planning is `sources.benchmark`'s.

Two kinds of JSON-lines files, told apart by their lines, both passed as `--annotations`:
questions (`how2qa_train.jsonl`, `how2qa_val.jsonl`: `{"vid_name", "qid", "q", "a0"-"a3",
"answer_idx", "ts": "start-end"}`) and subtitles (`{"vid_name", "sub": [{"text", "start",
"end"}, ...]}`). A video is a How2QA clip (`vid_name`, a 60-s segment of a YouTube video,
times relative to it), read from `--video-dir` (files named by `vid_name`, characters
outside [A-Za-z0-9_-] made `_`). Its one sample's clips are its subtitle lines; its
questions go to the shard json's `qa`: `{"qid", "question", "answers", "label",
"answer", "span"}`. A sample's split is its questions file's (`how2qa_val.jsonl` -> `val`)."""
from __future__ import annotations

import re
from collections import defaultdict

from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    AnnotatedVideo,
    BenchmarkFormat,
    line_fields,
    metadata_failure,
    qa_split,
    read_jsonl,
    safe_id,
    timed_text,
    unsafe_id,
)

CHOICES = 4  # a0-a3


def parse_question(line: dict, vid: str) -> tuple[dict | None, list[Failure]]:
    """One question as the shard json's `qa` item, or the row saying why not."""
    answers, label, q = [line.get(f"a{i}") for i in range(CHOICES)], line.get("answer_idx"), line.get("q")
    if not isinstance(q, str) or not q.strip() or not all(isinstance(a, str) and a.strip() for a in answers) \
            or not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < CHOICES:
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, f"question {str(line.get('qid'))[:40]} needs q, "
                                       f"a0-a{CHOICES - 1} and answer_idx 0-{CHOICES - 1}; dropped")]
    ts = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(line.get("ts") or ""))]
    answers = [" ".join(a.split()) for a in answers]
    return {"qid": str(line.get("qid")), "question": " ".join(q.split()), "answers": answers, "label": label,
            "answer": answers[label], "span": ts if len(ts) == 2 and ts[0] <= ts[1] else None}, []


def read_how2qa(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video with questions, its subtitle lines as clips."""
    questions: dict[str, list[dict]] = defaultdict(list)
    subs: dict[str, list[TimedText]] = {}
    splits: dict[str, str] = {}
    failures: list[Failure] = []
    for path in paths:
        for n, line in read_jsonl(path):
            name = line.get("vid_name") if isinstance(line, dict) else None
            if not isinstance(name, str) or ("sub" not in line and "q" not in line):
                failures.append(metadata_failure(None, FailureCode.BAD_LINE, f"line {n} of {path} is not a "
                                                 "How2QA question or subtitle line with a vid_name"))
                continue
            vid = safe_id(name)
            if not is_safe_video_id(vid):
                failures.append(unsafe_id(name))
            elif "sub" in line:
                lines = line["sub"] if isinstance(line["sub"], list) else []
                parsed = [timed_text(vid, f"subtitle {i + 1}", *line_fields(s))
                          for i, s in enumerate(lines)]
                failures += [f for _, fails in parsed for f in fails]
                subs.setdefault(vid, [t for t, _ in parsed if t is not None])
            else:
                item, fails = parse_question(line, vid)
                failures += fails
                if item is not None:
                    questions[vid].append(item)
                    splits.setdefault(vid, qa_split(path))
    return [AnnotatedVideo(vid, None, tuple(subs.get(vid, ())), splits[vid], None, tuple(qs))
            for vid, qs in questions.items()], failures


HOW2QA = BenchmarkFormat("how2qa", read_how2qa, safe_id)
