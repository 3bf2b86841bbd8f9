"""Fetch only what the plan needs: yt-dlp downloads the planned time sections of a video
(plus a margin), at the smallest resolution at or above the output height.

Section downloads go through ffmpeg with `-copyts`, so a section file keeps source
timestamps and the cut stage can select spans by source time whatever keyframe the
section starts at. One `YoutubeDL.extract_info` per attempt: one metadata request per
video. The Python API never reads yt-dlp config files, and we add no post-processor
(so no `--exec`)."""
from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlparse

from lfvila_data.records import FailureCode

INF = math.inf
T = TypeVar("T")

# Messages that no retry will change. Anything else (5xx, 429, timeouts, resets) is
# transient: retried now with backoff, and again on the next run.
_PERMANENT = re.compile(
    r"HTTP Error (400|401|403|404|405|410|451)|Private video|Video unavailable|"
    r"This video is (not available|unavailable|private)|has been removed|members-only|"
    r"confirm your age|Unsupported URL|is not a valid URL|copyright|account .* terminated|"
    r"not made this video available|Premieres in|Requested format is not available|"
    r"exceeds the size cap|No video formats found|does not serve a readable video",
    re.IGNORECASE)


# The ledger code of a download error, from what yt-dlp or ffmpeg said; first match wins.
_CODES = (
    (re.compile(r"HTTP Error (404|410)|file not found", re.IGNORECASE), FailureCode.NOT_FOUND),
    (re.compile(r"size cap|larger than", re.IGNORECASE), FailureCode.TOO_LARGE),
    (re.compile(r"Unsupported URL|is not a valid URL|only http|local files are not allowed|"
                r"playlist or channel|HTTP Error (400|405)", re.IGNORECASE), FailureCode.BAD_URL),
    (re.compile(r"readable video|No video formats found|Requested format is not available|"
                r"no playable|media could not be read", re.IGNORECASE), FailureCode.NOT_A_VIDEO),
    (_PERMANENT, FailureCode.UNAVAILABLE),
)


def fetch_code(message: str) -> FailureCode:
    """The closed-set code of a download error message (NETWORK when none matches: what
    is left is transient, a 5xx, 429, timeout or reset)."""
    return next((code for pattern, code in _CODES if pattern.search(message)), FailureCode.NETWORK)


class FetchError(Exception):
    """A video that could not be fetched; `permanent` says whether a rerun may help and
    `code` (by default read from the message) why, for the ledger."""

    def __init__(self, reason: str, permanent: bool, code: FailureCode | None = None):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code or fetch_code(reason)


@dataclass(frozen=True)
class FetchConfig:
    """Download options; the CLI fills these from flags."""

    height: int = 240
    audio: bool = False
    sections: bool = True
    margin: float = 1.0          # seconds added around each planned span
    merge_gap: float = 10.0      # spans closer than this share one section
    socket_timeout: float = 20.0
    retries: int = 3
    backoff: float = 2.0         # seconds before the first retry, doubling after
    max_filesize: int = 2 * 1024**3
    cookies: str | None = None
    proxy: str | None = None
    rate_limit: int | None = None  # bytes/s, whole-file downloads only
    allow_local_files: bool = False


@dataclass(frozen=True)
class Section:
    """A local media file holding source time [start, end] of a video."""

    path: str
    start: float
    end: float

    def covers(self, start: float, end: float) -> bool:
        return self.start <= start and end <= self.end


@dataclass
class Fetched:
    sections: list[Section] = field(default_factory=list)
    bytes: int = 0
    local: bool = False  # the source itself (allow_local_files): never delete it


def section_spans(spans: list[tuple[float, float]], margin: float,
                  merge_gap: float) -> list[tuple[float, float]]:
    """Widen spans by the margin and merge the ones close enough to share a download."""
    merged: list[list[float]] = []
    for s, e in sorted(spans):
        s, e = max(0.0, s - margin), e + margin
        if merged and s - merged[-1][1] <= merge_gap:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(round(s, 3), round(e, 3)) for s, e in merged]


def with_retries(call: Callable[[], T], cfg: FetchConfig) -> T:
    """`call()` until it succeeds, fails for good, or `cfg.retries` retries with doubling
    backoff are spent; a transient error that outlasted them says how many attempts."""
    delay = cfg.backoff
    for attempt in range(cfg.retries + 1):
        try:
            return call()
        except FetchError as e:
            if e.permanent or attempt == cfg.retries:
                if not e.permanent and attempt:
                    e.reason += f" (after {attempt + 1} attempts)"
                raise
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def is_permanent(message: str) -> bool:
    """Whether a download error is one no retry will fix (404, private video, ...)."""
    return bool(_PERMANENT.search(message))


