"""Reading HD-VILA-100M metadata: path expansion, byte-range splitting of big jsonl files,
and strict per-line parsers that turn every bad line or clip into a Failure row.

The parsers are pure (tested alone); the I/O helpers go through fsspec so the same code
reads local files and s3:// objects, one byte range at a time."""
from __future__ import annotations

import json
import math
import re
from urllib.parse import urlsplit

from lfvila_data.records import Clip, Failure, FailureCode, Stage, VideoMeta, is_safe_video_id, parse_clip_id

# ---------------------------------------------------------------------------------------
# spans


_SECONDS = re.compile(r"^[0-9]+(?:\.[0-9]*)?$")
_WHOLE = re.compile(r"^[0-9]+$")
_HMS = re.compile(r"^([0-9]+):([0-5][0-9]):([0-5][0-9](?:\.[0-9]*)?)$")  # the common case, fast


def parse_span(value: object) -> float:
    """Seconds from an HD-VILA span ("HH:MM:SS.mmm", "MM:SS.mmm", "SS.mmm" or a number),
    strict so that a corrupt span drops its clip instead of misplacing a cut."""
    if isinstance(value, bool):
        raise ValueError(f"span {value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _HMS.match(value)):
        return 3600 * int(m.group(1)) + 60 * int(m.group(2)) + float(m.group(3))
    elif isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) > 3 or not _SECONDS.match(parts[-1]):
            raise ValueError(f"span {value!r} is not HH:MM:SS.mmm")
        if any(not _WHOLE.match(p) for p in parts[:-1]):
            raise ValueError(f"span {value!r} is not HH:MM:SS.mmm")
        seconds = float(parts[-1])
        if len(parts) >= 2:
            minutes = int(parts[-2])
            if seconds >= 60 or (len(parts) == 3 and minutes >= 60):
                raise ValueError(f"span {value!r} has a field of 60 or more")
            seconds += 60 * minutes
        if len(parts) == 3:
            seconds += 3600 * int(parts[0])
    else:
        raise ValueError(f"span {value!r} is not a time")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"span {value!r} is not a non-negative finite time")
    return seconds


# ---------------------------------------------------------------------------------------
# line parsers


_OVERLAP_EPS = 1e-6  # spans are millisecond strings; this only absorbs float rounding


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _meta_failure(video_id: str | None, clip_id: str | None, code: FailureCode, reason: str) -> Failure:
    return Failure(video_id, clip_id, Stage.METADATA.value, code, reason)


def _load_object(line: str | bytes) -> tuple[dict | None, str | None]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return None, f"malformed JSON ({exc.__class__.__name__}: {exc}) in line {_short(line)}"
    if not isinstance(obj, dict):
        return None, f"line is not a JSON object: {_short(line)}"
    return obj, None


def _unpaired_surrogate(value: str) -> bool:
    """True for a string JSON can hold ("\\ud800") but UTF-8, and so Arrow, cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def url_is_allowed(url: str, *, allow_local_files: bool) -> bool:
    """http(s) URLs always; file:// and plain paths only when the user opted in, so a
    metadata file cannot make the downloader read local files by default."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[abc": an unbalanced IPv6 bracket
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.netloc)
    if not allow_local_files:
        return False
    if parts.scheme == "file":
        return bool(parts.path)
    return "://" not in url and bool(url.strip())


