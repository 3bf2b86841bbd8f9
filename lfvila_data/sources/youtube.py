"""`--source youtube`: video URLs or ids from a list file; yt-dlp finds each video's
subtitles in the requested languages, human-made before automatic captions.

Reading the list and choosing a track are pure functions; `fetch_subtitles` is the thin
yt-dlp shell (one metadata request, then the subtitle file itself)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlparse

import fsspec

from lfvila_data.inputs import InputError, expand_paths
from lfvila_data.media.fetch import (
    FetchConfig,
    Fetcher,
    FetchError,
    _clean,
    _Log,
    guard_error,
    is_permanent,
    raise_verdict,
)
from lfvila_data.media.guard import ByteMeter, Guard, no_proxy_bypass
from lfvila_data.records import Failure, FailureCode, Stage, is_safe_video_id

_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_YOUTUBE_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com")
_ID_COLUMNS = ("url", "video_url", "webpage_url", "id", "video_id", "youtube_id")
# Formats we parse; YouTube also offers srv1-3/json3/ttml, which carry the same cues.
SUBTITLE_EXTS = ("vtt", "srt")
MAX_SUBTITLE_BYTES = 32 * 1024 * 1024
HUMAN, AUTO = "subtitles", "auto_captions"


@dataclass(frozen=True)
class VideoRef:
    """One line of the input list: the URL yt-dlp opens and the id our files use."""

    video_id: str
    url: str


@dataclass(frozen=True)
class SubtitleTrack:
    """The subtitle file chosen for a video."""

    lang: str   # as yt-dlp lists it: "en", "en-US", "en-orig"
    kind: str   # HUMAN or AUTO
    url: str
    ext: str


@dataclass(frozen=True)
class VideoText:
    """What `fetch_subtitles` learned about one video."""

    ref: VideoRef
    duration: float | None
    track: SubtitleTrack | None
    data: bytes | None
    available: tuple[str, ...]  # "subtitles:en", "auto_captions:de", ... for the ledger


def youtube_id(url: str) -> str | None:
    """The 11-character id of a YouTube watch/shorts/embed/youtu.be URL, else None."""
    u = urlparse(url)
    host = (u.hostname or "").lower()
    if not any(host == h or host.endswith("." + h) for h in _YOUTUBE_HOSTS):
        return None
    if host.endswith("youtu.be"):
        cand = u.path.strip("/").split("/")[0]
    elif u.path == "/watch":
        cand = (parse_qs(u.query).get("v") or [""])[0]
    else:
        parts = [p for p in u.path.split("/") if p]
        cand = parts[1] if len(parts) >= 2 and parts[0] in ("shorts", "embed", "live", "v") else ""
    return cand if _YOUTUBE_ID.match(cand) else None


def url_video_id(url: str) -> str:
    """A safe, stable id for a URL: the YouTube id when there is one, otherwise the last
    path element's safe characters plus a hash of the whole URL."""
    yid = youtube_id(url)
    if yid:
        return yid
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", PurePosixPath(urlparse(url).path).stem).strip("_")[:60]
    return f"{stem or 'video'}-{hashlib.sha1(url.encode()).hexdigest()[:10]}"


def parse_entry(entry: object) -> tuple[VideoRef | None, str | None]:
    """A list entry (URL or bare YouTube id) as a VideoRef, or why it is not one."""
    if not isinstance(entry, str) or not entry.strip():
        return None, f"empty or non-text entry {entry!r}"
    entry = entry.strip()
    if _YOUTUBE_ID.match(entry):
        return VideoRef(entry, f"https://www.youtube.com/watch?v={entry}"), None
    if urlparse(entry).scheme in ("http", "https") and urlparse(entry).hostname:
        vid = url_video_id(entry)
        assert is_safe_video_id(vid)
        return VideoRef(vid, entry), None
    return None, f"not an http(s) URL or an 11-character YouTube id: {entry[:120]!r}"


def _entries(path: str) -> list[tuple[str, object]]:
    """(where, entry) pairs of one list file, by extension: txt, csv, jsonl/json, parquet."""
    suffix = PurePosixPath(urlparse(path).path if "://" in path else path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f)
        col = next((c for c in _ID_COLUMNS if c in table.column_names), None)
        if col is None:
            raise InputError(f"{path}: no column named one of {', '.join(_ID_COLUMNS)}")
        return [(f"{path} row {i + 1}", v) for i, v in enumerate(table.column(col).to_pylist())]
    with fsspec.open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        text = f.read()
    if suffix == ".csv":
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        col = next((c for c in _ID_COLUMNS if c in (reader.fieldnames or [])), None)
        if col is None:
            raise InputError(f"{path}: no column named one of {', '.join(_ID_COLUMNS)} "
                             f"(header: {reader.fieldnames})")
        return [(f"{path} line {i + 2}", row.get(col)) for i, row in enumerate(reader)]
    out: list[tuple[str, object]] = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if suffix in (".jsonl", ".json", ".ndjson"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                out.append((f"{path} line {i}", f"<bad json: {e.msg}>"))
                continue
            if isinstance(obj, dict):
                obj = next((obj[c] for c in _ID_COLUMNS if c in obj), None)
            out.append((f"{path} line {i}", obj))
        else:
            out.append((f"{path} line {i}", line))
    return out


def read_video_list(patterns: list[str]) -> tuple[list[VideoRef], list[Failure]]:
    """Every video of the list files (first occurrence wins) and a ledger row per bad line."""
    refs: dict[str, VideoRef] = {}
    failures: list[Failure] = []
    for path in expand_paths(patterns):
        for where, entry in _entries(path):
            ref, why = parse_entry(entry)
            if ref is None:
                failures.append(Failure(None, None, Stage.METADATA.value, FailureCode.BAD_LINE, f"{where}: {why}"))
            elif ref.video_id not in refs:
                refs[ref.video_id] = ref
    if not refs and not failures:
        raise InputError(f"no video URLs or ids in {patterns}")
    return list(refs.values()), failures


def _primary(code: str) -> str:
    return re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]


