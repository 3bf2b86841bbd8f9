"""`--source local`: video files on disk with optional sidecar subtitles
(`name.vtt`, `name.srt`, `name.<lang>.vtt`); `text_stage` turns them into the plan."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lfvila_data.inputs import InputError, expand_paths

VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"}
SUB_EXTS = (".vtt", ".srt")


def find_videos(inputs: list[str]) -> list[Path]:
    """Video files named by the inputs: files, globs, or directories (searched deeply)."""
    found: set[Path] = set()
    for pattern in inputs:
        path = Path(pattern)
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
            continue
        for p in expand_paths([pattern]):
            if Path(p).suffix.lower() in VIDEO_EXTS:
                found.add(Path(p))
    if not found:
        raise InputError(f"no video files ({', '.join(sorted(VIDEO_EXTS))}) in {inputs}")
    return sorted(p.resolve() for p in found)


def find_subtitles(video: Path, langs: list[str]) -> tuple[Path, str | None] | None:
    """The sidecar subtitle file: the first wanted language, then one without a language."""
    for lang in langs:
        for ext in SUB_EXTS:
            p = video.with_name(f"{video.stem}.{lang}{ext}")
            if p.is_file():
                return p, lang
    for ext in SUB_EXTS:
        p = video.with_suffix(ext)
        if p.is_file():
            return p, None
    return None


def local_video_id(path: Path) -> str:
    """A safe, stable id: the file name's safe characters plus a hash of the full path
    (two files with the same name in different folders stay apart)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:60] or "video"
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
