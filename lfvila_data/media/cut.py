"""Probe and cut: one ffmpeg process per sample, exact to one output frame.

Timestamps are kept as they are in the source (`-copyts`) and the span is selected with
`trim` on absolute source time, so a file holding only a section of the video (what a
section download gives, starting at some keyframe) cuts exactly like the whole file.
`-ss` with `-seek_timestamp` only skips ahead to a keyframe before the span, so each span
is decoded once and nothing before it is decoded. ffmpeg streams from and to disk:
memory does not grow with the length of the video."""
from __future__ import annotations

import json
import math
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lfvila_data.media.mp4 import read_mp4
from lfvila_data.output.fingerprint import SPEED

# Inputs are local files we downloaded: never let a file make ffmpeg open anything else
# (HLS/concat playlists, data: URLs, network), and only demux real video containers.
INPUT_GUARD = [
    "-protocol_whitelist", "file",
    "-format_whitelist",
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,nut,h264,hevc",
]
# CutConfig.x264_params: see there; "" is x264's preset alone (what builds used before)
X264_PARAMS = "bframes=0:partitions=i8x8,i4x4:me=dia"
# Seek to the keyframe at or before this many seconds ahead of the span: a margin for
# demuxers whose seek is coarse (pts vs dts); small, since on average it costs its own
# length in extra decoding per sample.
PREROLL = 0.5


class MediaError(Exception):
    """A file that ffmpeg cannot use; `reason` is for the ledger."""


@dataclass(frozen=True)
class CutConfig:
    """How sample videos are encoded. Defaults follow LF-VILA (3 fps, 240 px).

    Every field that changes a sample file is content (output/fingerprint.py): a rerun
    that changes one is refused unless --rebuild, so the files never mix settings."""

    fps: float = 3.0        # content: frames in every file
    height: int = 240       # content: frame size
    copy: bool = False      # content: the source stream instead of a re-encode
    audio: bool = False     # content: an audio track or none
    crf: int = 24           # content: quality and size of the encode
    preset: str = "veryfast"  # content: a different x264 preset gives other bytes and sizes
    # content: x264 options on top of the preset. At 3 fps a B-frame is 1/3 s from its
    # references and saves few bits; without B-frames, with inter blocks of 16x16 only
    # (superfast's partitions) and diamond motion search, crf 24 gives the bytes of plain
    # veryfast at crf 23 with higher SSIM and PSNR for ~0.6x the encode CPU
    # (docs/performance.md, "x264 settings")
    x264_params: str = X264_PARAMS
    # speed: decoder, filter and encoder threads (Ray reserves as many CPUs); x264 frame
    # threads may move a few bits, never the frames, size or quality a reader gets
    threads: int = field(default=1, metadata=SPEED)
    timeout: float = field(default=3600.0, metadata=SPEED)


@dataclass(frozen=True)
class Probe:
    """What we need to know of a media file, in its own (kept) timestamps."""

    start: float
    end: float
    width: int
    height: int
    codec: str
    fps: float
    has_audio: bool
    nb_frames: int | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"{cmd[0]} timed out after {timeout:.0f} s") from e


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def _rate(s: str | None) -> float:
    if not s or s in ("0/0", "0"):
        return 0.0
    num, _, den = s.partition("/")
    return float(num) / float(den or 1) if float(den or 1) else 0.0


def probe(path: Path, *, timeout: float = 300.0) -> Probe:
    """Geometry of the first video stream and the source-time range its packets cover.

    The range comes from the packets themselves: container durations lie (Matroska
    written with kept timestamps reports its end time as its duration) and truncated
    files still announce their full length. One ffprobe run reads both (a run costs ~0.1
    CPU-s of start-up, a build probes every section and every output); a file that run
    cannot read is asked again the slower way, which says why."""
    return _probe_once(path, timeout) or _probe_twice(path, timeout)


# what one ffprobe run prints: the packets of every stream as it reads them, then the streams
_ENTRIES = ("stream=index,codec_type,codec_name,width,height,avg_frame_rate,r_frame_rate:"
            "stream_disposition=attached_pic:packet=stream_index,pts_time,dts_time,duration_time")


def _probe_once(path: Path, timeout: float) -> Probe | None:
    """`probe` in one ffprobe run, or None when that run fails (`_probe_twice` says why)."""
    cmd = ["ffprobe", "-v", "error", *INPUT_GUARD, "-show_entries", _ENTRIES, "-of", "compact", str(path)]
    scans: dict[str, _Scan] = {}
    streams: list[dict[str, str]] = []

    def read(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("packet|"):
            fields = dict(kv.partition("=")[::2] for kv in line.split("|")[1:])
            scans.setdefault(fields.get("stream_index", ""), _Scan()).add(
                fields.get("pts_time"), fields.get("dts_time"), fields.get("duration_time"))
        elif line.startswith("stream|"):
            streams.append(dict(kv.partition("=")[::2] for kv in line.split("|")[1:]))

    if _each_line(cmd, timeout, read) != 0 or not streams:
        return None
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and s.get("disposition:attached_pic") != "1"), None)
    if video is None:
        raise MediaError("file has no video stream")
    scan = scans.get(video.get("index", ""), _Scan())
    return _make_probe(video, scan, any(s.get("codec_type") == "audio" for s in streams))


