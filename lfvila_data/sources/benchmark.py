"""What the benchmark sources (`--source activitynet`, `didemo`, `queryd`,
`condensed-movies`) share: a dataset's parser turns its annotation files into
`AnnotatedVideo`s (a duration when the file has one, the annotated segments with their
sentences, a split, where to fetch the video); everything after that is common.

One video is one sample covering the whole video (0 to the annotated duration, or to the
local file's container duration when that is shorter or the file has none); its clips are
the annotated segments with their sentences, in time order. Segments may overlap: they
describe events, not a partition of the video. A segment that starts at or after the end
of the video is a `segment_outside_video` ledger row; one that only ends past it is
clamped to it.

Split files (`[NAME=]FILE`, one video id a line, as the collaborative-experts splits the
paper used) select the videos; a sample's split is the split file's name (`NAME`, or
`val_1_list.txt` -> `val1`), else what the parser gave it (its annotation file's name)."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
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

TASK = "retrieval"  # the shard json's `task` of every benchmark retrieval sample
TEXT_SOURCE = "annotations"
YOUTUBE_URL = "https://www.youtube.com/watch?v={}"


@dataclass(frozen=True)
class AnnotatedVideo:
    """One video of an annotation file: its segments as annotated, in file order."""

    video_id: str
    duration: float | None  # None: the file has none (the local copy's, else the last segment's end)
    segments: tuple[TimedText, ...]
    split: str
    url: str | None = None  # where the download stage fetches it; None: only a --video-dir copy
    qa: tuple[dict, ...] = ()  # QA sources: its questions, as the shard json's `qa` lists them
    # a segment of a longer video (How2QA's 60-s clips): the whole video's id (a YouTube id,
    # what --video-dir files and --video-base-url name it by) and where the segment starts in it;
    # `duration` and the segments' times are then the segment's own
    source_id: str | None = None
    offset: float = 0.0


def _same(video_id: str) -> str:
    return video_id


@dataclass(frozen=True)
class BenchmarkFormat:
    """A dataset's parser and how its video files and split lines name a video."""

    name: str
    read: Callable[[list[str]], tuple[list[AnnotatedVideo], list[Failure]]]
    file_id: Callable[[str], str] = _same  # a file stem or split line -> the id videos are matched by


def split_name(path: str) -> str:
    """A split's name from its file: `val_1_list.txt`, `val_1.json` -> `val1`; `train_data.json` -> `train`."""
    stem = Path(path).name.split(".")[0].lower()
    stem = re.sub(r"[_-]?(list|data)$", "", stem)
    return re.sub(r"[^a-z0-9]", "", stem) or "all"


def safe_id(name: str) -> str:
    """A dataset's own name made a video id: characters outside [A-Za-z0-9_-] become `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def qa_split(path: str) -> str:
    """`how2qa_train.jsonl` -> `train`: the split word in a QA file's name, else split_name's."""
    found = re.findall(r"(?<![a-z])(train|val|valid|test)(?![a-z])", Path(path).name.lower())
    return found[-1] if found else split_name(path)


def number(x: object) -> float | None:
    """A finite number read from an annotation (bools are not numbers), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def metadata_failure(vid: str | None, code: FailureCode, reason: str, clip_id: str | None = None) -> Failure:
    """A ledger row of the annotation stage (a rerun cannot fix the file)."""
    return Failure(vid, clip_id, Stage.METADATA.value, code, reason, True)


def unsafe_id(vid: object) -> Failure:
    return metadata_failure(None, FailureCode.UNSAFE_ID, f"video id {str(vid)[:80]!r} is not [A-Za-z0-9_-]{{1,128}}")


def timed_text(vid: str, where: str, text: object, start: object, end: object) -> tuple[TimedText | None, list[Failure]]:
    """An annotated line and its span, or why it is dropped (`no_text`, `bad_span`)."""
    if not isinstance(text, str) or not text.strip():
        return None, [metadata_failure(vid, FailureCode.NO_TEXT, f"{where} is empty; dropped")]
    a, b = number(start), number(end)
    if a is None or b is None or a < 0 or b <= a:
        return None, [metadata_failure(vid, FailureCode.BAD_SPAN, f"{where} span {str(start)[:20]}-{str(end)[:20]} "
                                       "is not [start, end] with 0 <= start < end; dropped")]
    return TimedText(" ".join(text.split()), a, b), []


