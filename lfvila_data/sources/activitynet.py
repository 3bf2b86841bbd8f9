"""`--source activitynet`: ActivityNet Captions (`train.json`, `val_1.json`, `val_2.json`)
as a paragraph-to-video retrieval benchmark; planning is `sources.benchmark`'s.

An annotation file is one JSON object keyed by video id (`v_` + the 11-character YouTube
id), each entry `{"duration": s, "timestamps": [[start, end], ...], "sentences": [...]}`.
One video is one sample covering the whole video (0 to its duration, or to the local
file's container duration when that is shorter); its clips are the annotated segments
with their sentences, in time order. Unlike pretraining clips, segments may overlap:
they describe events, not a partition of the video.

A segment is kept, clamped or made a ledger row (stage `metadata`), never a crash:
- an empty sentence: `no_text`; a span that is not two numbers with 0 <= start < end:
  `bad_span`; a segment starting at or after the video's end: `segment_outside_video`;
- a segment that only ends past the video's end is clamped to it (ActivityNet's
  timestamps often run a little past `duration`).

The collaborative-experts split files the paper used (`train_list.txt`, `val_1_list.txt`:
one video id per line, with or without `v_`) select the videos; the split of a sample is
the split file's name (`val_1_list.txt` -> `val1`, or `NAME=FILE`), else the annotation
file's (`val_1.json` -> `val1`)."""
from __future__ import annotations

from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    YOUTUBE_URL,
    AnnotatedVideo,
    BenchmarkFormat,
    metadata_failure,
    number,
    plan_video,
    read_keyed,
    split_name,
    unsafe_id,
)

__all__ = ["ACTIVITYNET", "parse_entry", "plan_video", "read_annotations", "split_name",
           "youtube_id"]


def youtube_id(video_id: str) -> str:
    """ActivityNet's `v_QOlSCBRmfWY` is YouTube's `QOlSCBRmfWY`."""
    return video_id[2:] if video_id.startswith("v_") and len(video_id) > 2 else video_id


def parse_entry(vid: str, entry: object, split: str) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One video's annotation, or the ledger row saying why it cannot be used."""
    if not is_safe_video_id(vid):
        return None, [unsafe_id(vid)]
    if not isinstance(entry, dict):
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, "the annotation is not a JSON object")]
    duration, stamps, sentences = number(entry.get("duration")), entry.get("timestamps"), entry.get("sentences")
    if duration is None or duration <= 0:
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, f"duration {entry.get('duration')!r} "
                                       "is not a positive number of seconds")]
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, "timestamps and sentences must be lists "
                                       "of the same length")]
    segments, failures = [], []
    for i, (span, text) in enumerate(zip(stamps, sentences)):
        where = f"segment {i + 1}"
        if not isinstance(text, str) or not text.strip():
            failures.append(metadata_failure(vid, FailureCode.NO_TEXT, f"{where} has an empty sentence; dropped"))
            continue
        a, b = (number(span[0]), number(span[1])) if isinstance(span, list) and len(span) == 2 else (None, None)
        if a is None or b is None or a < 0 or b <= a:
            failures.append(metadata_failure(vid, FailureCode.BAD_SPAN, f"{where} span {span!r} is not "
                                             "[start, end] with 0 <= start < end; dropped"))
            continue
        segments.append(TimedText(text.strip(), a, b))
    return AnnotatedVideo(vid, duration, tuple(segments), split, YOUTUBE_URL.format(youtube_id(vid))), failures


def read_annotations(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video of the annotation files (a video in two files: the first is used)."""
    return read_keyed(paths, parse_entry, "video id")


ACTIVITYNET = BenchmarkFormat("activitynet", read_annotations, youtube_id)