def parse_video_line(
    line: str | bytes, *, allow_local_files: bool
) -> tuple[VideoMeta | None, list[Failure]]:
    """Parse one url/span line; a bad line drops the video, a bad clip drops only that
    clip (which later breaks its run), and each drop is a Failure row saying why."""
    obj, error = _load_object(line)
    if obj is None:
        return None, [_meta_failure(None, None, FailureCode.BAD_LINE, error)]
    video_id = obj.get("video_id")
    if "video_id" not in obj or not isinstance(video_id, str):
        return None, [_meta_failure(None, None, FailureCode.BAD_LINE, f"missing or non-string 'video_id': {_short(video_id)}")]
    if not is_safe_video_id(video_id):
        return None, [_meta_failure(None, None, FailureCode.UNSAFE_ID, f"unsafe 'video_id' {_short(video_id)} "
                                                "(allowed: A-Z a-z 0-9 _ -, 1 to 128 chars)")]
    url = obj.get("url")
    if not isinstance(url, str) or _unpaired_surrogate(url):
        return None, [_meta_failure(video_id, None, FailureCode.BAD_LINE, f"missing or non-string 'url': {_short(url)}")]
    if not url_is_allowed(url, allow_local_files=allow_local_files):
        allowed = "http(s), file:// or a local path" if allow_local_files else "http(s)"
        return None, [_meta_failure(video_id, None, FailureCode.BAD_URL,
                                        f"'url' {_short(url)} is not {allowed}")]
    raw_clips = obj.get("clip")
    if not isinstance(raw_clips, list):
        return None, [_meta_failure(video_id, None, FailureCode.BAD_LINE, f"missing or non-list 'clip': {_short(raw_clips)}")]

    failures: list[Failure] = []
    by_k: dict[int, Clip] = {}
    for raw in raw_clips:
        clip, failure = _parse_clip(video_id, raw)
        if failure is None and clip.k in by_k:
            failure = _meta_failure(video_id, clip.clip_id, FailureCode.DUPLICATE,
                                    f"duplicate clip number k={clip.k}")
        if failure is not None:
            failures.append(failure)
        else:
            by_k[clip.k] = clip
    kept: list[Clip] = []
    for k in sorted(by_k):
        clip = by_k[k]
        if kept and clip.start < kept[-1].end - _OVERLAP_EPS:
            prev = kept[-1]
            failures.append(_meta_failure(
                video_id, clip.clip_id, FailureCode.OVERLAPPING_CLIP,
                f"clip starts at {clip.start:.3f}s, before the previous clip {prev.clip_id} "
                f"ends at {prev.end:.3f}s (out of order or overlapping)"))
            continue
        kept.append(clip)
    return VideoMeta(video_id, url, tuple(kept)), failures


def _parse_clip(video_id: str, raw: object) -> tuple[Clip | None, Failure | None]:
    if not isinstance(raw, dict):
        return None, _meta_failure(video_id, None, FailureCode.BAD_LINE, f"clip entry is not an object: {_short(raw)}")
    clip_id = raw.get("clip_id")
    parsed = parse_clip_id(clip_id)
    if parsed is None:
        return None, _meta_failure(video_id, None, FailureCode.BAD_CLIP_ID, f"'clip_id' {_short(clip_id)} is not "
                                                   "<video_id>.<k>.mp4 with k >= 1")
    if parsed[0] != video_id:
        return None, _meta_failure(video_id, clip_id, FailureCode.BAD_CLIP_ID, f"'clip_id' {clip_id!r} belongs to "
                                                      f"video {parsed[0]!r}, not {video_id!r}")
    span = raw.get("span")
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return None, _meta_failure(video_id, clip_id, FailureCode.BAD_SPAN, f"'span' {_short(span)} is not [start, end]")
    try:
        start, end = parse_span(span[0]), parse_span(span[1])
    except ValueError as exc:
        return None, _meta_failure(video_id, clip_id, FailureCode.BAD_SPAN, f"unparsable 'span': {exc}")
    if end <= start:
        return None, _meta_failure(video_id, clip_id, FailureCode.BAD_SPAN, f"'span' end {end:.3f}s is not after "
                                                      f"start {start:.3f}s")
    return Clip(clip_id, parsed[1], start, end), None


def parse_text_line(line: str | bytes) -> tuple[str, str] | Failure:
    """Parse one clip-text line into (clip_id, text); null text becomes "" so that the
    planner reports it once, as a clip without text."""
    obj, error = _load_object(line)
    if obj is None:
        return Failure(None, None, Stage.TEXT.value, FailureCode.BAD_LINE, error)
    clip_id = obj.get("clip_id")
    parsed = parse_clip_id(clip_id)
    if parsed is None:
        return Failure(None, None, Stage.TEXT.value, FailureCode.BAD_CLIP_ID,
                       f"'clip_id' {_short(clip_id)} is not <video_id>.<k>.mp4 with k >= 1")
    if "text" not in obj:
        return Failure(parsed[0], clip_id, Stage.TEXT.value, FailureCode.BAD_LINE, "missing field 'text'")
    text = obj["text"]
    if text is None:
        text = ""
    if not isinstance(text, str):
        return Failure(parsed[0], clip_id, Stage.TEXT.value, FailureCode.BAD_LINE,
                       f"'text' is not a string: {_short(text)}")
    if _unpaired_surrogate(text):
        return Failure(parsed[0], clip_id, Stage.TEXT.value, FailureCode.BAD_LINE,
                       f"'text' has an unpaired UTF-16 surrogate: {_short(text)}")
    # whitespace normalised once here, so clip texts, paragraphs and shard members agree
    return clip_id, " ".join(text.split())
