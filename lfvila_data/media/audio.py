"""Audio for speech recognition: ffmpeg decodes to float32 mono 16 kHz on a pipe and we
read it one chunk at a time, so an hour of audio never sits in memory.

Times are source time, as in `cut`: input timestamps are kept (`-copyts`), each span is
selected with `atrim` on absolute time after a coarse seek, and `aresample` fills any gap
so that sample `i` of a span is at `span.start + i / SAMPLE_RATE` exactly. A whole-file
read starts at the audio stream's own start time (ffprobe), so a section download that
keeps its source timestamps reads like the full video."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lfvila_data.media.cut import INPUT_GUARD
from lfvila_data.media.guard import ByteMeter, Guard, GuardLimits, env_allows_private, no_proxy_bypass
from lfvila_data.records import FailureCode

SAMPLE_RATE = 16000
# Seek this far ahead of a span, then trim exactly: demuxers seek to a packet at or before
# the target, and some only roughly.
PREROLL = 0.5
# cut.py's demuxers (real containers, no playlists), plus plain audio files.
_FORMATS = INPUT_GUARD[INPUT_GUARD.index("-format_whitelist") + 1] + ",wav,mp3,flac,aac"
# Local files open only local files; URLs only the network, never a local file, so no
# input can make ffmpeg read a playlist of local paths.
_FILE_GUARD = ["-protocol_whitelist", "file", "-format_whitelist", _FORMATS]
# URLs go through the fetch guard (media/guard.py, an http proxy; https as a CONNECT
# tunnel, hence httpproxy): every connection, redirect hop and reconnect is checked there.
_URL_GUARD = ["-protocol_whitelist", "http,https,tcp,tls,crypto,httpproxy", "-format_whitelist", _FORMATS,
              "-reconnect", "1", "-reconnect_streamed", "1", "-reconnect_delay_max", "10",
              "-rw_timeout", "60000000"]


def audio_guard_limits(limits: GuardLimits | None = None) -> GuardLimits:
    """The guard's bounds for reading audio: a fetch's refusals and size cap, but no
    deadline or minimum rate (the model, not the server, sets the pace of the read).
    Without limits: the defaults, private addresses refused unless the environment allows."""
    base = limits or GuardLimits(allow_private=env_allows_private())
    return replace(base, deadline=math.inf, min_rate=0.0)


class AudioError(Exception):
    """Media whose audio we cannot read; the message is one line for the ledger, and
    `permanent` says whether a rerun may help (a network error may pass, a file with no
    audio stream will not)."""

    def __init__(self, message: str, permanent: bool = True, code: FailureCode = FailureCode.BAD_AUDIO):
        super().__init__(message)
        self.permanent = permanent
        self.code = code


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive samples of one span: float32 mono at SAMPLE_RATE, `start` in source seconds."""

    start: float
    samples: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.start + self.duration


def _is_url(media: str) -> bool:
    return media.startswith(("http://", "https://"))


def _input(media: str, proxy: str | None = None) -> tuple[list[str], str]:
    """Guard options and the input argument; a local path is always read as a file, a URL
    only through `proxy` (the guard's address)."""
    if _is_url(media):
        if proxy is None:
            raise ValueError("a URL is read only through the fetch guard (stream_audio opens one)")
        return [*_URL_GUARD, "-http_proxy", proxy], media
    if "://" in media:
        raise AudioError(f"unsupported media location {media[:80]!r} (local path or http(s) URL only)",
                         code=FailureCode.BAD_URL)
    path = Path(media)
    if not path.is_file():
        raise AudioError(f"the media file does not exist: {media}", code=FailureCode.NOT_FOUND)
    return _FILE_GUARD, "file:" + str(path.resolve())


def _reason(stderr: str, media: str) -> AudioError:
    """ffmpeg's last words as a reason a person can act on."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = " ".join(lines)
    last = lines[-1][:300] if lines else "no message"
    if "matches no streams" in text:
        return AudioError("the media has no audio stream", code=FailureCode.NO_AUDIO)
    if "No such file or directory" in text:
        return AudioError(f"the media file does not exist: {media}", code=FailureCode.NOT_FOUND)
    if "not on whitelist" in text:
        return AudioError(f"the media refers to inputs we do not open: {last}")
    if _is_url(media):  # network and server errors may pass on a rerun
        permanent = any(f"Server returned {c}" in text for c in ("404", "410"))
        return AudioError(f"could not read the audio from the URL: {last}", permanent,
                          FailureCode.NOT_FOUND if permanent else FailureCode.NETWORK)
    if "Invalid data" in text or "moov atom not found" in text:
        return AudioError(f"not a readable media file: {last}")
    return AudioError(f"ffmpeg could not decode the audio: {last}")


def audio_start(media: str, *, timeout: float = 120.0, proxy: str | None = None,
                stopped: threading.Event | None = None) -> float:
    """Source time of the first audio sample (0 for most files); AudioError without audio.
    `stopped`: the fetch guard's, which ends ffprobe once it refused the rest."""
    guard, arg = _input(media, proxy)
    cmd = ["ffprobe", "-v", "error", *guard, "-select_streams", "a:0",
           "-show_entries", "stream=start_time", "-of", "json", arg]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _killed_when(stopped, proc):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AudioError(f"ffprobe timed out after {timeout:.0f} s", permanent=False,
                             code=FailureCode.NETWORK) from None
    if proc.returncode != 0:
        raise _reason(err.decode("utf-8", "replace"), media)
    streams = json.loads(out or b"{}").get("streams") or []
    if not streams:
        raise AudioError("the media has no audio stream", code=FailureCode.NO_AUDIO)
    try:
        return max(0.0, float(streams[0].get("start_time", 0.0)))
    except (TypeError, ValueError):  # "N/A": the stream does not say
        return 0.0


