"""`--source violin`: VIOLIN (video-and-language inference: is a statement entailed by
a clip and its subtitles?) to QA shards; planning is `sources.benchmark`'s.

`violin_annotation.json` is one JSON object keyed by clip id, each `{"file", "split",
"sub": [[text, start, end], ...], "statement": [[true statement, false statement], ...],
...}`. A video is a clip (`file`, characters outside [A-Za-z0-9_-] made `_`), read from
`--video-dir` (TV-show clips cannot be fetched). Its one sample's clips are its subtitle
lines; each statement pair gives two `qa` items, the true statement with `label` 1 and
the false one with `label` 0. A sample's split is the entry's `split`."""
from __future__ import annotations

from lfvila_data.records import Failure, FailureCode, is_safe_video_id
from lfvila_data.sources.benchmark import (
    AnnotatedVideo,
    BenchmarkFormat,
    line_fields,
    metadata_failure,
    read_keyed,
    safe_id,
    timed_text,
    unsafe_id,
)


def statements(vid: str, pairs: object) -> tuple[list[dict], list[Failure]]:
    """Each [true, false] statement pair as two `qa` items, or the row saying why not."""
    items, failures = [], []
    for i, pair in enumerate(pairs if isinstance(pairs, list) else []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) and s.strip() for s in pair)):
            failures.append(metadata_failure(vid, FailureCode.BAD_LINE, f"statement {i + 1} is not a pair of "
                                             "non-empty strings; dropped"))
            continue
        items += [{"qid": f"{vid}-{i + 1}-{name}", "question": " ".join(text.split()), "answers": None,
                   "label": label, "answer": None}
                  for text, name, label in ((pair[0], "true", 1), (pair[1], "false", 0))]
    return items, failures


def parse_clip(key: str, entry: object, default_split: str) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One clip's subtitles and statements, or the row saying why not."""
    if not isinstance(entry, dict):
        return None, [metadata_failure(None, FailureCode.BAD_LINE, f"entry {key[:60]!r} is not a JSON object")]
    vid = safe_id(str(entry.get("file") or key))
    if not is_safe_video_id(vid):
        return None, [unsafe_id(entry.get("file") or key)]
    qa, failures = statements(vid, entry.get("statement"))
    if not qa:
        return None, failures + [metadata_failure(vid, FailureCode.BAD_LINE, "no usable statement; no sample")]
    lines = entry.get("sub") if isinstance(entry.get("sub"), list) else []
    segments = []
    for i, s in enumerate(lines):
        line, fails = timed_text(vid, f"subtitle {i + 1}", *line_fields(s))
        failures += fails
        if line is not None:
            segments.append(line)
    split = entry.get("split") if isinstance(entry.get("split"), str) and entry["split"] else default_split
    return AnnotatedVideo(vid, None, tuple(segments), split, None, tuple(qa)), failures


def read_violin(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every clip of the annotation files (a clip in two entries: the first is used)."""
    return read_keyed(paths, parse_clip, "clip id")


VIOLIN = BenchmarkFormat("violin", read_violin, safe_id)
