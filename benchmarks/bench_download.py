"""Bytes downloaded vs bytes needed: `Fetcher` with section downloads against whole-file
downloads, from a loopback HTTP server (tests.httpserver.MediaServer) that counts the
bytes it sends and the requests it answers.

    python benchmarks/bench_download.py            # 3 H.264 mp4 (faststart) + 1 VP9 webm
    python benchmarks/bench_download.py --quick    # tiny smoke run (< 30 s)

"Needed" bytes of a span are the bytes of the source's packets (all streams) whose
presentation time falls inside the span (ffprobe -show_entries packet=pts_time,size).
Sources are generated once into --workdir and reused: a unique segment encoded with ffmpeg
lavfi (noisy moving content, keyframe every 2 s) and stream-copy looped to full length.
Every downloaded section is also checked to hold the whole span it was fetched for.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lfvila_data.localserver import MediaServer  # noqa: E402
from lfvila_data.media.fetch import FetchConfig, Fetched, Fetcher, Section, section_spans


@dataclass
class Source:
    name: str
    codec: str
    duration: float
    spans: list[tuple[float, float]] = field(default_factory=list)


def make_source(workdir: Path, idx: int, codec: str, duration: float, segment: float,
                width: int, height: int, fps: int = 30, gop_s: float = 2.0) -> Path:
    ext = "mp4" if codec == "h264" else "webm"
    out = workdir / f"v{idx}_{codec}_{width}x{height}_{int(duration)}s_seg{int(segment)}.{ext}"
    if out.is_file():
        return out
    gop = int(round(gop_s * fps))
    src = [f"testsrc2=s={width}x{height}:r={fps}",
           f"life=s={width // 2}x{height // 2}:r={fps}:mold=10:ratio=0.3,scale={width}:{height}",
           f"mandelbrot=s={width // 2}x{height // 2}:r={fps},scale={width}:{height}"][idx % 3]
    seg = workdir / f"seg{idx}.{ext}"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src,
           "-f", "lavfi", "-i", f"sine=frequency={330 + 110 * idx}:sample_rate=48000",
           "-t", f"{segment}", "-vf", "noise=alls=6:allf=t+u,format=yuv420p",
           "-g", str(gop), "-keyint_min", str(gop)]
    if codec == "h264":
        cmd += ["-c:v", "libx264", "-preset", "superfast", "-b:v", "700k", "-maxrate", "1000k",
                "-bufsize", "2000k", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]
    else:
        cmd += ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "700k",
                "-c:a", "libopus", "-b:a", "96k"]
    subprocess.run(cmd + [str(seg)], check=True)
    tmp = out.with_name("tmp." + out.name)
    loops = max(1, int(round(duration / segment)))
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1),
                    "-i", str(seg), "-c", "copy",
                    *(["-movflags", "+faststart"] if codec == "h264" else []), str(tmp)],
                   check=True)
    tmp.replace(out)
    seg.unlink()
    return out


def packets(path: Path) -> list[tuple[int, float, float, int]]:
    """(stream index, pts seconds, duration seconds, size) of every packet."""
    res = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "packet=stream_index,pts_time,dts_time,duration_time,size",
                          "-of", "csv=p=0", str(path)], capture_output=True, check=True)
    out = []
    for line in res.stdout.decode().splitlines():
        parts = line.split(",")
        if len(parts) < 5:
            continue
        idx, pts, dts, dur, size = parts[:5]
        t = pts if pts not in ("", "N/A") else dts
        try:
            out.append((int(idx), float(t), float(dur) if dur not in ("", "N/A") else 0.0,
                        int(size)))
        except ValueError:
            continue
    return out


def needed_bytes(pk: list[tuple[int, float, float, int]], spans: list[tuple[float, float]]) -> int:
    return sum(size for _, t, _, size in pk if any(s <= t < e for s, e in spans))


def video_range(path: Path) -> tuple[float, float]:
    """Source-time range the first video stream's frames cover in a downloaded file."""
    res = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts_time,duration_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, check=True)
    ts = []
    for line in res.stdout.decode().splitlines():
        p, d = (line.split(",") + ["", ""])[:2]
        try:
            ts.append((float(p), float(d) if d not in ("", "N/A") else 1 / 30))
        except ValueError:
            pass
    return min(t for t, _ in ts), max(t + d for t, d in ts)


