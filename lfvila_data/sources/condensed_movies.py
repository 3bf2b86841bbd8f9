"""`--source condensed-movies`: Condensed Movies (its `metadata/descriptions.csv`, and
`metadata/durations.csv`) as a paragraph-to-video retrieval benchmark; planning is
`sources.benchmark`'s.

`descriptions.csv` is a CSV with a header, a row per YouTube clip of a film: `videoid` (the
YouTube id), `imdbid` and `description` (one sentence or a few about the whole clip), as
the release's own loader reads it. The clip's duration in seconds comes from a `duration`
column when the file has one, else from `durations.csv` (`videoid,duration`, as the
release ships it), else from the local file. As in the paper, a video's paragraph is its
one description: the sample has one clip, 0 to the duration. Videos are fetched by YouTube
id, or read from `--video-dir` files named by it. Without a split file every sample's split
is `all`."""
from __future__ import annotations

import csv
import math

import fsspec

from lfvila_data.inputs import InputError
from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    YOUTUBE_URL,
    AnnotatedVideo,
    BenchmarkFormat,
    first_annotation,
    metadata_failure,
    unsafe_id,
)

COLUMNS = ("videoid", "description")
DURATIONS = ("videoid", "duration")  # durations.csv


def _seconds(value: object) -> float | None:
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if 0 < seconds < math.inf else None


def parse_row(row: dict, where: str, durations: dict[str, str] | None = None) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One clip's video, or the row saying why it cannot be used; its duration is the row's,
    else `durations`' (durations.csv), else unknown (the local file's end)."""
    vid = (row.get("videoid") or "").strip()
    if not is_safe_video_id(vid):
        return None, [unsafe_id(vid or where)]
    given = row.get("duration") if (row.get("duration") or "").strip() else (durations or {}).get(vid)
    duration = _seconds(given)
    if given is not None and duration is None:
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, f"{where}: duration {given!r} "
                                       "is not a positive number of seconds")]
    text = " ".join((row.get("description") or "").split())
    if not text:
        return None, [metadata_failure(vid, FailureCode.NO_TEXT, f"{where} has no description")]
    return AnnotatedVideo(vid, duration, (TimedText(text, 0.0, duration or math.inf),), "all",
                          YOUTUBE_URL.format(vid)), []


def _rows(path: str) -> tuple[list[str], list[dict]]:
    with fsspec.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def read_condensed_movies(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every clip of the description files, with durations.csv's durations (a video
    described twice: the first is used)."""
    files = [(path, *_rows(path)) for path in paths]
    durations: dict[str, str] = {}
    for path, header, rows in files:
        if not set(COLUMNS) <= set(header) and set(DURATIONS) <= set(header):
            for row in rows:
                durations.setdefault((row.get("videoid") or "").strip(), row.get("duration"))
    found, failures = [], []
    for path, header, rows in files:
        if set(COLUMNS) <= set(header):
            for i, row in enumerate(rows):
                video, fails = parse_row(row, f"row {i + 1} of {path}", durations)
                failures += fails
                if video is not None:
                    found.append((path, video))
        elif not set(DURATIONS) <= set(header):
            raise InputError(f"annotation file {path!r} is not Condensed Movies' descriptions.csv "
                             f"(a header with {', '.join(COLUMNS)}) or durations.csv ({', '.join(DURATIONS)})")
    videos, dupes = first_annotation(found)
    return videos, failures + dupes


CONDENSED_MOVIES = BenchmarkFormat("condensed-movies", read_condensed_movies)