def local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for anything else."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and url:
        return Path(url)
    return None


def format_spec(height: int, audio: bool) -> str:
    """Smallest video at or above `height` (with format_sort "+res"), else the largest."""
    if audio:
        return f"bv*[height>=?{height}]+ba/b[height>=?{height}]/wv*+ba/w"
    return f"bv*[height>=?{height}]/b[height>=?{height}]/wv*/w"


class _Log:
    """Collects yt-dlp messages instead of printing them; errors end up in the ledger."""

    def __init__(self):
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


class Fetcher:
    """Downloads the sections of one video into `workdir/<video_id>/`."""

    def __init__(self, cfg: FetchConfig, workdir: Path):
        self.cfg = cfg
        self.workdir = Path(workdir)

    def params(self, target: Path, spans: list[tuple[float, float]] | None, log: _Log) -> dict:
        from yt_dlp.utils import download_range_func

        cfg = self.cfg
        p = {
            "quiet": True, "no_warnings": True, "noprogress": True, "logger": log,
            "noplaylist": True, "socket_timeout": cfg.socket_timeout,
            "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
            "format": format_spec(cfg.height, cfg.audio), "format_sort": ["+res"],
            "outtmpl": {"default": str(target / "%(section_start)s.%(ext)s")},
            "overwrites": True, "continuedl": False, "fixup": "never",
            "postprocessors": [], "max_filesize": cfg.max_filesize,
            "merge_output_format": "mkv", "check_formats": False,
            "external_downloader_args": {
                # ffmpeg reads only the remote media, never local files or playlists of
                # other protocols; keeps source timestamps; stops at the size cap.
                "ffmpeg_i": ["-protocol_whitelist", "http,https,tcp,tls,crypto",
                             "-rw_timeout", str(int(cfg.socket_timeout * 1e6))],
                "ffmpeg_o": ["-copyts", "-fs", str(cfg.max_filesize)],
            },
        }
        if spans is not None:
            p["download_ranges"] = download_range_func(None, spans)
            p["force_keyframes_at_cuts"] = False
        else:
            p["outtmpl"] = {"default": str(target / "full.%(ext)s")}
        if cfg.cookies:
            p["cookiefile"] = cfg.cookies
        if cfg.proxy:
            p["proxy"] = cfg.proxy
        if cfg.rate_limit:
            p["ratelimit"] = cfg.rate_limit
        return p

    def __call__(self, video_id: str, url: str, spans: list[tuple[float, float]]) -> Fetched:
        """Fetch what covers `spans` (source seconds); raises FetchError."""
        local = local_path(url)
        if local is not None:
            if not self.cfg.allow_local_files:
                raise FetchError("local files are not allowed (use --allow-local-files)", True,
                                 FailureCode.BAD_URL)
            if not local.is_file():
                raise FetchError(f"local file not found: {local}", True, FailureCode.NOT_FOUND)
            return Fetched([Section(str(local), 0.0, INF)], 0, local=True)
        if urlparse(url).scheme not in ("http", "https"):
            raise FetchError(f"only http(s) URLs are fetched, not {url[:80]!r}", True,
                             FailureCode.BAD_URL)
        wanted = section_spans(spans, self.cfg.margin, self.cfg.merge_gap) if self.cfg.sections else None
        target = self.workdir / video_id

        def attempt() -> Fetched:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True, exist_ok=True)
            return self._download(url, target, wanted)

        try:
            return with_retries(attempt, self.cfg)
        except FetchError:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def media_url(self, url: str) -> str:
        """What ffmpeg should read for the audio of `url`: the file itself for local
        paths, else the direct URL of the best audio (or smallest muxed) format. Used by
        speech recognition, which streams audio and never downloads the video."""
        import yt_dlp

        local = local_path(url)
        if local is not None:
            if not self.cfg.allow_local_files:
                raise FetchError("local files are not allowed (use --allow-local-files)", True,
                                 FailureCode.BAD_URL)
            return str(local)
        log = _Log()
        params = self.params(self.workdir, None, log) | {"format": "ba/wa*/b/w", "format_sort": []}
        try:
            with yt_dlp.YoutubeDL(params) as ydl:
                info = ydl.extract_info(url, download=False)
        except yt_dlp.utils.DownloadError as e:
            msg = _clean(log.errors[-1] if log.errors else str(e))
            raise FetchError(msg, is_permanent(msg)) from None
        urls = _media_urls(info)
        if not urls:
            raise FetchError("yt-dlp found no playable audio or video format", True,
                             FailureCode.NOT_A_VIDEO)
        return urls[-1]  # with separate streams the audio one comes last

    def _download(self, url: str, target: Path, wanted: list[tuple[float, float]] | None) -> Fetched:
        import yt_dlp

        log = _Log()
        info = None
        try:
            with yt_dlp.YoutubeDL(self.params(target, wanted, log)) as ydl:
                info = ydl.extract_info(url, download=False)  # the one metadata request
                info = ydl.process_ie_result(info, download=True)
        except yt_dlp.utils.DownloadError as e:
            msg = _clean(log.errors[-1] if log.errors else str(e))
            if "ffmpeg exited" in msg and info is not None:
                msg = self._diagnose(info) or msg
            raise FetchError(msg, is_permanent(msg)) from None
        except yt_dlp.networking.exceptions.RequestError as e:
            raise _request_error(e) from None
        if info is None:
            raise FetchError("yt-dlp returned no information", False)
        downloads = info.get("requested_downloads") or []
        sections, total = [], 0
        for d in downloads:
            path = Path(d.get("filepath") or "")
            if not path.is_file() or path.stat().st_size == 0:
                raise FetchError("download produced no file (server closed early?)", False)
            size = path.stat().st_size
            if size >= self.cfg.max_filesize:
                raise FetchError(f"download exceeds the size cap of {self.cfg.max_filesize} bytes", True,
                                 FailureCode.TOO_LARGE)
            total += size
            start = float(d.get("section_start") or 0.0)
            end = float(d["section_end"]) if d.get("section_end") is not None else INF
            sections.append(Section(str(path), start, end))
        if not sections:
            raise FetchError("nothing was downloaded (format not available?)", False)
        return Fetched(sorted(sections, key=lambda s: s.start), total)

    def _diagnose(self, info: dict) -> str | None:
        """Why ffmpeg could not read the media: ask ffprobe, so the ledger says
        "not a video" rather than "ffmpeg exited with code 1"."""
        import subprocess

        for media_url in _media_urls(info):
            try:
                res = subprocess.run(
                    ["ffprobe", "-v", "error", "-protocol_whitelist", "http,https,tcp,tls,crypto",
                     "-rw_timeout", str(int(self.cfg.socket_timeout * 1e6)),
                     "-show_entries", "stream=codec_type", "-of", "csv=p=0", media_url],
                    capture_output=True, timeout=self.cfg.socket_timeout * 3, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return None
            err = res.stderr.decode("utf-8", "replace").strip().splitlines()
            if res.returncode != 0 and err:
                last = err[-1].replace(media_url, "<media>")
                if "Invalid data" in last or "moov atom" in last or "no video" in last.lower():
                    return f"the URL does not serve a readable video: {last[:300]}"
                return f"media could not be read: {last[:300]}"
            if res.returncode == 0 and b"video" not in res.stdout:
                return "the URL does not serve a readable video: no video stream found"
        return None


def _request_error(err: Exception) -> FetchError:
    """A request error yt-dlp let through: a redirect to a scheme it cannot fetch (file://,
    ftp://) is a bad URL for good (retrying it would fail the same way on every run);
    anything else is the network."""
    msg = _clean(str(err))
    if "No connection adapters" in msg or "Unsupported url scheme" in msg:
        return FetchError(f"the server redirected to a URL we do not fetch: {msg}", True,
                          FailureCode.BAD_URL)
    return FetchError(msg, False, FailureCode.NETWORK)


def _media_urls(info: dict) -> list[str]:
    fmts = info.get("requested_formats") or [info]
    return [f["url"] for f in fmts if f.get("url")]


def _clean(msg: str) -> str:
    """yt-dlp error text without its 'ERROR: [generic] id:' prefix and colour codes."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    msg = re.sub(r"^ERROR:\s*(\[[^\]]+\]\s*[^:]*:\s*)?", "", msg.strip())
    return msg[:400]
