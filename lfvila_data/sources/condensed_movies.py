"""`--source condensed-movies`: Condensed Movies (its `metadata/descriptions.csv`) as a
paragraph-to-video retrieval benchmark; planning is `sources.benchmark`'s.

The file is a CSV with a header, a row per YouTube clip of a film: `videoid` (the YouTube
id), `imdbid`, `description` (one sentence or a few about the whole clip) and `duration`
in seconds. As in the paper, a video's paragraph is its one description: the sample has
one clip, 0 to the duration. Videos are fetched by YouTube id, or read from
`--video-dir` files named by it. Without a split file every sample's split is `all`."""
from __future__ import annotations

import csv

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

COLUMNS = ("videoid", "description", "duration")


def parse_row(row: dict, where: str) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One clip's video, or the row saying why it cannot be used."""
    vid = (row.get("videoid") or "").strip()
    if not is_safe_video_id(vid):
        return None, [unsafe_id(vid or where)]
    try:
        duration = float(row.get("duration") or "")
    except ValueError:
        duration = float("nan")
    if not duration > 0 or duration == float("inf"):
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, f"{where}: duration {row.get('duration')!r} "
                                       "is not a positive number of seconds")]
    text = " ".join((row.get("description") or "").split())
    if not text:
        return None, [metadata_failure(vid, FailureCode.NO_TEXT, f"{where} has no description")]
    return AnnotatedVideo(vid, duration, (TimedText(text, 0.0, duration),), "all", YOUTUBE_URL.format(vid)), []


def read_condensed_movies(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every clip of the description files (a video described twice: the first is used)."""
    found, failures = [], []
    for path in paths:
        with fsspec.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not set(COLUMNS) <= set(reader.fieldnames or ()):
                raise InputError(f"annotation file {path!r} is not Condensed Movies' descriptions.csv "
                                 f"(a header with {', '.join(COLUMNS)})")
            for i, row in enumerate(reader):
                video, fails = parse_row(row, f"row {i + 1} of {path}")
                failures += fails
                if video is not None:
                    found.append((path, video))
    videos, dupes = first_annotation(found)
    return videos, failures + dupes


CONDENSED_MOVIES = BenchmarkFormat("condensed-movies", read_condensed_movies)
