"""`--source activitynet`: ActivityNet Captions (`train.json`, `val_1.json`, `val_2.json`)
as a paragraph-to-video retrieval benchmark, in the shape the other benchmark sources
(DiDeMo, QuerYD, Condensed Movies) copy.

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

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec

from lfvila_data.inputs import InputError, expand_paths
from lfvila_data.media.cut import media_duration
from lfvila_data.plan.join import PlanConfig, PlanSummary, _input_listing, write_plan
from lfvila_data.records import (
    Clip,
    Failure,
    FailureCode,
    PlannedSample,
    Stage,
    TimedText,
    is_safe_video_id,
    sample_key,
    words_of,
)
from lfvila_data.sources.local import VIDEO_EXTS

TASK = "retrieval"  # the shard json's `task` of every benchmark sample
TEXT_SOURCE = "annotations"
YOUTUBE_URL = "https://www.youtube.com/watch?v={}"


@dataclass(frozen=True)
class AnnotatedVideo:
    """One entry of an annotation file: its segments as annotated, in file order."""

    video_id: str
    duration: float
    segments: tuple[TimedText, ...]
    split: str


def youtube_id(video_id: str) -> str:
    """ActivityNet's `v_QOlSCBRmfWY` is YouTube's `QOlSCBRmfWY`."""
    return video_id[2:] if video_id.startswith("v_") and len(video_id) > 2 else video_id


def split_name(path: str) -> str:
    """A split's name from its file: `val_1_list.txt` and `val_1.json` -> `val1`."""
    stem = Path(path).name.split(".")[0].lower()
    stem = re.sub(r"[_-]?list$", "", stem)
    return re.sub(r"[^a-z0-9]", "", stem) or "all"


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _metadata_failure(vid: str | None, code: FailureCode, reason: str, clip_id: str | None = None) -> Failure:
    return Failure(vid, clip_id, Stage.METADATA.value, code, reason, True)


def parse_entry(vid: str, entry: object, split: str) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One video's annotation, or the ledger row saying why it cannot be used."""
    if not is_safe_video_id(vid):
        return None, [_metadata_failure(None, FailureCode.UNSAFE_ID, f"video id {vid[:80]!r} is not "
                                        "[A-Za-z0-9_-]{1,128}")]
    if not isinstance(entry, dict):
        return None, [_metadata_failure(vid, FailureCode.BAD_LINE, "the annotation is not a JSON object")]
    duration, stamps, sentences = _number(entry.get("duration")), entry.get("timestamps"), entry.get("sentences")
    if duration is None or duration <= 0:
        return None, [_metadata_failure(vid, FailureCode.BAD_LINE, f"duration {entry.get('duration')!r} "
                                        "is not a positive number of seconds")]
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
        return None, [_metadata_failure(vid, FailureCode.BAD_LINE, "timestamps and sentences must be lists "
                                        "of the same length")]
    segments, failures = [], []
    for i, (span, text) in enumerate(zip(stamps, sentences)):
        where = f"segment {i + 1}"
        if not isinstance(text, str) or not text.strip():
            failures.append(_metadata_failure(vid, FailureCode.NO_TEXT, f"{where} has an empty sentence; dropped"))
            continue
        a, b = (_number(span[0]), _number(span[1])) if isinstance(span, list) and len(span) == 2 else (None, None)
        if a is None or b is None or a < 0 or b <= a:
            failures.append(_metadata_failure(vid, FailureCode.BAD_SPAN, f"{where} span {span!r} is not "
                                              "[start, end] with 0 <= start < end; dropped"))
            continue
        segments.append(TimedText(text.strip(), a, b))
    return AnnotatedVideo(vid, duration, tuple(segments), split), failures