def unguarded(url: str, target: Path, spans: list[tuple[float, float]], cfg: FetchConfig) -> Fetched:
    """The sections' ffmpeg commands run straight against the server: no guard, ffmpeg's own
    (autotuned) socket buffer, as yt-dlp ran them before the guard existed."""
    from lfvila_data.media.fetch import section_command  # here: the script also measures older code

    target.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    sections = []
    for a, b in section_spans(spans, cfg.margin, cfg.merge_gap):
        path = target / f"{a}{Path(url).suffix}"
        cmd = section_command(url, "mp4" if path.suffix == ".mp4" else "webm", a, b, path, cfg)
        at = cmd.index("-recv_buffer_size")
        subprocess.run(cmd[:at] + cmd[at + 2:], env=env, check=True)
        sections.append(Section(str(path), a, b))
    return Fetched(sections, sum(Path(x.path).stat().st_size for x in sections))


def cookie_file(workdir: Path) -> Path:
    path = workdir / "cookies.txt"
    path.write_text("# Netscape HTTP Cookie File\n")
    return path


def plan(sources: list[Source], per_video: tuple[int, int], cover: tuple[float, float],
         seed: int) -> None:
    """1-3 samples per video, together covering `cover` (fractions) of it, spread out."""
    rng = random.Random(seed)
    for s in sources:
        n = rng.randint(*per_video)
        total = s.duration * rng.uniform(*cover)
        slot = s.duration / n
        for k in range(n):
            ln = min(total / n, slot - 4.0)
            a = k * slot + rng.uniform(1.0, slot - ln - 1.0)
            s.spans.append((round(a, 3), round(a + ln, 3)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-download"))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 30 s)")
    ap.add_argument("--durations", default="180,240,300",
                    help="seconds of the H.264 mp4 sources, comma list")
    ap.add_argument("--webm", type=float, default=240.0,
                    help="seconds of the VP9/WebM source (0: none)")
    ap.add_argument("--segment", type=float, default=30.0,
                    help="seconds of unique content per source (looped to full length)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="sections,whole",
                    help="sections, whole, unguarded (the sections' ffmpeg commands straight to the "
                         "server, no guard, ffmpeg's own socket buffer: what the guard costs), ytdlp "
                         "(sections through yt-dlp's extractor and its ffmpeg, as with --cookies)")
    ap.add_argument("--requests", action="store_true",
                    help="print every request's range and the body bytes the server sent for it")
    args = ap.parse_args(argv)
    cover, per_video = (0.3, 0.5), (1, 3)
    durations = [float(d) for d in args.durations.split(",") if d]
    if args.quick:
        durations, args.webm, args.segment = [40.0], 40.0, 10.0
        args.width, args.height = 320, 180
        per_video = (2, 2)

    media = args.workdir / "media"
    media.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sources = []
    for i, d in enumerate(durations):
        p = make_source(media, i, "h264", d, args.segment, args.width, args.height)
        sources.append(Source(p.name, "h264", d))
    if args.webm:
        i = len(durations)
        p = make_source(media, i, "vp9", args.webm, args.segment, args.width, args.height)
        sources.append(Source(p.name, "vp9", args.webm))
    gen_s = time.perf_counter() - t
    plan(sources, per_video, cover, args.seed)
    pk = {s.name: packets(media / s.name) for s in sources}
    print(f"sources ready in {gen_s:.1f} s ({args.width}x{args.height}, keyframe every 2 s)")
    cfg_sec = FetchConfig()
    print(f"sections: FetchConfig() margin={cfg_sec.margin} s, merge_gap={cfg_sec.merge_gap} s")
    print(f"{'video':34s} {'size':>10s} {'needed':>10s} {'spans (source s)'}")
    for s in sources:
        size = (media / s.name).stat().st_size
        need = needed_bytes(pk[s.name], s.spans)
        spans = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in s.spans)
        cov = sum(b - a for a, b in s.spans) / s.duration
        print(f"{s.name:34s} {size:10d} {need:10d} {spans} ({cov:.0%} of the video)")

    # the server is on loopback, which fetches refuse unless allowed
    methods = {"sections": FetchConfig(allow_private_addresses=True),
               "whole": FetchConfig(sections=False, allow_private_addresses=True),
               "unguarded": FetchConfig(),
               # a cookie file (empty) sends even a media URL through yt-dlp (fetch.Fetcher._download)
               "ytdlp": FetchConfig(allow_private_addresses=True, cookies=str(cookie_file(args.workdir)))}
    rows, problems = [], []
    with MediaServer(media) as srv:
        for mname in [m for m in args.methods.split(",") if m]:
            cfg = methods[mname]
            dl = args.workdir / "dl" / mname
            shutil.rmtree(dl, ignore_errors=True)
            for s in sources:
                b0, r0 = srv.bytes_sent[s.name], srv.requests[s.name]
                t = time.perf_counter()
                srv.transfers.clear()
                if mname == "unguarded":
                    fetched = unguarded(srv.url(s.name), dl / s.name.split(".")[0], s.spans, cfg)
                else:
                    fetched = Fetcher(cfg, dl)(s.name.split(".")[0], srv.url(s.name), s.spans)
                wall = time.perf_counter() - t
                time.sleep(0.2)  # let the server threads finish counting
                served = srv.bytes_sent[s.name] - b0
                reqs = srv.requests[s.name] - r0
                if args.requests:
                    print(f"  {mname} {s.name}: " + ", ".join(
                        f"{t.method} {(t.range or '').removeprefix('bytes=') or 'all'}: {t.sent}"
                        for t in srv.transfers if t.name == s.name))
                files = sum(Path(sec.path).stat().st_size for sec in fetched.sections)
                need = needed_bytes(pk[s.name], s.spans)
                rows.append((mname, s.name, len(fetched.sections), reqs, served, files, need, wall))
                # each planned span must lie inside the source time of one downloaded file
                for a, b in s.spans:
                    sec = next((x for x in fetched.sections if x.covers(a, b)), None)
                    if sec is None:
                        problems.append(f"{mname} {s.name}: no section claims {a}-{b}")
                        continue
                    lo, hi = video_range(Path(sec.path))
                    if lo > a + 1e-3 or hi < b - 1e-3:
                        problems.append(f"{mname} {s.name}: section {sec.start}-{sec.end} file "
                                        f"holds video {lo:.3f}-{hi:.3f}, span {a}-{b} not inside")
                if mname != "whole":
                    for sec, want in zip(fetched.sections, section_spans(s.spans, cfg.margin,
                                                                         cfg.merge_gap)):
                        lo, hi = video_range(Path(sec.path))
                        print(f"  {s.name}: section {want[0]:.3f}-{want[1]:.3f} -> file video "
                              f"{lo:.3f}-{hi:.3f}, {Path(sec.path).stat().st_size} bytes")
            shutil.rmtree(dl, ignore_errors=True)

    print()
    print(f"{'method':9s} {'video':34s} {'files':>5s} {'reqs':>4s} {'served':>10s} "
          f"{'file bytes':>10s} {'needed':>10s} {'served/need':>11s} {'file/need':>9s} {'wall s':>6s}")
    for m, name, nf, reqs, served, files, need, wall in rows:
        print(f"{m:9s} {name:34s} {nf:5d} {reqs:4d} {served:10d} {files:10d} {need:10d} "
              f"{served / need:11.2f} {files / need:9.2f} {wall:6.2f}")
    print()
    print(f"{'method':9s} {'served':>11s} {'file bytes':>11s} {'needed':>11s} {'served/need':>11s} "
          f"{'file/need':>9s} {'reqs/video':>10s}   (all videos)")
    for m in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == m]
        served, files, need = (sum(r[i] for r in sel) for i in (4, 5, 6))
        reqs = sum(r[3] for r in sel) / len(sel)
        print(f"{m:9s} {served:11d} {files:11d} {need:11d} {served / need:11.2f} "
              f"{files / need:9.2f} {reqs:10.1f}")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
