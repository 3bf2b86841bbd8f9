"""`--source how2qa`: How2QA (multiple-choice video QA with subtitles, as HERO/VALUE
distribute it) to QA shards; planning is `sources.benchmark`'s.

Three kinds of files, all passed as `--annotations` (the VALUE release's, checked against
its README and the loaders that read it): questions (`how2qa_train_release.jsonl`,
`how2qa_val_release.jsonl`: JSON lines `{"vid_name", "qid", "q", "a0"-"a3", "answer_idx",
"ts": "start-end"}`), subtitles (`subtitles.jsonl`: `{"vid_name", "sub": [{"text",
"start", "end"}, ...]}`), both told apart by their lines, and `how2_vid_mapping.json`
(one JSON object, `vid_name -> "<YouTube id>_<start>_<end>"`: where the 60-s clip lies in
its YouTube video; the id may itself hold `_`). Times in the questions and subtitles are
the clip's own.

A video is a How2QA clip (`vid_name`, characters outside [A-Za-z0-9_-] made `_`). A clip
the mapping places is cut from its YouTube video - fetched by id (or from
`--video-base-url`), or a `--video-dir` file named by the YouTube id - from `start` to
`end`, only that section being downloaded; its subtitle lines move to source time, so the
shard's clip-relative times are the clip's own again. A clip the mapping lacks (VALUE could
not map some) is read from a `--video-dir` file named by `vid_name`, as is a mapped clip
whose own file is there and its YouTube video's is not. Its one sample's clips are its
subtitle lines; its questions go to the shard json's `qa`: `{"qid", "question",
"answers", "label", "answer", "span"}` (`span` in the clip's time). A sample's split is
its questions file's (`how2qa_val_release.jsonl` -> `val`). A mapping entry that is not
`<id>_<start>_<end>` with 0 <= start < end is a `bad_line` row, and its clip is looked for
in `--video-dir` only."""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from lfvila_data.inputs import InputError
from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    YOUTUBE_URL,
    AnnotatedVideo,
    BenchmarkFormat,
    line_fields,
    load_json,
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


def clip_segment(value: object) -> tuple[str, float, float] | None:
    """A `how2_vid_mapping.json` value `"<YouTube id>_<start>_<end>"` -> (id, start, end)
    in seconds, or None when it is not one."""
    parts = value.rsplit("_", 2) if isinstance(value, str) else []
    if len(parts) != 3 or not is_safe_video_id(parts[0]):
        return None
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        return None
    return (parts[0], start, end) if 0 <= start < end and math.isfinite(end) else None


def _placed(video: AnnotatedVideo, value: object) -> tuple[AnnotatedVideo, list[Failure]]:
    """The clip as a segment of its YouTube video, when the mapping places it."""
    if value is None:
        return video, []
    seg = clip_segment(value)
    if seg is None:
        return video, [metadata_failure(video.video_id, FailureCode.BAD_LINE, f"how2_vid_mapping value "
                                        f"{str(value)[:80]!r} is not <YouTube id>_<start>_<end>; the clip "
                                        "is looked for in --video-dir only")]
    yid, start, end = seg
    return AnnotatedVideo(video.video_id, end - start, video.segments, video.split, YOUTUBE_URL.format(yid),
                          video.qa, source_id=yid, offset=start), []


def read_how2qa(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video with questions, its subtitle lines as clips, placed by the mapping."""
    questions: dict[str, list[dict]] = defaultdict(list)
    subs: dict[str, list[TimedText]] = {}
    splits: dict[str, str] = {}
    mapping: dict[str, object] = {}
    failures: list[Failure] = []
    for path in paths:
        if Path(path).suffix.lower() == ".json":  # how2_vid_mapping.json: one object
            data = load_json(path)
            if not isinstance(data, dict):
                raise InputError(f"annotation file {path!r} is not How2QA's vid_name -> YouTube segment mapping")
            for name, value in data.items():
                mapping.setdefault(safe_id(str(name)), value)
            continue
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
    videos = []
    for vid, qs in questions.items():
        video, fails = _placed(AnnotatedVideo(vid, None, tuple(subs.get(vid, ())), splits[vid], None, tuple(qs)),
                               mapping.get(vid))
        videos.append(video)
        failures += fails
    return videos, failures


HOW2QA = BenchmarkFormat("how2qa", read_how2qa, safe_id)