def line_fields(s: object) -> tuple[object, object, object]:
    """A subtitle line's (text, start, end), from `{"text", "start", "end"}` or `[text, start, end]`."""
    if isinstance(s, dict):
        return s.get("text"), s.get("start"), s.get("end")
    return tuple(s) if isinstance(s, list) and len(s) == 3 else (None, None, None)


def read_jsonl(path: str) -> Iterable[tuple[int, object]]:
    """(line number, parsed line) of a JSON-lines file; a line that is not JSON is None."""
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError:
                    yield i, None


def load_json(path: str) -> object:
    """A whole annotation file as JSON, or one line saying why it is not."""
    with fsspec.open(path, "rb") as f:
        try:
            return json.loads(f.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"annotation file {path!r} is not JSON: {e}") from None


def first_annotation(videos: Iterable[tuple[str, AnnotatedVideo]]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """(file, video) pairs -> each video once: a video annotated again is a `duplicate` row."""
    kept: dict[str, AnnotatedVideo] = {}
    failures = []
    for path, video in videos:
        if video.video_id in kept:
            failures.append(metadata_failure(video.video_id, FailureCode.DUPLICATE,
                                             f"annotated again in {path}; the first annotation is used"))
        else:
            kept[video.video_id] = video
    return list(kept.values()), failures


def read_keyed(paths: list[str], parse: Callable[[str, object, str], tuple[AnnotatedVideo | None, list[Failure]]],
               what: str) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """The videos of JSON objects keyed by `what` (ActivityNet's by video id, VIOLIN's by
    clip id), each entry parsed with its file's split name; a video again: `duplicate`."""
    found, failures = [], []
    for path in paths:
        data = load_json(path)
        if not isinstance(data, dict):
            raise InputError(f"annotation file {path!r} is not a JSON object keyed by {what}")
        for key, entry in data.items():
            video, fails = parse(str(key), entry, split_name(path))
            failures += fails
            if video is not None:
                found.append((path, video))
    videos, dupes = first_annotation(found)
    return videos, failures + dupes


def read_split_files(specs: list[str], file_id: Callable[[str], str] = _same) -> dict[str, str]:
    """Video id (as `file_id` names it) -> split name, from `[NAME=]FILE` split files."""
    wanted: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        for file in expand_paths([path]):
            with fsspec.open(file, "rt", encoding="utf-8") as f:
                for line in f:
                    vid = line.strip()
                    if vid and not vid.startswith("#"):
                        wanted.setdefault(file_id(vid), name or split_name(file))
    return wanted


def index_video_dir(video_dir: str, file_id: Callable[[str], str] = _same) -> dict[str, Path]:
    """Video id -> file, for every video file under the folder (any common container),
    its id being `file_id` of the file's stem."""
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"--video-dir {video_dir!r} is not a directory")
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTS and p.is_file():
            found.setdefault(file_id(p.stem), p)
    return found


def plan_video(video: AnnotatedVideo, url: str, end: float,
               offset: float = 0.0) -> tuple[PlannedSample | None, list[Failure]]:
    """The video's one sample: `offset` to `end` in the source video, its segments (times
    relative to `offset`) in time order as clips in source time."""
    failures, clips = [], []
    for s in sorted(video.segments, key=lambda s: (s.start, s.end)):
        s = TimedText(s.text, s.start + offset, s.end + offset) if offset else s
        if s.start >= end:
            failures.append(metadata_failure(video.video_id, FailureCode.SEGMENT_OUTSIDE_VIDEO,
                                             f"segment {s.start:.3f}-{s.end:.3f} s starts at or after the "
                                             f"end of the video at {end:.3f} s; dropped"))
            continue
        k = len(clips) + 1
        clips.append(Clip(f"{video.video_id}.{k}.mp4", k, s.start, min(s.end, end), s.text))
    if not clips:
        return None, failures + [metadata_failure(video.video_id, FailureCode.NO_TEXT,
                                                  "no usable annotated segment; no sample")]
    return PlannedSample(sample_key(video.video_id, 1, len(clips)), video.video_id, url, offset, end,
                         tuple(clips), text_source=TEXT_SOURCE, split=video.split,
                         qa=json.dumps(list(video.qa), ensure_ascii=False) if video.qa else None), failures