def _ext(fmt: dict) -> str:
    """A subtitle format's extension; unprocessed yt-dlp results may only have the URL."""
    if fmt.get("ext"):
        return str(fmt["ext"]).lower()
    return PurePosixPath(urlparse(str(fmt.get("url") or "")).path).suffix.lstrip(".").lower()


def choose_subtitles(info: dict, langs: list[str]) -> SubtitleTrack | None:
    """Human-made subtitles in any wanted language (in `langs` order) before automatic
    captions; an exact language code before a regional one ("en" before "en-GB").
    Machine translations of automatic captions (YouTube's `tlang=`) are never taken."""
    for kind, field in ((HUMAN, "subtitles"), (AUTO, "automatic_captions")):
        tracks = info.get(field) or {}
        for want in langs:
            names = sorted((n for n in tracks if _primary(n) == _primary(want)),
                           key=lambda n: (n.lower() != want.lower(), n.endswith("-orig") is False, n))
            for name in names:
                formats = [(_ext(f), f["url"]) for f in tracks[name] or []
                           if isinstance(f, dict) and f.get("url") and _ext(f) in SUBTITLE_EXTS
                           and not (kind == AUTO and "tlang=" in f["url"])]
                formats.sort(key=lambda f: SUBTITLE_EXTS.index(f[0]))
                if formats:
                    return SubtitleTrack(name, kind, formats[0][1], formats[0][0])
    return None


def available_tracks(info: dict) -> tuple[str, ...]:
    """What the video offers, for a ledger reason that tells the user which --lang to use."""
    out = [f"{kind}:{n}" for kind, field in ((HUMAN, "subtitles"), (AUTO, "automatic_captions"))
           for n, fmts in sorted((info.get(field) or {}).items())
           if n != "live_chat" and not all("tlang=" in (f.get("url") or "") for f in fmts or [{}])]
    return tuple(out)


def fetch_subtitles(ref: VideoRef, cfg: FetchConfig, langs: list[str],
                    max_bytes: int = MAX_SUBTITLE_BYTES, meter: ByteMeter | None = None) -> VideoText:
    """yt-dlp's metadata for the video (one request), then the chosen subtitle file;
    raises FetchError (permanent or not) like the video fetch does. Through the fetch
    guard, like every download; `meter` gets the bytes it let through."""
    log = _Log()
    with Guard(cfg.guard_limits(), meter) as guard, no_proxy_bypass():
        try:
            info, track, data = _metadata_and_subtitles(ref, Fetcher(cfg, Path(".")), log, guard, langs,
                                                        max_bytes)
        except FetchError as e:  # a connection the guard closed: its verdict says why
            raise (guard_error(guard) or e) from None
        raise_verdict(guard)
    duration = info.get("duration")
    return VideoText(ref, float(duration) if isinstance(duration, (int, float)) else None,
                     track, data, available_tracks(info))


def _metadata_and_subtitles(ref: VideoRef, fetcher: Fetcher, log: _Log, guard: Guard,
                            langs: list[str], max_bytes: int = MAX_SUBTITLE_BYTES
                            ) -> tuple[dict, SubtitleTrack | None, bytes | None]:
    import yt_dlp

    params = fetcher.params(Path("."), None, log, guard) | {"skip_download": True}
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            info = ydl.extract_info(ref.url, download=False, process=False)
            if info.get("_type") in ("playlist", "multi_video"):
                raise FetchError("the URL is a playlist or channel, not one video; list its videos", True,
                                 FailureCode.BAD_URL)
            track = choose_subtitles(info, langs)
            data = None
            if track is not None:
                with ydl.urlopen(track.url) as resp:
                    data = resp.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise FetchError(f"subtitle file is larger than --max-subtitle-bytes {max_bytes}", True,
                                     FailureCode.SUBTITLE_TOO_LARGE)
    except yt_dlp.utils.DownloadError as e:
        msg = _clean(log.errors[-1] if log.errors else str(e))
        raise FetchError(msg, is_permanent(msg)) from None
    except (OSError, yt_dlp.utils.YoutubeDLError) as e:  # the subtitle request itself
        msg = _clean(str(e))
        raise FetchError(f"subtitle download failed: {msg}", is_permanent(msg)) from None
    return info, track, data
