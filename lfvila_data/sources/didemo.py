"""`--source didemo`: DiDeMo (`train_data.json`, `val_data.json`, `test_data.json` of
LocalizingMoments) as a paragraph-to-video retrieval benchmark; planning is
`sources.benchmark`'s.

A file is a JSON list of moments, `{"video": "<flickr name>.<ext>", "description": ...,
"times": [[s, e], ...], "dl_link": ..., ...}`: `times` holds each annotator's span in
indices of the video's 5-second segments (0-5, both ends inclusive). A moment's span is
the one most annotators chose (ties: the first listed), `[5 s, 5 (e + 1)]` in seconds;
annotators' spans that are not two integers with 0 <= s <= e <= 5 are not counted. A
video's moments, sorted by time, are its clips; the paragraph is their descriptions.

Video ids: Flickr names (`12090392@N02_13482799053_87ef417396.mov`) lose their extension
and have characters outside [A-Za-z0-9_-] replaced by `_`; a `--video-dir` file or a
split-file line is matched the same way (`12090392@N02_13482799053_87ef417396.mp4`).
The annotation has no duration: a sample ends at the local file's end, else at its last
moment's. Without `--video-dir` a video is fetched from its `dl_link` when it has one (the
released files' key, as the authors' download script reads it; their data README calls it
`download_link`, which is read too)."""
from __future__ import annotations

from collections import Counter, defaultdict

from lfvila_data.inputs import InputError
from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    AnnotatedVideo,
    BenchmarkFormat,
    first_annotation,
    load_json,
    metadata_failure,
    safe_id,
    split_name,
    unsafe_id,
)

SEGMENT_S = 5.0  # DiDeMo cuts every video into 5-second segments
LAST_SEGMENT = 5  # ... six of them: the annotated part of a video is its first 30 s


def didemo_id(name: str) -> str:
    """`12090392@N02_13482799053_87ef417396.mov` -> `12090392_N02_13482799053_87ef417396`."""
    return safe_id(name.split(".")[0])


def moment_span(times: object) -> tuple[float, float] | None:
    """The span most annotators chose, in seconds; None when no annotator's span is valid."""
    valid = [(s, e) for s, e in (t for t in times if isinstance(t, list) and len(t) == 2)
             if all(isinstance(x, int) and not isinstance(x, bool) for x in (s, e)) and 0 <= s <= e <= LAST_SEGMENT
             ] if isinstance(times, list) else []
    if not valid:
        return None
    s, e = Counter(valid).most_common(1)[0][0]
    return s * SEGMENT_S, (e + 1) * SEGMENT_S


def parse_moment(moment: object, where: str) -> tuple[str | None, TimedText | None, str | None, list[Failure]]:
    """(video id, the moment, its download link) of one entry, or the row saying why not."""
    if not isinstance(moment, dict) or not isinstance(moment.get("video"), str):
        return None, None, None, [metadata_failure(None, FailureCode.BAD_LINE, f"{where} is not an object "
                                                   "with a \"video\" name")]
    vid = didemo_id(moment["video"])
    if not is_safe_video_id(vid):
        return None, None, None, [unsafe_id(moment["video"])]
    link = moment.get("dl_link") or moment.get("download_link")  # the files' key; the data README's name
    link = link if isinstance(link, str) and link.startswith(("http://", "https://")) else None
    text = moment.get("description")
    if not isinstance(text, str) or not text.strip():
        return vid, None, link, [metadata_failure(vid, FailureCode.NO_TEXT, f"{where} has no description; dropped")]
    span = moment_span(moment.get("times"))
    if span is None:
        return vid, None, link, [metadata_failure(vid, FailureCode.BAD_SPAN, f"{where} times "
                                                  f"{str(moment.get('times'))[:80]} hold no [s, e] with "
                                                  f"0 <= s <= e <= {LAST_SEGMENT}; dropped")]
    return vid, TimedText(text.strip(), *span), link, []


def read_didemo(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video of the files, its moments gathered (a video in two files: the first)."""
    found, failures = [], []
    for path in paths:
        data = load_json(path)
        if not isinstance(data, list):
            raise InputError(f"annotation file {path!r} is not a JSON list of DiDeMo moments")
        moments: dict[str, list[TimedText]] = defaultdict(list)
        links: dict[str, str | None] = {}
        for i, entry in enumerate(data):
            vid, moment, link, fails = parse_moment(entry, f"moment {i + 1} of {path}")
            failures += fails
            if vid is not None:
                links[vid] = links.get(vid) or link
                if moment is not None:
                    moments[vid].append(moment)
        found += [(path, AnnotatedVideo(vid, None, tuple(moments[vid]), split_name(path), links[vid]))
                  for vid in links]
    videos, dupes = first_annotation(found)
    return videos, failures + dupes


DIDEMO = BenchmarkFormat("didemo", read_didemo, didemo_id)