def _select(videos: list[AnnotatedVideo], wanted: dict[str, str],
            file_id: Callable[[str], str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    annotated = {file_id(v.video_id) for v in videos}
    missing = [metadata_failure(vid if is_safe_video_id(vid) else None, FailureCode.NOT_FOUND,
                                f"video {vid!r} of split {split!r} is in no annotation file")
               for vid, split in sorted(wanted.items()) if vid not in annotated]
    return [replace(v, split=wanted[file_id(v.video_id)]) for v in videos if file_id(v.video_id) in wanted], missing


def mirror_url(base: str, video_id: str) -> str:
    """Where `--video-base-url` serves a video: `BASE/<id>.mp4` (a mirror of the YouTube videos)."""
    return f"{base.rstrip('/')}/{video_id}.mp4"


def plan_benchmark(fmt: BenchmarkFormat, annotations: list[str], out_dir: str, plan: PlanConfig, *,
                   video_dir: str | None = None, split_files: list[str] = (),
                   video_base_url: str | None = None) -> PlanSummary:
    """Read, select and plan every annotated video; written as the plan fetch and cut read.
    A segment of a longer video (`source_id`, `offset`) is cut from the whole video - a
    `--video-dir` file named by `source_id`, or fetched - and a `--video-dir` file named by
    the segment's own id is the segment itself. With both `--video-dir` and
    `--video-base-url`, a video missing from the folder is fetched from the mirror."""
    paths = expand_paths(annotations)
    videos, failures = fmt.read(paths)
    wanted = read_split_files(list(split_files), fmt.file_id) if split_files else None
    if wanted is not None:
        videos, missing = _select(videos, wanted, fmt.file_id)
        failures += missing
    local = index_video_dir(video_dir, fmt.file_id) if video_dir else None
    samples, counts = [], Counter(videos=len(videos))
    for v in videos:
        counts["clips_total"] += len(v.segments)
        end, url = v.duration or max((s.end for s in v.segments), default=0.0), v.url
        if url is not None and video_base_url:
            url = mirror_url(video_base_url, v.source_id or fmt.file_id(v.video_id))
        whole = local.get(v.source_id) if local is not None and v.source_id else None
        path = whole or (local.get(fmt.file_id(v.video_id)) if local is not None else None)
        offset = v.offset if whole is not None or path is None else 0.0
        if path is not None:
            url = str(path.resolve())
            found = media_duration(path)
            left = found - offset if found else None  # what the file holds from the segment's start
            end = 0.0 if left is not None and left <= 0 else \
                min(end, left) if v.duration and left else (left or end)
        elif url is None or (local is not None and not video_base_url):  # --video-dir, then the mirror
            names = " or ".join(dict.fromkeys(n for n in (v.source_id, v.video_id, fmt.file_id(v.video_id)) if n))
            failures.append(Failure(v.video_id, None, Stage.DOWNLOAD.value, FailureCode.NOT_FOUND,
                                    f"no video file named {names} in --video-dir {video_dir}" if local is not None
                                    else "the annotation gives no download link: pass --video-dir", True))
            continue
        if not math.isfinite(end):  # no duration anywhere: a local file ffprobe cannot time
            failures.append(Failure(v.video_id, None, Stage.PROBE.value, FailureCode.PROBE_FAILED,
                                    f"the duration of {url} cannot be read", True))
            continue
        sample, fails = plan_video(v, url, offset + end, offset)
        failures += fails
        if sample is not None:
            samples.append(sample)
            words = sum(words_of(c.text) for c in sample.clips)
            counts.update(words_parsed=words, words_in_samples=words)
    inputs = {fmt.name: _input_listing(paths), "splits": sorted(set(wanted.values())) if wanted else None,
              **({"video_base_url": video_base_url} if video_base_url else {}),
              "split_files": list(split_files),
              "video_dir": sorted([k, str(p), p.stat().st_size] for k, p in local.items()) if local else None}
    return write_plan(out_dir, samples, failures, plan, inputs, counts)