def read_annotations(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video of the annotation files (a video in two files: the first is used)."""
    videos: dict[str, AnnotatedVideo] = {}
    failures: list[Failure] = []
    for path in paths:
        with fsspec.open(path, "rb") as f:
            try:
                data = json.loads(f.read())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"annotation file {path!r} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"annotation file {path!r} is not a JSON object keyed by video id")
        for vid, entry in data.items():
            video, fails = parse_entry(vid, entry, split_name(path))
            failures += fails
            if video is None:
                continue
            if vid in videos:
                failures.append(_metadata_failure(vid, FailureCode.DUPLICATE, f"annotated again in {path}; "
                                                  "the first annotation is used"))
                continue
            videos[vid] = video
    return list(videos.values()), failures


def read_split_files(specs: list[str]) -> dict[str, str]:
    """YouTube id -> split name, from `[NAME=]FILE` split files (one video id a line)."""
    wanted: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        for file in expand_paths([path]):
            with fsspec.open(file, "rt", encoding="utf-8") as f:
                for line in f:
                    vid = line.strip()
                    if vid and not vid.startswith("#"):
                        wanted.setdefault(youtube_id(vid), name or split_name(file))
    return wanted


def index_video_dir(video_dir: str) -> dict[str, Path]:
    """YouTube id -> file, for every video file under the folder named by its video id
    (with or without `v_`, any common container)."""
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"--video-dir {video_dir!r} is not a directory")
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTS and p.is_file():
            found.setdefault(youtube_id(p.stem), p)
    return found


def plan_video(video: AnnotatedVideo, url: str, end: float) -> tuple[PlannedSample | None, list[Failure]]:
    """The video's one sample: 0 to `end`, its segments in time order as clips."""
    failures, clips = [], []
    for s in sorted(video.segments, key=lambda s: (s.start, s.end)):
        if s.start >= end:
            failures.append(_metadata_failure(video.video_id, FailureCode.SEGMENT_OUTSIDE_VIDEO,
                                              f"segment {s.start:.3f}-{s.end:.3f} s starts at or after the "
                                              f"end of the video at {end:.3f} s; dropped"))
            continue
        k = len(clips) + 1
        clips.append(Clip(f"{video.video_id}.{k}.mp4", k, s.start, min(s.end, end), s.text))
    if not clips:
        return None, failures + [_metadata_failure(video.video_id, FailureCode.NO_TEXT,
                                                   "no usable annotated segment; no sample")]
    return PlannedSample(sample_key(video.video_id, 1, len(clips)), video.video_id, url, 0.0, end,
                         tuple(clips), text_source=TEXT_SOURCE, split=video.split), failures


def plan_activitynet(annotations: list[str], out_dir: str, plan: PlanConfig, *, video_dir: str | None = None,
                     split_files: list[str] = ()) -> PlanSummary:
    """Read, select and plan every annotated video; written as the plan fetch and cut read."""
    paths = expand_paths(annotations)
    videos, failures = read_annotations(paths)
    wanted = read_split_files(list(split_files)) if split_files else None
    if wanted is not None:
        annotated = {youtube_id(v.video_id) for v in videos}
        failures += [_metadata_failure(yid if is_safe_video_id(yid) else None, FailureCode.NOT_FOUND, f"video {yid!r} of split {split!r} is in "
                                       "no annotation file") for yid, split in sorted(wanted.items())
                     if yid not in annotated]
        videos = [AnnotatedVideo(v.video_id, v.duration, v.segments, wanted[youtube_id(v.video_id)])
                  for v in videos if youtube_id(v.video_id) in wanted]
    local = index_video_dir(video_dir) if video_dir else None
    samples, counts = [], Counter(videos=len(videos))
    for v in videos:
        counts["clips_total"] += len(v.segments)
        end, url = v.duration, YOUTUBE_URL.format(youtube_id(v.video_id))
        if local is not None:
            path = local.get(youtube_id(v.video_id))
            if path is None:
                failures.append(Failure(v.video_id, None, Stage.DOWNLOAD.value, FailureCode.NOT_FOUND,
                                        f"no video file named {v.video_id} or {youtube_id(v.video_id)} "
                                        f"in --video-dir {video_dir}", True))
                continue
            url = str(path.resolve())
            end = min(end, media_duration(path) or end)
        sample, fails = plan_video(v, url, end)
        failures += fails
        if sample is not None:
            samples.append(sample)
            words = sum(words_of(c.text) for c in sample.clips)
            counts.update(words_parsed=words, words_in_samples=words)
    inputs = {"activitynet": _input_listing(paths), "splits": sorted(set(wanted.values())) if wanted else None,
              "split_files": list(split_files),
              "video_dir": sorted([k, str(p), p.stat().st_size] for k, p in local.items()) if local else None}
    return write_plan(out_dir, samples, failures, plan, inputs, counts)
