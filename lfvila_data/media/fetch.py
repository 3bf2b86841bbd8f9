"""Fetch only what the plan needs: yt-dlp downloads the planned time sections of a video
(plus a margin), at the smallest resolution at or above the output height.

Section downloads go through ffmpeg with `-copyts`, so a section file keeps source
timestamps and the cut stage can select spans by source time whatever keyframe the
section starts at. One `YoutubeDL.extract_info` per attempt: one metadata request per
video. The Python API never reads yt-dlp config files, and we add no post-processor
(so no `--exec`).

yt-dlp, ffmpeg and ffprobe reach the network only through a `guard.Guard` (their proxy):
it refuses private addresses on every hop and bounds the bytes, time and rate of a video."""
from __future__ import annotations

import http.client
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlparse

from lfvila_data.media.guard import (
    ByteMeter,
    Guard,
    GuardLimits,
    env_allows_private,
    no_proxy_bypass,
    refused_host,
)
from lfvila_data.output.fingerprint import SPEED
from lfvila_data.records import FailureCode, redact

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
        reason = redact(reason)  # a URL's user:pass@ never reaches the ledger or a log
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code or fetch_code(reason)
        self.wire_bytes = 0  # what the failed attempts took from the network (set by Fetcher)


@dataclass(frozen=True)
class FetchConfig:
    """Download options; the CLI fills these from flags.

    Content fields (output/fingerprint.py) are the ones a sample file depends on: a rerun
    that changes one is refused unless --rebuild. The others decide how, or whether, a
    download is tried, never what a finished file holds."""

    height: int = 240            # content: the source resolution the sample is scaled from
    audio: bool = False          # content: whether the sample can carry an audio track
    # speed: a section cuts exactly like the whole file (cut.py keeps source time)
    sections: bool = field(default=True, metadata=SPEED)
    margin: float = field(default=1.0, metadata=SPEED)        # seconds added around each planned span
    merge_gap: float = field(default=10.0, metadata=SPEED)    # spans closer than this share one section
    socket_timeout: float = field(default=20.0, metadata=SPEED)
    retries: int = field(default=3, metadata=SPEED)
    backoff: float = field(default=2.0, metadata=SPEED)       # seconds before the first retry, doubling after
    # speed (access and limits below): they decide whether a download is tried or refused
    # (a ledger row), never the bytes of a file that was written
    max_filesize: int = field(default=2 * 1024**3, metadata=SPEED)
    cookies: str | None = field(default=None, metadata=SPEED)
    proxy: str | None = field(default=None, metadata=SPEED)
    rate_limit: int | None = field(default=None, metadata=SPEED)  # bytes/s, whole-file downloads only
    allow_local_files: bool = field(default=False, metadata=SPEED)
    # speed: the guard's bounds decide whether a download is tried, never a file's bytes;
    # third-party URLs must not reach loopback, private or link-local addresses; the
    # default also follows LFVILA_ALLOW_PRIVATE_ADDRESSES (the test suite's servers are local)
    allow_private_addresses: bool = field(default_factory=env_allows_private, metadata=SPEED)
    # bytes yt-dlp may read for metadata (an endless page stops here)
    max_page_bytes: int = field(default=32 * 1024**2, metadata=SPEED)
    deadline: float = field(default=1800.0, metadata=SPEED)  # seconds one video may spend downloading
    min_rate: int = field(default=10_000, metadata=SPEED)    # bytes/s below which, for slow_window s, it stops
    slow_window: float = field(default=60.0, metadata=SPEED)
    # CIDRs fetched from even when private (an internal mirror)
    allowed_networks: tuple[str, ...] = field(default=(), metadata=SPEED)

    def guard_limits(self) -> GuardLimits:
        """The guard's bounds; a --rate-limit below the minimum rate lowers the minimum."""
        min_rate = min(self.min_rate, self.rate_limit / 2) if self.rate_limit else self.min_rate
        return GuardLimits(allow_private=self.allow_private_addresses, page_bytes=self.max_page_bytes,
                           file_bytes=self.max_filesize, deadline=self.deadline, min_rate=min_rate,
                           slow_window=self.slow_window, connect_timeout=self.socket_timeout,
                           upstream=self.proxy, allowed_networks=self.allowed_networks)


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
    bytes: int = 0  # of the files kept
    local: bool = False  # the source itself (allow_local_files): never delete it
    wire_bytes: int = 0  # from the network over every attempt (retries, pages, dropped seeks)


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
    backoff are spent; a transient error that outlasted them says how many attempts. A slow
    server is not retried now: the attempt already spent its time (a later run retries)."""
    delay = cfg.backoff
    for attempt in range(cfg.retries + 1):
        try:
            return call()
        except FetchError as e:
            if e.permanent or e.code is FailureCode.SLOW or attempt == cfg.retries:
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

    def params(self, target: Path, spans: list[tuple[float, float]] | None, log: _Log, guard: Guard) -> dict:
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
            "proxy": guard.url,  # yt-dlp, and ffmpeg through http_proxy (see guard.py)
            "external_downloader_args": {
                # ffmpeg reads only the remote media, never local files or playlists of
                # other protocols; keeps source timestamps; stops at the size cap.
                "ffmpeg_i": _network_input(cfg),
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

        with Guard(self.cfg.guard_limits()) as guard, no_proxy_bypass():
            def attempt() -> Fetched:
                guard.attempt()
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True, exist_ok=True)
                return self._download(url, target, wanted, guard)

            try:
                fetched = with_retries(attempt, self.cfg)
            except FetchError as e:
                shutil.rmtree(target, ignore_errors=True)
                e.wire_bytes = guard.total_received
                raise
            fetched.wire_bytes = guard.total_received
            return fetched

    def media_url(self, url: str, meter: ByteMeter | None = None) -> str:
        """What ffmpeg should read for the audio of `url`: the file itself for local
        paths, else the direct URL of the best audio (or smallest muxed) format. Used by
        speech recognition, which streams audio and never downloads the video; `meter`
        gets the bytes yt-dlp read to find it."""
        import yt_dlp

        local = local_path(url)
        if local is not None:
            if not self.cfg.allow_local_files:
                raise FetchError("local files are not allowed (use --allow-local-files)", True,
                                 FailureCode.BAD_URL)
            return str(local)
        log = _Log()
        with Guard(self.cfg.guard_limits(), meter) as guard, no_proxy_bypass():
            params = self.params(self.workdir, None, log, guard) | {"format": "ba/wa*/b/w", "format_sort": []}
            try:
                with yt_dlp.YoutubeDL(params) as ydl:
                    info = ydl.extract_info(url, download=False)
            except yt_dlp.utils.DownloadError as e:
                raise guard_error(guard) or download_error(log, e) from None
            raise_verdict(guard)
        urls = _media_urls(info)
        if not urls:
            raise FetchError("yt-dlp found no playable audio or video format", True,
                             FailureCode.NOT_A_VIDEO)
        media = urls[-1]  # with separate streams the audio one comes last
        # ffmpeg reads it later, without the guard: check its scheme and host here
        if urlparse(media).scheme not in ("http", "https"):
            raise FetchError(f"the media URL is not http(s): {media[:80]!r}", True, FailureCode.PRIVATE_ADDRESS)
        why = None if self.cfg.allow_private_addresses else refused_host(media, self.allowed_networks)
        if why:
            raise FetchError(why, True, FailureCode.PRIVATE_ADDRESS)
        return media

    def _download(self, url: str, target: Path, wanted: list[tuple[float, float]] | None,
                  guard: Guard) -> Fetched:
        ext = None if wanted is None or self.cfg.cookies else direct_media(url, guard, self.cfg.socket_timeout)
        if ext is not None:  # sections of a media file: no extractor to run
            guard.downloading()
            try:
                downloads = download_sections(url, ext, target, wanted, guard, self.cfg)
            except FetchError as e:
                msg = self._diagnose({"url": url}, guard) or e.reason
                raise guard_error(guard) or FetchError(msg, is_permanent(msg)) from None
            raise_verdict(guard)
            return self._sections(downloads)
        import yt_dlp

        log = _Log()
        info = None
        try:
            with yt_dlp.YoutubeDL(self.params(target, wanted, log, guard)) as ydl:
                info = ydl.extract_info(url, download=False)  # the one metadata request
                guard.downloading()
                info = ydl.process_ie_result(info, download=True)
        except yt_dlp.utils.DownloadError as e:
            error = guard_error(guard) or download_error(log, e)
            if "ffmpeg exited" in error.reason and info is not None:
                msg = self._diagnose(info, guard) or error.reason
                error = guard_error(guard) or FetchError(msg, is_permanent(msg))
            raise error from None
        except yt_dlp.utils.YoutubeDLError as e:  # a request yt-dlp refused to make, e.g. a redirect to file://
            raise guard_error(guard) or download_error(log, e) from None
        raise_verdict(guard)  # a connection the guard closed can look like a finished download
        if info is None:
            raise FetchError("yt-dlp returned no information", False)
        return self._sections(info.get("requested_downloads") or [])

    def _sections(self, downloads: list[dict]) -> Fetched:
        """The downloaded files (yt-dlp's `requested_downloads`), checked."""
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

    def _diagnose(self, info: dict, guard: Guard) -> str | None:
        """Why ffmpeg could not read the media: ask ffprobe, so the ledger says
        "not a video" rather than "ffmpeg exited with code 1"."""
        for media_url in _media_urls(info):
            try:
                res = subprocess.run(
                    ["ffprobe", "-v", "error", "-protocol_whitelist", _NETWORK_PROTOCOLS,
                     "-http_proxy", guard.url, "-rw_timeout", str(int(self.cfg.socket_timeout * 1e6)),
                     "-show_entries", "stream=codec_type,width,height", "-of", "csv=p=0:nk=0", media_url],
                    capture_output=True, timeout=self.cfg.socket_timeout * 3, stdin=subprocess.DEVNULL,
                    check=False)
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
            streams = [dict(kv.partition("=")[::2] for kv in ln.split(","))
                       for ln in res.stdout.decode("utf-8", "replace").splitlines()]
            if res.returncode == 0 and all(st.get("width") in ("0", "", None) for st in streams
                                           if st.get("codec_type") == "video"):
                # frame dimensions the decoder refuses (e.g. 20000x20000): no rerun changes that
                said = next((ln for ln in err if "size" in ln.lower()), "no frame size")
                return f"the URL does not serve a readable video: its frames have no usable size ({said[:200]})"
        return None


# ffmpeg's network protocols; httpproxy is how https reaches the guard (a CONNECT tunnel)
_NETWORK_PROTOCOLS = "http,https,tcp,tls,crypto,httpproxy"
# ffmpeg's receive buffer on its socket to the guard (loopback: no round trip to cover); the
# kernel's default, autotuned, holds ~128 KiB more that a dropped connection wastes (guard.py)
_LOOPBACK_BUFFER = 16 * 1024

# content type -> (file extension, ffmpeg muxer) of a media file ffmpeg downloads sections of
# as it is: yt-dlp's generic extractor would find this one format and hand it to ffmpeg
_DIRECT = {"video/mp4": ("mp4", "mp4"), "video/webm": ("webm", "webm"),
           "video/x-matroska": ("mkv", "matroska"), "video/quicktime": ("mov", "mov")}
# the HEAD request and ffmpeg name themselves alike, so a server that answers the one by
# its user agent answers the other the same way (one that refuses it goes to yt-dlp)
_AGENT = "Mozilla/5.0 (X11; Linux x86_64) lfvila-data"


def direct_media(url: str, guard: Guard, timeout: float) -> str | None:
    """The content type of `url` when it is a media file ffmpeg can read directly (a path
    ending in a video extension, answering a HEAD request through the guard with a video
    content type), else None: anything else (a page, an error, a redirect we cannot
    follow) goes to yt-dlp, whose extractor and messages decide. A 404 or 410 is final
    here already, with yt-dlp's words for it (one request, as before)."""
    suffix = Path(urlparse(url).path).suffix.lower().lstrip(".")
    if suffix not in {ext for ext, _ in _DIRECT.values()}:
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": guard.url, "https": guard.url}))
    try:
        with opener.open(urllib.request.Request(url, method="HEAD", headers={"User-Agent": _AGENT}),
                         timeout=timeout) as r:
            ctype = r.headers.get_content_type()
    except urllib.error.HTTPError as e:
        raise_verdict(guard)
        if e.code in (404, 410):
            raise FetchError(f"HTTP Error {e.code}: {e.reason}", True) from None
        return None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return ctype if ctype in _DIRECT else None


def _network_input(cfg: FetchConfig) -> list[str]:
    """ffmpeg's input options for a download through the guard (yt-dlp's and ours)."""
    return ["-protocol_whitelist", _NETWORK_PROTOCOLS, "-rw_timeout", str(int(cfg.socket_timeout * 1e6)),
            "-recv_buffer_size", str(_LOOPBACK_BUFFER)]


def section_command(url: str, muxer: str, start: float, end: float, part: Path, cfg: FetchConfig) -> list[str]:
    """The ffmpeg command that downloads source time [start, end] of `url` into `part`
    (the arguments yt-dlp's ffmpeg downloader gives it; `-recv_buffer_size` sizes its
    socket to the guard). benchmarks/bench_download.py runs it without the guard too."""
    return ["ffmpeg", "-y", "-nostdin", "-loglevel", "error", "-hide_banner",
            *(["-ss", str(start)] if start else []), "-t", str(end - start),
            *_network_input(cfg), "-user_agent", _AGENT, "-i", url, "-c", "copy",
            "-f", muxer, "-copyts", "-fs", str(cfg.max_filesize), str(part)]


def download_sections(url: str, ctype: str, target: Path, wanted: list[tuple[float, float]],
                      guard: Guard, cfg: FetchConfig) -> list[dict]:
    """Download each section of a media file with ffmpeg through the guard, as yt-dlp's
    ffmpeg downloader does (same arguments, same file names); `requested_downloads`-like
    records. Raises FetchError with ffmpeg's message when it fails."""
    ext, muxer = _DIRECT[ctype]
    env = {**os.environ, "http_proxy": guard.url, "HTTP_PROXY": guard.url}
    downloads = []
    for start, end in wanted:
        path = target / f"{start}.{ext}"
        part = path.with_name(path.name + ".part")
        cmd = section_command(url, muxer, start, end, part, cfg)
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, timeout=cfg.deadline,
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise FetchError(f"the download took longer than the deadline of {cfg.deadline:g} s", False,
                             FailureCode.SLOW) from None
        if res.returncode != 0:
            said = res.stderr.decode("utf-8", "replace").strip().splitlines()
            raise FetchError(f"ffmpeg exited with code {res.returncode}: "
                             f"{said[-1][:300] if said else 'no message'}".replace(url, "<media>"), False)
        part.replace(path)
        downloads.append({"filepath": str(path), "section_start": start, "section_end": end})
    return downloads


def guard_error(guard: Guard) -> FetchError | None:
    """The guard's verdict as the error to report, when it stopped the download: the
    closed connection yt-dlp or ffmpeg saw says nothing of why."""
    v = guard.verdict
    return None if v is None else FetchError(v.reason, v.permanent, v.code)


def raise_verdict(guard: Guard) -> None:
    """Raise the guard's verdict, if it has one."""
    error = guard_error(guard)
    if error is not None:
        raise error


def download_error(log: _Log, e: Exception) -> FetchError:
    """A yt-dlp error as a FetchError, classed by its message; a request for another
    scheme than http(s) (a redirect to file://) is a permanent refusal."""
    msg = _clean(log.errors[-1] if log.errors else str(e))
    other = _OTHER_SCHEME.search(msg)
    if other:
        return FetchError(f"refused a redirect to a {other.group(1)}: URL (only http(s) is fetched): {msg}",
                          True, FailureCode.PRIVATE_ADDRESS)
    return FetchError(msg, is_permanent(msg))


# what yt-dlp says of a URL whose scheme it has no handler for
_OTHER_SCHEME = re.compile(r"(?:No connection adapters were found for|Unsupported url scheme:?|"
                           r"Redirection to url)\W*(?!https?\b)([a-z][a-z0-9+.-]*)\b", re.IGNORECASE)


def _media_urls(info: dict) -> list[str]:
    fmts = info.get("requested_formats") or [info]
    return [f["url"] for f in fmts if f.get("url")]


def _clean(msg: str) -> str:
    """yt-dlp error text without its 'ERROR: [generic] id:' prefix and colour codes."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    msg = re.sub(r"^ERROR:\s*(\[[^\]]+\]\s*[^:]*:\s*)?", "", msg.strip())
    return msg[:400]