def _probe_twice(path: Path, timeout: float) -> Probe:
    """`probe` as a stream query and a packet scan: the reasons a file is refused."""
    res = _run(["ffprobe", "-v", "error", *INPUT_GUARD, "-print_format", "json",
                "-show_format", "-show_streams", str(path)], timeout)
    if res.returncode != 0:
        raise MediaError(f"not a readable media file: {_last_line(res.stderr)}")
    info = json.loads(res.stdout or b"{}")
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not (s.get("disposition") or {}).get("attached_pic")), None)
    if video is None:
        raise MediaError("file has no video stream")
    return _make_probe(video, _scan_packets(path, int(video["index"]), timeout),
                       any(s.get("codec_type") == "audio" for s in streams))


def _make_probe(video: dict, scan: _Scan, has_audio: bool) -> Probe:
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise MediaError("video stream has no size (corrupt file)")
    if not scan.count:
        raise MediaError("video stream has no packets (truncated or corrupt file)")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    end = scan.last[0] + (scan.last[1] or (1.0 / fps if fps else 0.0))
    return Probe(start=scan.start, end=end, width=width, height=height,
                 codec=str(video.get("codec_name")), fps=fps, has_audio=has_audio,
                 nb_frames=scan.count)


def probe_written(path: Path, *, timeout: float = 300.0) -> Probe:
    """`probe` of a file we wrote (a sample we cut, a section we downloaded): read from
    its MP4 boxes when it is an MP4 as ffmpeg writes it (no ffprobe process, whose
    start-up costs more than the rest of a short sample's probe), else by ffprobe."""
    facts = read_mp4(path)
    return Probe(**facts) if facts is not None else probe(path, timeout=timeout)


def media_duration(path: Path, *, timeout: float = 60.0) -> float | None:
    """The container's duration in seconds, or None when it has none or cannot be read.

    Cheap (no packet scan): the text stage uses it to drop subtitles past a local video's
    end before planning, as yt-dlp's duration does for URLs; `probe` stays the authority
    for cutting."""
    try:
        res = _run(["ffprobe", "-v", "error", *INPUT_GUARD, "-show_entries", "format=duration",
                    "-of", "csv=p=0", str(path)], timeout)
    except MediaError:
        return None
    try:
        value = float(res.stdout.decode("ascii", "replace").strip()) if res.returncode == 0 else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


@dataclass
class _Scan:
    """First pts, (last pts, its duration) and count of one stream's packets."""

    start: float = float("inf")
    last: tuple[float, float] = (float("-inf"), 0.0)
    count: int = 0

    def add(self, pts: str | None, dts: str | None, dur: str | None) -> None:
        try:  # AVI and raw streams carry only dts on most packets
            t = float(pts if pts not in (None, "", "N/A") else dts)
            d = float(dur) if dur not in (None, "", "N/A") else 0.0
        except (TypeError, ValueError):
            return
        self.count += 1
        self.start = min(self.start, t)
        self.last = max(self.last, (t, d))


def _scan_packets(path: Path, index: int, timeout: float) -> _Scan:
    """The packets of one stream, reading ffprobe's output as it comes: memory stays
    flat however long the video."""
    cmd = ["ffprobe", "-v", "error", *INPUT_GUARD, "-select_streams", str(index),
           "-show_entries", "packet=pts_time,dts_time,duration_time", "-of", "csv=p=0", str(path)]
    scan = _Scan()
    _each_line(cmd, timeout, lambda line: scan.add(*(line.decode("ascii", "replace").strip().split(",")
                                                      + ["", ""])[:3]))
    return scan


