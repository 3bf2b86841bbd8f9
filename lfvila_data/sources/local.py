"""`--source local`: video files on disk with optional sidecar subtitles
(`name.vtt`, `name.srt`, `name.<lang>.vtt`); `text_stage` turns them into the plan."""
from __future__ import annotations

import hashlib
import os
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
    return one_path_per_file(found)


def one_path_per_file(paths: set[Path]) -> list[Path]:
    """The paths as given, made absolute but with symlinks kept (a link's sidecars sit
    beside the link), and one path per file: a file reached by two paths is one video,
    so it cannot land in both splits. Of two paths, the one with sidecars beside it wins,
    then the first in sorted order."""
    by_file: dict[Path, list[Path]] = {}
    for p in sorted(Path(os.path.abspath(p)) for p in paths):
        by_file.setdefault(p.resolve(), []).append(p)
    return sorted(group[0] if len(group) == 1 else min(group, key=lambda p: not _has_sidecar(p))
                  for group in by_file.values())


def _has_sidecar(video: Path) -> bool:
    return any(q.is_file() and q.suffix.lower() in SUB_EXTS and q.name.startswith(f"{video.stem}.")
               for q in video.parent.iterdir())


def find_subtitles(video: Path, langs: list[str]) -> tuple[Path, str | None] | None:
    """The sidecar subtitle file beside the video's path as given (for a symlink: beside
    the link, where the user put them), else beside the file a symlink points to (the
    subtitles that came with that file); in each folder the first wanted language, then
    one without a language."""
    found = _sidecar_beside(video, langs)
    target = video.resolve()
    if found is None and target != video:
        found = _sidecar_beside(target, langs)
    return found


def _sidecar_beside(video: Path, langs: list[str]) -> tuple[Path, str | None] | None:
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