def audio_command(media: str, start: float, end: float | None, proxy: str | None = None) -> list[str]:
    """ffmpeg arguments (no shell) that write [start, end) of the first audio stream, source
    time, as float32 mono SAMPLE_RATE to stdout; `end=None` reads to the end."""
    guard, arg = _input(media, proxy)
    trim = f"atrim=start={start:.6f}" + (f":end={end:.6f}" if end is not None else "")
    graph = (f"{trim},asetpts=PTS-{start:.6f}/TB,aresample={SAMPLE_RATE}:async=1:first_pts=0,"
             f"aformat=sample_fmts=flt:channel_layouts=mono:sample_rates={SAMPLE_RATE}")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *guard, "-seek_timestamp", "1",
           "-ss", f"{max(0.0, start - PREROLL):.6f}", "-noaccurate_seek", "-copyts", "-i", arg,
           "-map", "0:a:0", "-vn", "-sn", "-dn", "-af", graph]
    if end is not None:  # stop reading the input once the span is out
        cmd += ["-t", f"{end - start + 0.1:.6f}"]
    return cmd + ["-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]


def stream_audio(media: str, spans: Sequence[tuple[float, float]] | None = None, *,
                 chunk_seconds: float = 30.0, timeout: float = 300.0,
                 guard: GuardLimits | None = None, meter: ByteMeter | None = None) -> Iterator[AudioChunk]:
    """Chunks of at most `chunk_seconds` of each span in order (the whole audio without
    spans); a chunk never crosses from one span into the next.

    `timeout` bounds the wait for one chunk (a stalled download), not the whole read: the
    consumer may take as long as it likes between chunks. Closing the iterator early kills
    ffmpeg. Raises AudioError when the media cannot be read or yields no audio at all.
    A URL is read through the fetch guard (`audio_guard_limits(guard)`), like a download:
    a private address, after DNS and on every redirect, is a permanent refusal; `meter`
    gets the bytes the guard let through when the read ends (failed or closed early too).
    A local file fetches nothing."""
    if chunk_seconds <= 0:
        raise ValueError("chunk_seconds must be positive")
    for s, e in spans or ():
        if not (0 <= s < e):
            raise ValueError(f"invalid span ({s}, {e})")
    if not _is_url(media):
        yield from _stream(media, spans, chunk_seconds, timeout, None)
        return
    with Guard(audio_guard_limits(guard), meter) as proxy, no_proxy_bypass():
        proxy.downloading()  # the file-size cap bounds the bytes
        try:
            yield from _stream(media, spans, chunk_seconds, timeout, proxy.url, proxy.stopped)
        except AudioError:
            if proxy.verdict is None:
                raise
        # why the guard closed the connection, not what ffmpeg made of it; also when ffmpeg
        # took the closed connection for the input's end and exited 0 with part of the audio
        if (v := proxy.verdict) is not None:
            raise AudioError(v.reason, v.permanent, v.code)


def _stream(media: str, spans: Sequence[tuple[float, float]] | None, chunk_seconds: float,
            timeout: float, proxy: str | None, stopped: threading.Event | None = None) -> Iterator[AudioChunk]:
    todo = (list(spans) if spans is not None
            else [(audio_start(media, timeout=timeout, proxy=proxy, stopped=stopped), None)])
    chunk = max(1, round(chunk_seconds * SAMPLE_RATE))
    total = 0
    for start, end in todo:
        for offset, samples in _read_pcm(audio_command(media, start, end, proxy), chunk, timeout, media, stopped):
            total += len(samples)
            yield AudioChunk(start + offset / SAMPLE_RATE, samples)
    if total == 0:
        where = "" if spans is None else " in " + ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in todo)
        raise AudioError(f"the media has no audio samples{where}", code=FailureCode.NO_AUDIO)


@contextlib.contextmanager
def _killed_when(stopped: threading.Event | None, proc: subprocess.Popen) -> Iterator[None]:
    """Kill `proc` once `stopped` is set (the fetch guard refused the rest of the read):
    ffmpeg would otherwise retry the refused connection for ~20 s (`-reconnect`) before it
    gave up."""
    if stopped is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stopped.wait(0.1):
                with contextlib.suppress(OSError):
                    proc.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True, name="audio-guard-stop")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _read_pcm(cmd: list[str], chunk: int, timeout: float, media: str,
              stopped: threading.Event | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(sample offset, samples) blocks of `chunk` samples (the last shorter) from ffmpeg."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _killed_when(stopped, proc):
        yield from _pcm_blocks(proc, chunk, timeout, media)


def _pcm_blocks(proc: subprocess.Popen, chunk: int, timeout: float, media: str) -> Iterator[tuple[int, np.ndarray]]:
    tail: deque[str] = deque(maxlen=20)
    errors = threading.Thread(target=lambda: tail.extend(
        ln.decode("utf-8", "replace") for ln in proc.stderr), daemon=True)
    errors.start()
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    offset = 0
    try:
        while True:
            buf = np.empty(chunk, dtype=np.float32)
            view = memoryview(buf).cast("B")
            got = 0
            timer = threading.Timer(timeout, expire)
            timer.start()
            try:
                while got < len(view):
                    n = proc.stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
            finally:
                timer.cancel()
            samples = buf[: got // 4]
            if len(samples):
                yield offset, samples
                offset += len(samples)
            if got < len(view):
                break
        proc.wait()
        errors.join()
        if timed_out.is_set():
            raise AudioError(f"no audio from ffmpeg for {timeout:.0f} s (stalled input)", permanent=False,
                             code=FailureCode.NETWORK)
        if proc.returncode != 0:
            raise _reason("".join(tail), media)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        errors.join(timeout=5)
        proc.stderr.close()