def _each_line(cmd: list[str], timeout: float, on_line: Callable[[bytes], None]) -> int:
    """Run `cmd`, handing each line of its output to `on_line` as it comes (memory stays
    flat however long the video); killed after `timeout` s. Its exit status."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                on_line(line)
        finally:
            timer.cancel()
    return proc.returncode


def x264_params_problem(params: str) -> str | None:
    """Why x264 would not take `params`, or None. ffmpeg only warns of an option x264
    cannot parse and encodes without it, so one frame is encoded at start-up to find out."""
    if not params:
        return None
    res = _run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "warning", "-f", "lavfi", "-i",
                "color=s=64x64:d=0.04", "-frames:v", "1", "-c:v", "libx264", "-x264-params", params,
                "-f", "null", "-"], 60.0)
    said = [ln for ln in res.stderr.decode("utf-8", "replace").splitlines() if "Error" in ln]
    if res.returncode != 0 or said:
        return (said[0].split("] ", 1)[-1] if said else _last_line(res.stderr)).strip()
    return None


@dataclass(frozen=True)
class Span:
    """One output of a cut: source time [start, end) into `dst`."""

    start: float
    end: float
    dst: Path


def cut_command(src: Path, spans: list[Span], cfg: CutConfig, with_audio: bool) -> list[str]:
    """The ffmpeg argument list (no shell involved) that cuts every span of `src` in one
    decode pass: a single seek before the first span, `split` to one trim per output.
    Stream copy (`cfg.copy`) takes exactly one span."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *INPUT_GUARD,
           "-seek_timestamp", "1"]
    tail = ["-sn", "-dn", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4"]
    if cfg.copy:
        if len(spans) != 1:
            raise ValueError("stream copy cuts one span per process")
        (s,) = spans
        # stream copy starts at the keyframe at or before `start`: fast, not frame exact
        return cmd + ["-ss", f"{s.start:.6f}", "-i", str(src), "-t", f"{s.end - s.start:.6f}",
                      "-map", "0:v:0", *(["-map", "0:a:0"] if with_audio else ["-an"]),
                      "-c", "copy", *tail, str(s.dst)]
    n = len(spans)
    graph = [f"[0:v:0]split={n}" + "".join(f"[s{i}]" for i in range(n))]
    graph += [f"[s{i}]trim=start={s.start:.6f}:end={s.end:.6f},setpts=PTS-STARTPTS,"
              f"fps={cfg.fps:g},scale=-2:{cfg.height}:flags=bicubic,setsar=1,format=yuv420p[v{i}]"
              for i, s in enumerate(spans)]
    if with_audio:
        graph += [f"[0:a:0]asplit={n}" + "".join(f"[r{i}]" for i in range(n))]
        graph += [f"[r{i}]atrim=start={s.start:.6f}:end={s.end:.6f},asetpts=PTS-STARTPTS[a{i}]"
                  for i, s in enumerate(spans)]
    # -threads before -i sets the decoder's threads (nearly all of the cost), after an
    # output the encoder's: a cut uses the CPUs Ray gave it, no more
    cmd += ["-ss", f"{max(0.0, min(s.start for s in spans) - PREROLL):.6f}", "-noaccurate_seek",
            "-copyts", "-threads", str(cfg.threads), "-i", str(src),
            "-filter_complex", ";".join(graph), "-filter_threads", str(max(1, cfg.threads))]
    for i, s in enumerate(spans):
        cmd += ["-map", f"[v{i}]", "-c:v", "libx264", "-preset", cfg.preset, "-crf", str(cfg.crf),
                *(["-x264-params", cfg.x264_params] if cfg.x264_params else []),
                "-g", str(max(1, round(cfg.fps * 2))), "-threads", str(cfg.threads)]
        cmd += (["-map", f"[a{i}]", "-c:a", "aac", "-b:a", "96k"] if with_audio else ["-an"])
        # an output whose trim has ended must not be padded while the others go on: the
        # fps filter would repeat its last frame until the whole graph ends
        cmd += ["-t", f"{s.end - s.start:.6f}", *tail, str(s.dst)]
    return cmd


def cut_spans(src: Path, spans: list[Span], cfg: CutConfig,
              source: Probe | None = None) -> list[Probe | MediaError]:
    """Cut several spans of one file in one ffmpeg run; a probe or an error per span.

    Each output is written under a temporary name and renamed, so a killed job never
    leaves a partial file."""
    source = source or probe(src)
    results: list[Probe | MediaError | None] = [None] * len(spans)
    todo: list[int] = []
    for i, s in enumerate(spans):
        if s.start >= source.end or s.end <= source.start:
            results[i] = MediaError(f"span {s.start:.3f}-{s.end:.3f} s is outside the media "
                                    f"({source.start:.3f}-{source.end:.3f} s)")
        else:
            todo.append(i)
    groups = [[i] for i in todo] if cfg.copy else ([todo] if todo else [])
    with_audio = cfg.audio and source.has_audio
    for group in groups:
        tmps = [Span(spans[i].start, spans[i].end, spans[i].dst.with_name(spans[i].dst.name + ".part"))
                for i in group]
        for t in tmps:
            t.dst.parent.mkdir(parents=True, exist_ok=True)
        res = _run(cut_command(src, tmps, cfg, with_audio), cfg.timeout * len(group))
        for i, t in zip(group, tmps):
            results[i] = _finish(t, spans[i].dst, res)
    return results  # type: ignore[return-value]


def _finish(tmp: Span, dst: Path, res: subprocess.CompletedProcess) -> Probe | MediaError:
    """Check one output of a cut and move it into place."""
    where = f"{tmp.start:.3f}-{tmp.end:.3f}"
    if res.returncode != 0:
        tmp.dst.unlink(missing_ok=True)
        return MediaError(f"ffmpeg could not cut {where}: {_last_line(res.stderr)}")
    try:
        out = probe_written(tmp.dst)
    except MediaError as e:
        tmp.dst.unlink(missing_ok=True)
        return MediaError(f"cut {where} produced no usable video: {e}")
    tmp.dst.replace(dst)
    return out


def cut_sample(src: Path, dst: Path, start: float, end: float, cfg: CutConfig,
               source: Probe | None = None) -> Probe:
    """Cut [start, end) of `src` (source time) into `dst`; returns the output's probe."""
    (result,) = cut_spans(src, [Span(start, end, dst)], cfg, source)
    if isinstance(result, MediaError):
        raise result
    return result
