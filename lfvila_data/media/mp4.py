"""The probe of an MP4 file read from its `moov` box, without starting ffprobe.

Every ffmpeg or ffprobe process costs ~0.05-0.1 CPU-s before it reads a byte (it links
over 200 shared libraries), as much as decoding a minute of 240p video. A build probes
every sample file it writes, and a rerun every file it reuses; those are MP4 files our
cut wrote (H.264, `moov` first), whose sample tables hold all `probe` reports. This
reader computes the same numbers as ffprobe's packet scan (times as ffprobe prints them,
to the microsecond) for that layout only, and returns None for anything else (fragments,
several video tracks, edit lists other than the ones ffmpeg writes, a file shorter than
its boxes say): the caller then runs ffprobe. The sections our downloads write with
`-copyts` are such files too: their source start is an empty edit before the one shift."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

_CODECS = {b"avc1": "h264", b"avc3": "h264"}
_CONTAINERS = {b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass
class _Track:
    kind: bytes = b""
    timescale: int = 0
    codec: bytes = b""
    width: int = 0
    height: int = 0
    stts: list[tuple[int, int]] = field(default_factory=list)
    ctts: list[tuple[int, int]] = field(default_factory=list)
    edits: list[tuple[int, int, int]] = field(default_factory=list)  # (duration, media time, rate)
    samples: int = 0


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise ValueError("truncated box header")
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise ValueError("box runs past its parent")
        yield kind, pos + head, pos + size
        pos += size


def _table(data: bytes, start: int, fmt: str) -> list[tuple]:
    """The entries of a full box holding a counted table (stts, ctts, elst v0)."""
    (count,) = struct.unpack_from(">I", data, start + 4)
    width = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, data, start + 8 + i * width) for i in range(count)]


def _track(data: bytes, start: int, end: int, track: _Track | None = None) -> _Track:
    track = track or _Track()
    for kind, a, b in _boxes(data, start, end):
        if kind in _CONTAINERS:
            _track(data, a, b, track)
        elif kind == b"hdlr":
            track.kind = data[a + 8:a + 12]
        elif kind == b"mdhd":
            track.timescale = _timescale(data, a)
        elif kind == b"stsd":
            entry = a + 8  # version, flags, count; then the first sample entry
            track.codec = data[entry + 4:entry + 8]
            track.width, track.height = struct.unpack_from(">HH", data, entry + 8 + 24)
        elif kind == b"stts":
            track.stts = _table(data, a, ">II")
        elif kind == b"ctts":
            track.ctts = _table(data, a, ">Ii")
        elif kind == b"elst":
            fmt = ">qqhh" if data[a] == 1 else ">Iihh"
            track.edits = [(d, t, r) for d, t, r, _ in _table(data, a, fmt)]
        elif kind == b"stsz":
            track.samples = struct.unpack_from(">I", data, a + 8)[0]
    return track


def _timescale(data: bytes, a: int) -> int:
    """The time scale of a movie or media header (version 1 has 64-bit dates before it)."""
    return struct.unpack_from(">I", data, a + (20 if data[a] == 1 else 12))[0]


def _time(ts: int, timescale: int) -> float:
    """A timestamp as ffprobe prints it (`%f` of ts times the time base as a double)."""
    return float(f"{ts * (1.0 / timescale):f}")


def read_mp4(path: Path, moov_limit: int = 64 << 20) -> dict | None:
    """The fields of `cut.probe`'s record for an MP4 written by our cut, from its boxes;
    None when the file is not one this reader vouches for (then ask ffprobe)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            pos, moov = 0, None
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                box, kind = struct.unpack_from(">I4s", head)
                if box == 1:
                    box = struct.unpack_from(">Q", head, 8)[0]
                elif box == 0:
                    box = size - pos
                if box < 8 or pos + box > size:
                    return None  # truncated: ffprobe counts what is left
                if kind == b"moov":
                    if box > moov_limit:
                        return None
                    f.seek(pos)
                    moov = f.read(box)
                elif kind == b"moof":
                    return None
                pos += box
        if moov is None:
            return None
        top = list(_boxes(moov, 8, len(moov)))
        if any(kind == b"mvex" for kind, _, _ in top):
            return None
        movie_timescale = next((_timescale(moov, a) for kind, a, _ in top if kind == b"mvhd"), 0)
        traks = [_track(moov, a, b) for kind, a, b in top if kind == b"trak"]
    except (OSError, ValueError, struct.error):
        return None
    videos = [t for t in traks if t.kind == b"vide"]
    if len(videos) != 1:
        return None
    v = videos[0]
    return _probe(v, any(t.kind == b"soun" for t in traks), movie_timescale)


def _probe(v: _Track, has_audio: bool, movie_timescale: int) -> dict | None:
    codec = _CODECS.get(v.codec)
    durations = [d for n, d in v.stts for _ in range(n)]
    offsets = [o for n, o in v.ctts for _ in range(n)] or [0] * len(durations)
    if (codec is None or not v.timescale or not v.samples or v.width <= 0 or v.height <= 0
            or len(durations) != v.samples or len(offsets) != v.samples or min(offsets) < 0):
        return None
    total = sum(durations)
    if len(v.stts) > 1 and v.stts[-1][0] == 1 and v.samples > 101 and \
            v.stts[-1][1] // 10 > (total - v.stts[-1][1]) // (v.samples - 1):
        return None  # a last frame ffmpeg's demuxer shortens
    shift = 0
    if v.edits:  # ffmpeg's edits: empty ones (a later start), then one that skips the first
        # frame's composition offset; the empty time moves to the media's time base, rounded
        *empty, (_, media_time, rate) = v.edits
        if media_time < 0 or rate != 1 or any(t != -1 for _, t, _ in empty) or (empty and not movie_timescale):
            return None
        gap = sum(d for d, _, _ in empty)
        shift = media_time - ((2 * gap * v.timescale + movie_timescale) // (2 * movie_timescale) if gap else 0)
    dts, pts = 0, []
    for d, o in zip(durations, offsets):
        pts.append(dts + o - shift)
        dts += d
    if min(pts) < 0:
        return None  # frames before the edit: ffprobe's treatment of them is its own
    last_pts, last_dur = max(zip(pts, durations))
    start = _time(min(pts), v.timescale)
    end = _time(last_pts, v.timescale) + (_time(last_dur, v.timescale) if last_dur else 0.0)
    fps = v.timescale * v.samples / total if total else 0.0
    if not last_dur:
        end += 1.0 / fps if fps else 0.0
    return {"start": start, "end": end, "width": v.width, "height": v.height, "codec": codec,
            "fps": fps, "has_audio": has_audio, "nb_frames": v.samples}
