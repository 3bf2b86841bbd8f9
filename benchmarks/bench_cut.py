"""Cutting throughput: our one-ffmpeg-per-sample cut against the decode limit and against
the original HD-VILA method (stream-copy cut per clip, then a re-encode per clip).

    python benchmarks/bench_cut.py                  # default: 2 x 5 min 720p30, 1 and 2 workers
    python benchmarks/bench_cut.py --repeat 3 --count-decoded   # medians + exact decode work
    python benchmarks/bench_cut.py --quick          # tiny smoke run (< 30 s)
    python benchmarks/bench_cut.py --methods ours,limit --workers 1 \
        --variants base,dthreads1,ultrafast --repeat 3   # cut_command experiments
    python benchmarks/bench_cut.py --breakdown --repeat 3  # one span: decode, filters, presets, probe
    python benchmarks/bench_cut.py --one-pass --repeat 3   # 3 adjacent samples: one pass vs 3 cuts
    python benchmarks/bench_cut.py --bytes-per-hour        # output MB per hour, the real videos
    python benchmarks/bench_cut.py --encoders --repeat 3   # x264 settings: CPU, bytes, SSIM, PSNR

Sources are generated once with ffmpeg lavfi into --workdir and reused: 1280x720, 30 fps,
H.264 High (x264 superfast, CABAC, B-frames, ~2.5 Mb/s, keyframe every 3 s) with moving,
noisy content and AAC audio. A unique segment is encoded and then stream-copy looped to
the full length, which keeps the decode cost of real footage without paying for encoding
five minutes of it. Spans follow HD-VILA: per video a few samples, each 4-8 consecutive
clips of ~13 s, with gaps between samples.

Same-input methods (all cut the 720p source): `ours` (cut_sample, CutConfig()), `limit`
(ffmpeg decoding the same spans to -f null with the decoder thread count ours uses,
CutConfig.threads), `limit[auto]` (the same with ffmpeg's automatic thread count) and
`hdvila` (per clip a stream-copy cut, then a 3 fps/240p re-encode of that clip; ffmpeg's
default threads, as HD-VILA ran it).

Pipeline-level methods: `ours@240p` and `limit@240p` run on a 240p rendition of each
source (426x240 H.264 Main, 30 fps, same keyframe interval, ~350 kb/s, no audio: what
YouTube serves as its 240p video-only format and what our Fetcher downloads, the smallest
format >= 240p), generated once from the 720p source. HD-VILA downloaded and cut 720p
files, so hdvila (720p) / ours@240p compares the two pipelines' cutting stages, not the
cutters on equal input.

CPU time is the children's user+sys time (resource.getrusage(RUSAGE_CHILDREN) deltas), so
it counts every ffmpeg/ffprobe the method ran. Wall time is noisy on a shared machine:
use --repeat N to get medians. Nothing here asserts on timings.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cut_encoders import SETTINGS, Item, run_study

from lfvila_data.media import cut as _cut  # noqa: E402
from lfvila_data.media.cut import INPUT_GUARD, CutConfig, cut_command, cut_sample, probe  # noqa: E402


def one_cut_command(src: Path, dst: Path, start: float, end: float, cfg: CutConfig,
                    with_audio: bool) -> list[str]:
    """cut_command for one span, whichever of its signatures lfvila_data.media.cut has."""
    if hasattr(_cut, "Span"):  # cut_command(src, [Span(start, end, dst)], cfg, with_audio)
        return cut_command(src, [_cut.Span(start, end, dst)], cfg, with_audio)
    return cut_command(src, dst, start, end, cfg, with_audio)

CONTENT = [
    # (video filter graph source, audio source); each costs real decode time
    ("testsrc2=s={w}x{h}:r={fps}", "noise=alls=6:allf=t+u"),
    ("life=s={hw}x{hh}:r={fps}:mold=10:ratio=0.3:life_color=#ffcc33:death_color=#2040a0",
     "scale={w}:{h}:flags=bicubic,noise=alls=6:allf=t+u"),
    ("mandelbrot=s={hw}x{hh}:r={fps}", "scale={w}:{h}:flags=bicubic,noise=alls=6:allf=t+u"),
]


# ---------------------------------------------------------------- sources and spans

def make_source(workdir: Path, idx: int, duration: float, segment: float, width: int,
                height: int, fps: int, gop_s: float) -> Path:
    """A `duration`-second source: a unique `segment` encoded, then stream-copy looped."""
    name = f"src{idx}_{width}x{height}_{fps}_{int(duration)}s_seg{int(segment)}_g{gop_s:g}.mp4"
    out = workdir / name
    if out.is_file():
        return out
    src, vf = CONTENT[idx % len(CONTENT)]
    fmt = dict(w=width, h=height, hw=width // 2, hh=height // 2, fps=fps)
    seg = workdir / f"seg{idx}_{width}x{height}_{fps}_{int(segment)}_g{gop_s:g}.mp4"
    gop = int(round(gop_s * fps))
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", src.format(**fmt),
         "-f", "lavfi", "-i", f"sine=frequency={330 + 110 * idx}:sample_rate=44100",
         "-t", f"{segment}", "-vf", vf.format(**fmt) + ",format=yuv420p",
         "-c:v", "libx264", "-preset", "superfast", "-b:v", "2500k", "-maxrate", "3500k",
         "-bufsize", "7000k", "-g", str(gop), "-keyint_min", str(gop),
         "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(seg)],
        check=True)
    loops = max(1, int(round(duration / segment)))
    tmp = out.with_suffix(".part.mp4")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(loops - 1),
         "-i", str(seg), "-c", "copy", "-movflags", "+faststart", str(tmp)], check=True)
    tmp.replace(out)
    seg.unlink()
    return out


@dataclass
class Sample:
    video: int
    src: Path
    clips: list[tuple[float, float]]
    key: str = ""

    @property
    def start(self) -> float:
        return self.clips[0][0]

    @property
    def end(self) -> float:
        return self.clips[-1][1]

    @property
    def duration(self) -> float:
        return self.end - self.start


def make_rendition(workdir: Path, src: Path, height: int, kbps: int, fps: int,
                   gop_s: float) -> Path:
    """A YouTube-like low rendition of `src`: H.264 Main, `kbps` video, no audio."""
    out = workdir / f"{src.stem}.r{height}p_{kbps}k.mp4"
    if out.is_file():
        return out
    gop = int(round(gop_s * fps))
    tmp = out.with_suffix(".part.mp4")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0:v:0", "-an",
         "-vf", f"scale=-2:{height}:flags=bicubic,format=yuv420p", "-r", str(fps),
         "-c:v", "libx264", "-profile:v", "main", "-preset", "faster",
         "-b:v", f"{kbps}k", "-maxrate", f"{int(kbps * 1.5)}k", "-bufsize", f"{kbps * 3}k",
         "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
         "-movflags", "+faststart", str(tmp)], check=True)
    tmp.replace(out)
    return out


def plan_samples(sources: list[Path], duration: float, per_video: int, clip_len: tuple[float, float],
                 clips: tuple[int, int], seed: int) -> list[Sample]:
    """Per video `per_video` samples, one in each equal slot of the video, each a run of
    consecutive clips (gaps of 0-0.3 s between clips, like HD-VILA's ASR-aligned clips)."""
    rng = random.Random(seed)
    out = []
    slot = duration / per_video
    for v, src in enumerate(sources):
        for k in range(per_video):
            n = rng.randint(*clips)
            lens = [rng.uniform(*clip_len) for _ in range(n)]
            gaps = [rng.uniform(0.0, 0.3) for _ in range(n - 1)] + [0.0]
            total = sum(lens) + sum(gaps)
            while total > slot - 2.0 and n > 1:  # keep the sample inside its slot
                n -= 1
                lens, gaps = lens[:n], gaps[:n - 1] + [0.0]
                total = sum(lens) + sum(gaps)
            t = k * slot + rng.uniform(1.0, max(1.0, slot - total - 1.0))
            cl = []
            for ln, gp in zip(lens, gaps):
                cl.append((round(t, 3), round(t + ln, 3)))
                t += ln + gp
            out.append(Sample(v, src, cl, key=f"v{v}s{k}"))
    return out


# ---------------------------------------------------------------- methods

def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace')[-400:]}\n{' '.join(cmd)}")


def count_frames(path: Path) -> int:
    res = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                         capture_output=True, check=True)
    return int(res.stdout.decode().strip().split(",")[0])


# Variants of cut_command: each takes the command list and returns a changed copy.
def _with_input_opts(cmd: list[str], opts: list[str]) -> list[str]:
    i = cmd.index("-i")
    return cmd[:i] + opts + cmd[i:]


def _set_opt(cmd: list[str], opt: str, value: str) -> list[str]:
    cmd = list(cmd)
    cmd[cmd.index(opt) + 1] = value
    return cmd


def _set_last_opt(cmd: list[str], opt: str, value: str) -> list[str]:
    cmd = list(cmd)
    cmd[len(cmd) - cmd[::-1].index(opt)] = value
    return cmd


def _no_preroll(cmd: list[str], start: float) -> list[str]:
    cmd = list(cmd)
    cmd[cmd.index("-ss") + 1] = f"{start:.6f}"
    return cmd


def _no_faststart(cmd: list[str]) -> list[str]:
    i = cmd.index("-movflags")
    return cmd[:i] + cmd[i + 2:]


def _all_threads1(cmd: list[str]) -> list[str]:
    i = cmd.index("-i")
    cmd = cmd[:i] + ["-threads", "1"] + cmd[i:]
    j = len(cmd) - 1 - cmd[::-1].index("-threads")
    cmd[j + 1] = "1"
    return cmd[:1] + ["-filter_threads", "1"] + cmd[1:]


VARIANTS = {
    "base": lambda c, s: c,                                             # cut_command as is
    "dthreads1": lambda c, s: _with_input_opts(c, ["-threads", "1"]),   # 1 decoder thread
    "dthreads2": lambda c, s: _with_input_opts(c, ["-threads", "2"]),
    "dthreads0": lambda c, s: _with_input_opts(c, ["-threads", "0"]),   # decoder: auto
    "ethreads1": lambda c, s: _set_last_opt(c, "-threads", "1"),         # 1 x264 thread
    "allthreads1": lambda c, s: _all_threads1(c),                      # decoder+x264+filters
    "filterthreads1": lambda c, s: c[:1] + ["-filter_threads", "1"] + c[1:],
    "ultrafast": lambda c, s: _set_opt(c, "-preset", "ultrafast"),
    "superfast": lambda c, s: _set_opt(c, "-preset", "superfast"),
    "preroll0": lambda c, s: _no_preroll(c, s),                         # -ss at the span start
    "nofaststart": lambda c, s: _no_faststart(c),
    "fastflags": lambda c, s: _with_input_opts(c, ["-flags2", "+fast"]),
    # changes decoded pixels (no deblocking): listed for information, not exact
    "skiploop": lambda c, s: _with_input_opts(c, ["-skip_loop_filter", "all"]),
    # decodes no non-reference frames: exact only where fps never picks one (see "same")
    "skipnoref": lambda c, s: _with_input_opts(c, ["-skip_frame", "noref"]),
}


@dataclass
class Result:
    method: str
    workers: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    frames_bad: int = 0
    frames_checked: int = 0
    notes: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # output file -> md5 (ours only)


def ours_task(variant: str, cfg: CutConfig, out: Path, probes: dict):
    def task(s: Sample) -> tuple[int, int, str]:
        dst = out / f"{s.key}.mp4"
        if variant == "base":
            res = cut_sample(s.src, dst, s.start, s.end, cfg, probes[s.src])
        else:  # a local copy of cut_sample around a changed command
            tmp = dst.with_name(dst.name + ".part")
            cmd = VARIANTS[variant](one_cut_command(s.src, tmp, s.start, s.end, cfg,
                                                    cfg.audio and probes[s.src].has_audio),
                                    s.start)
            _run(cmd)
            res = probe(tmp)
            tmp.replace(dst)
        want = round(s.duration * cfg.fps)
        ok = abs((res.nb_frames or 0) - want) <= 1
        return int(not ok), 1, "" if ok else f"{s.key}: {res.nb_frames} frames, want {want}"
    return task


def limit_cmds(s: Sample, threads: int = 0) -> list[list[str]]:
    """Bare decode of the span; `threads` > 0 fixes the decoder's threads, 0 = ffmpeg's auto."""
    return [["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *INPUT_GUARD,
             "-ss", f"{s.start:.6f}", "-t", f"{s.duration:.6f}",
             *(["-threads", str(threads)] if threads else []), "-i", str(s.src),
             "-map", "0:v:0", "-an", "-f", "null", "-"]]


def limit_task(threads: int):
    def task(s: Sample) -> tuple[int, int, str]:
        for cmd in limit_cmds(s, threads):
            _run(cmd)
        return 0, 0, ""
    return task


def hdvila_cmds(cfg: CutConfig, out: Path, s: Sample, k: int) -> list[list[str]]:
    """The original HD-VILA way: stream-copy cut of the clip, then re-encode that file."""
    a, b = s.clips[k]
    clip = out / f"{s.key}.{k + 1}.mp4"
    small = out / f"{s.key}.{k + 1}.3fps.mp4"
    return [["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-ss", f"{a:.3f}",
             "-t", f"{b - a:.3f}", "-i", str(s.src), "-c", "copy", str(clip)],
            ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(clip),
             "-map", "0:v:0", "-an", "-vf", f"fps={cfg.fps:g},scale=-2:{cfg.height}",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",  # as measured before
             "-g", str(max(1, round(cfg.fps * 2))), "-movflags", "+faststart", str(small)]]


def hdvila_task(cfg: CutConfig, out: Path):
    def task(job: tuple[Sample, int]) -> tuple[int, int, str]:
        for cmd in hdvila_cmds(cfg, out, *job):
            _run(cmd)
        return 0, 0, ""
    return task


_DECODED = re.compile(r"Input stream #\d+:\d+ \(video\): (\d+) packets read \(\d+ bytes\); "
                      r"(\d+) frames decoded")


def decoded_frames(cmds: list[list[str]]) -> int:
    """Video packets ffmpeg fed its decoder running `cmds` (from the -v verbose end report).

    Packets read, not "frames decoded": frames an mp4 edit list hides (the keyframe
    preroll a stream-copy cut keeps) are decoded but not counted as decoded frames."""
    total = 0
    for cmd in cmds:
        i = cmd.index("-v")
        cmd = cmd[:i + 1] + ["verbose"] + cmd[i + 2:]
        res = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(res.stderr.decode(errors="replace")[-400:])
        if "copy" in cmd:  # stream copy: packets read, nothing decoded
            continue
        total += sum(int(n) for n, _ in _DECODED.findall(res.stderr.decode(errors="replace")))
    return total


def count_decoded(label: str, samples: list[Sample], cfg: CutConfig, probes: dict,
                  out: Path) -> int:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if label.startswith("limit"):  # thread count does not change what is decoded
        return sum(decoded_frames(limit_cmds(s, cfg.threads)) for s in samples)
    if label == "hdvila":
        return sum(decoded_frames(hdvila_cmds(cfg, out, s, k))
                   for s in samples for k in range(len(s.clips)))
    variant = label.partition("[")[2][:-1] or "base"
    return sum(decoded_frames([VARIANTS[variant](
        one_cut_command(s.src, out / f"{s.key}.mp4", s.start, s.end, cfg,
                        cfg.audio and probes[s.src].has_audio), s.start)]) for s in samples)


def run_method(name: str, jobs: list, task, workers: int) -> tuple[float, float, list]:
    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    c0, t0 = cpu(), time.perf_counter()
    if workers == 1:
        outs = [task(j) for j in jobs]
    else:
        with ThreadPoolExecutor(workers) as ex:
            outs = list(ex.map(task, jobs))
    return time.perf_counter() - t0, cpu() - c0, outs


# ---------------------------------------------------------------- breakdowns

def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of the child processes fn waited for)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _children_cpu() - c0


def _to_null(cmd: list[str], graph: str | None = None) -> list[str]:
    """A one-span cut_command with its output(s) replaced by -f null (and, with `graph`,
    its filter graph replaced): the same input side, seek and decode, nothing encoded."""
    cmd = list(cmd[:cmd.index("-map")])
    if graph is not None:
        cmd[cmd.index("-filter_complex") + 1] = graph
    return cmd + ["-map", "[v0]", "-f", "null", "-"]


def breakdown(src: Path, start: float, end: float, cfg: CutConfig, out: Path,
              repeat: int) -> dict[str, tuple[float, float, int]]:
    """Where one span's cut spends its CPU: start-up, bare decode, our decode + trim, the
    whole filter chain, the full cut with each x264 preset, the output probe. Medians of
    `repeat` interleaved runs: name -> (wall s, CPU s, output bytes)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    span = Sample(0, src, [(start, end)], key="span")
    cut = one_cut_command(src, out / "x.mp4", start, end, cfg, False)
    presets = {p: out / f"{p}.mp4" for p in ("veryfast", "superfast", "ultrafast")}
    steps = {
        # (an input -t 0 is read as "no limit": it decoded the whole file)
        "ffmpeg start-up, open input, decode 1 frame": lambda: _run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *INPUT_GUARD, "-i", str(src),
             "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"]),
        "bare decode (limit, 1 thread)": lambda: _run(limit_cmds(span, cfg.threads)[0]),
        "our seek + decode + trim, to null": lambda: _run(_to_null(
            cut, f"[0:v:0]trim=start={start:.6f}:end={end:.6f}[v0]")),
        "our seek + decode + whole filter chain, to null": lambda: _run(_to_null(cut)),
        **{f"full cut, x264 {p}": (lambda p=p, dst=dst: _run(_set_opt(
            one_cut_command(src, dst, start, end, cfg, False), "-preset", p)))
           for p, dst in presets.items()},
        f"output probe (probe() of the {cfg.preset} file)": lambda: probe(presets[cfg.preset]),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(repeat):
        for name, fn in steps.items():  # the probe step reads the file the cut before wrote
            runs[name].append(_timed(fn))
    size = {f"full cut, x264 {p}": dst.stat().st_size for p, dst in presets.items()}
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v), size.get(k, 0))
            for k, v in runs.items()}


def one_pass(src: Path, starts: list[float], length: float, cfg: CutConfig, source: object,
             out: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """Adjacent samples [s, s + length) cut in one ffmpeg pass (`cut_spans`) against one
    `cut_sample` each; both probe their outputs. Medians of `repeat` interleaved runs."""
    spans = [_cut.Span(s, s + length, out / f"s{i}.mp4") for i, s in enumerate(starts)]

    def together() -> None:
        bad = [r for r in _cut.cut_spans(src, spans, cfg, source) if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(bad[0])

    def apart() -> None:
        for sp in spans:
            cut_sample(src, sp.dst, sp.start, sp.end, cfg, source)

    runs: dict[str, list[tuple[float, float]]] = {"one pass (cut_spans)": [],
                                                  f"{len(spans)} separate cuts (cut_sample)": []}
    for _ in range(repeat):
        for (name, v), fn in zip(runs.items(), (together, apart)):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            v.append(_timed(fn))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for k, v in runs.items()}


def bytes_per_hour(folder: Path, out: Path, cfg: CutConfig) -> None:
    """Output bytes per hour of sample video: each real video of `folder` cut whole with
    `cut_sample` and `cfg` (for the README's sizing table)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total_b = total_s = 0.0
    print(f"\n{'video':<44}{'source':>16}{'seconds':>9}{'bytes':>11}{'MB/h':>8}")
    for src in sorted(p for p in folder.iterdir() if p.suffix in (".mp4", ".mkv", ".webm", ".avi")):
        pr = probe(src)
        res = cut_sample(src, out / f"{src.stem}.mp4", pr.start, pr.end, cfg, pr)
        size = (out / f"{src.stem}.mp4").stat().st_size
        total_b, total_s = total_b + size, total_s + res.duration
        print(f"{src.name[:43]:<44}{f'{pr.codec} {pr.width}x{pr.height}':>16}{res.duration:>9.1f}"
              f"{size:>11}{size / res.duration * 3600 / 1e6:>8.1f}")
    print(f"{'all':<44}{'':>16}{total_s:>9.1f}{int(total_b):>11}{total_b / total_s * 3600 / 1e6:>8.1f}")


def encoder_study(args, low_samples: list[Sample], cfg: CutConfig) -> None:
    """--encoders: the real videos cut whole and the samples of the 240p renditions."""
    folder = ROOT.parent / "shared" / "data" / "real" / "videos"
    real = []
    for src in sorted(p for p in folder.iterdir() if p.suffix in (".mp4", ".mkv", ".webm", ".avi")):
        pr = probe(src)
        real.append(Item("real", src.stem, src, pr.start, pr.end))
    generated = [Item("generated 240p", f"{s.src.stem}.{s.key}", s.src, s.start, s.end)
                 for s in low_samples]
    names = [n for n in args.encoders.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    run_study({"real videos": real, "generated 240p": generated}, cfg,
              args.workdir / "encoders", args.repeat, max(int(w) for w in args.workers.split(",")),
              names)


def print_breakdowns(args, sources: list[Path], low: dict[Path, Path], probes: dict,
                     cfg: CutConfig) -> None:
    """--breakdown and --one-pass: the per-span figures of docs/performance.md."""
    if args.breakdown:
        src = low.get(sources[0], sources[0])
        start = min(100.0, probes[src].end / 3)
        end = min(start + 95.0, probes[src].end - 1.0)
        res = breakdown(src, start, end, cfg, args.workdir / "out" / "breakdown", args.repeat)
        limit = res["bare decode (limit, 1 thread)"][1]
        print(f"\nbreakdown: one {end - start:.1f} s span of {src.name} "
              f"({probes[src].width}x{probes[src].height}), medians of {args.repeat} interleaved runs")
        print(f"{'step':<52}{'wall s':>8}{'CPU s':>8}{'÷ decode CPU':>14}{'bytes':>11}")
        for name, (w, c, b) in res.items():
            print(f"{name:<52}{w:>8.2f}{c:>8.2f}{c / limit:>14.2f}{b or '':>11}")
        probe_cpu = res[f"output probe (probe() of the {cfg.preset} file)"][1]
        for p in ("veryfast", "superfast", "ultrafast"):
            c = res[f"full cut, x264 {p}"][1]
            print(f"x264 {p}: ours/limit throughput by CPU {limit / c:.2f}, "
                  f"with the output probe {limit / (c + probe_cpu):.2f}")
    if args.one_pass:
        for src in (sources[0], low.get(sources[0])):
            if src is None:
                continue
            length = min(60.0, probes[src].end / 4)
            res = one_pass(src, [length * (i + 1) for i in range(3)], length, cfg, probes[src],
                           args.workdir / "out" / "one-pass", args.repeat)
            print(f"\none pass vs separate cuts: 3 adjacent {length:g} s samples of {src.name} "
                  f"({probes[src].width}x{probes[src].height}), medians of {args.repeat} interleaved runs")
            for name, (w, c) in res.items():
                print(f"  {name:<32} wall {w:7.2f} s   CPU {c:7.2f} s")
            (wa, ca), (wb, cb) = res.values()
            print(f"  separate / one pass: wall {wb / wa:.2f}, CPU {cb / ca:.2f}")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-cut"))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 30 s)")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds per source video")
    ap.add_argument("--segment", type=float, default=60.0,
                    help="seconds of unique content per source (looped to --duration)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=float, default=3.0, help="keyframe interval of the sources, s")
    ap.add_argument("--samples-per-video", type=int, default=2)
    ap.add_argument("--workers", default="1,2", help="comma list of concurrent processes")
    ap.add_argument("--methods", default="ours,limit,limit[auto],hdvila,ours@240p,limit@240p",
                    help="ours, limit (decoder threads as ours), limit[auto], hdvila; "
                         "pipeline level: ours@240p, limit@240p (on the 240p rendition)")
    ap.add_argument("--low-height", type=int, default=240, help="rendition for the @240p methods")
    ap.add_argument("--low-kbps", type=int, default=350, help="its video bitrate, kb/s")
    ap.add_argument("--variants", default="base",
                    help=f"cut_command variants run as 'ours': {','.join(VARIANTS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the cut outputs")
    ap.add_argument("--count-decoded", action="store_true",
                    help="also rerun each method once with -v verbose to count decoded frames "
                         "(deterministic work measure, immune to machine load)")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the CPU of one 95 s span of the 240p rendition, step by step, "
                         "and the three x264 presets")
    ap.add_argument("--one-pass", action="store_true",
                    help="only: three adjacent 60 s samples in one pass vs three cuts "
                         "(720p source and its 240p rendition)")
    ap.add_argument("--bytes-per-hour", type=Path, nargs="?", metavar="DIR",
                    const=ROOT.parent / "shared" / "data" / "real" / "videos",
                    help="only: output MB per hour, every video of DIR cut whole "
                         "(default: ../shared/data/real/videos)")
    ap.add_argument("--encoders", nargs="?", const=",".join(SETTINGS), metavar="NAMES",
                    help="only: the x264 trade study (cut_encoders.py) of these settings "
                         f"(default all: {', '.join(SETTINGS)}) on the real videos and the "
                         "samples of the 240p renditions")
    args = ap.parse_args(argv)
    if args.bytes_per_hour:
        bytes_per_hour(args.bytes_per_hour, args.workdir / "out" / "bytes", CutConfig())
        return 0
    clip_len, nclips = (11.0, 16.0), (4, 8)
    if args.quick:
        args.videos, args.duration, args.segment = 1, 30.0, 15.0
        args.width, args.height, args.samples_per_video = 426, 240, 2
        clip_len, nclips = (2.5, 3.3), (4, 4)
    workers = [int(w) for w in args.workers.split(",") if w]
    methods = [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sources = [make_source(args.workdir, i, args.duration, args.segment, args.width, args.height,
                           args.fps, args.gop) for i in range(args.videos)]
    low = {}
    if args.breakdown or args.one_pass:
        sources = sources[:1]
    if any(m.endswith("@240p") for m in methods) or args.breakdown or args.one_pass or args.encoders:
        low = {s: make_rendition(args.workdir, s, args.low_height, args.low_kbps, args.fps,
                                 args.gop) for s in sources}
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    probes = {s: probe(s) for s in sources}
    probe_s = time.perf_counter() - t
    probes.update({r: probe(r) for r in low.values()})
    samples = plan_samples(sources, min(probes[s].end for s in sources), args.samples_per_video,
                           clip_len, nclips, args.seed)
    low_samples = [replace(s, src=low[s.src]) for s in samples] if low else []
    cfg = CutConfig()
    if args.breakdown or args.one_pass:
        print_breakdowns(args, sources, low, probes, cfg)
        return 0
    if args.encoders:
        encoder_study(args, low_samples, cfg)
        return 0
    src_seconds = sum(s.duration for s in samples)
    clip_seconds = sum(b - a for s in samples for a, b in s.clips)
    p0 = probes[sources[0]]
    print(f"sources: {len(sources)} x {p0.duration:.0f} s {p0.width}x{p0.height} {p0.codec} "
          f"{p0.fps:g} fps, keyframe every {args.gop:g} s (ready in {gen_s:.1f} s, "
          f"probe {probe_s / len(sources):.2f} s each)")
    print(f"samples: {len(samples)}, clips: {sum(len(s.clips) for s in samples)}, "
          f"{src_seconds:.1f} source-s in samples ({clip_seconds:.1f} s inside clips)")
    for s in samples:
        print(f"  {s.key}: {s.start:8.3f}-{s.end:8.3f} ({s.duration:5.1f} s, {len(s.clips)} clips)")
    print(f"ours: CutConfig() = {cfg}")
    if low:
        r0 = probes[low[sources[0]]]
        mb = sum(r.stat().st_size for r in low.values()) / sum(s.stat().st_size for s in sources)
        print(f"@240p rendition: {r0.width}x{r0.height} {r0.codec} {r0.fps:g} fps, "
              f"{args.low_kbps} kb/s target, {mb:.3f}x the bytes of the 720p sources")

    results: dict[tuple[str, int], Result] = {}
    plan = []  # (label, jobs, task factory)
    for m in methods:
        if m == "ours":
            for v in variants:
                label = "ours" if v == "base" else f"ours[{v}]"
                plan.append((label, samples, lambda out, v=v: ours_task(v, cfg, out, probes)))
        elif m == "limit":
            plan.append(("limit", samples, lambda out: limit_task(cfg.threads)))
        elif m == "limit[auto]":
            plan.append(("limit[auto]", samples, lambda out: limit_task(0)))
        elif m == "ours@240p":
            for v in variants:
                label = "ours@240p" if v == "base" else f"ours@240p[{v}]"
                plan.append((label, low_samples, lambda out, v=v: ours_task(v, cfg, out, probes)))
        elif m == "limit@240p":
            plan.append(("limit@240p", low_samples, lambda out: limit_task(cfg.threads)))
        elif m == "hdvila":
            jobs = [(s, k) for s in samples for k in range(len(s.clips))]
            plan.append(("hdvila", jobs, lambda out: hdvila_task(cfg, out)))
        else:
            ap.error(f"unknown method {m!r}")

    for rep in range(args.repeat):
        for w in workers:
            for label, jobs, factory in plan:  # interleaved: contention hits all methods alike
                out = args.workdir / "out" / f"{label}-w{w}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                wall, cpu, outs = run_method(label, jobs, factory(out), w)
                r = results.setdefault((label, w), Result(label, w))
                r.wall.append(wall)
                r.cpu.append(cpu)
                if rep == 0:
                    r.frames_bad = sum(o[0] for o in outs)
                    r.frames_checked = sum(o[1] for o in outs)
                    r.notes = [o[2] for o in outs if o[2]]
                    if label == "hdvila":
                        r.notes = hdvila_frame_notes(out, samples, cfg)
                    if label.startswith("ours"):
                        r.digests = {f.name: hashlib.md5(f.read_bytes()).hexdigest()
                                     for f in out.glob("*.mp4")}
                print(f"  [{rep + 1}/{args.repeat}] {label:18s} workers={w}: "
                      f"wall {wall:6.2f} s, cpu {cpu:6.2f} s", flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)

    decoded: dict[str, int] = {}
    if args.count_decoded:
        src_frames = round(src_seconds * p0.fps)
        for label, jobs, _ in plan:
            decoded[label] = count_decoded(label, low_samples if "@" in label else samples,
                                           cfg, probes, args.workdir / "out" / "count")
        shutil.rmtree(args.workdir / "out" / "count", ignore_errors=True)

    print()
    print(f"{'method':18s} {'workers':>7s} {'wall s':>8s} {'CPU s':>8s} {'src-s/wall-s':>12s} "
          f"{'src-s/CPU-s':>11s} {'frames ok':>9s}" + (f" {'decoded':>8s}" if decoded else ""))
    for (label, w), r in results.items():
        wall, cpu = statistics.median(r.wall), statistics.median(r.cpu)
        ok = f"{r.frames_checked - r.frames_bad}/{r.frames_checked}" if r.frames_checked else "-"
        print(f"{label:18s} {w:7d} {wall:8.2f} {cpu:8.2f} {src_seconds / wall:12.2f} "
              f"{src_seconds / cpu:11.2f} {ok:>9s}" + (f" {decoded[label]:8d}" if decoded else ""))
    for (label, w), r in results.items():
        base = results.get((label.partition("[")[0], w))
        if "[" in label and base and base.digests:
            same = sum(base.digests.get(k) == d for k, d in r.digests.items())
            print(f"{label} w{w}: {same}/{len(base.digests)} output files byte-identical to "
                  f"{base.method}'s (same frames, same times, same pixels)")
    if decoded:
        print(f"decoded = video packets decoded in total; the samples hold {src_frames} source "
              f"frames. " + ", ".join(f"{k} {v} ({v / src_frames:.3f}x)" for k, v in decoded.items()))
    if args.repeat > 1:
        print(f"(medians of {args.repeat} runs; CPU s per run: " + "; ".join(
            f"{label} w{w}: {', '.join(f'{c:.1f}' for c in r.cpu)}"
            for (label, w), r in results.items()) + ")")
    print(f"limit: decoder threads = CutConfig.threads ({cfg.threads or 'auto'}), as ours; "
          f"limit[auto]: ffmpeg's automatic thread count")

    def ratio(w: int, num: str, den: str, what: str, target: str = "") -> None:
        """Prints time(num) / time(den), by wall and by CPU (medians)."""
        a, b = results.get((num, w)), results.get((den, w))
        if not a or not b:
            return
        rw = statistics.median(a.wall) / statistics.median(b.wall)
        rc = statistics.median(a.cpu) / statistics.median(b.cpu)
        print(f"workers={w}: {what:36s} wall {rw:5.2f}  CPU {rc:5.2f}"
              + (f"  (target {target})" if target else ""))

    print()
    print(f"same input (the {p0.height}p source for all):")
    for w in workers:
        ratio(w, "limit", "ours", "ours/limit throughput", ">= 0.9")
        ratio(w, "limit[auto]", "ours", "ours/limit[auto] throughput")
        ratio(w, "hdvila", "ours", "hdvila/ours time (x faster)", ">= 3")
        ours = results.get(("ours", w))
        for (label, ww), r in results.items():
            if ww == w and label.startswith("ours[") and ours:
                print(f"workers={w}: {label + '/ours time':28s} wall "
                      f"{statistics.median(r.wall) / statistics.median(ours.wall):5.2f}  CPU "
                      f"{statistics.median(r.cpu) / statistics.median(ours.cpu):5.2f}")
    if any(k[0].endswith("@240p") for k in results):
        print(f"pipeline level (HD-VILA cut the {p0.height}p files it downloaded; our Fetcher "
              f"downloads the {args.low_height}p rendition):")
        for w in workers:
            ratio(w, "hdvila", "ours@240p", f"hdvila({p0.height}p)/ours(240p) time", ">= 3")
            ratio(w, "limit", "ours@240p", f"limit({p0.height}p)/ours(240p) time")
            ratio(w, "limit@240p", "ours@240p", "ours/limit throughput, both 240p")
    bad = [n for r in results.values() for n in r.notes if not r.method == "hdvila"]
    for n in bad:
        print("FRAME COUNT:", n)
    for r in results.values():
        if r.method == "hdvila" and r.notes and r.workers == workers[0]:
            for n in r.notes:
                print("hdvila:", n)
    return 1 if bad else 0


def hdvila_frame_notes(out: Path, samples: list[Sample], cfg: CutConfig) -> list[str]:
    """How far the stream-copy clips are from their spans (they start at a keyframe)."""
    extra, n_off = [], 0
    for s in samples:
        for k, (a, b) in enumerate(s.clips):
            clip = out / f"{s.key}.{k + 1}.mp4"
            small = out / f"{s.key}.{k + 1}.3fps.mp4"
            pr = probe(clip)
            extra.append(pr.duration - (b - a))
            n_off += abs(count_frames(small) - round((b - a) * cfg.fps)) > 1
    return [f"{n_off}/{len(extra)} re-encoded clips off by > 1 frame from round(dur*{cfg.fps:g}); "
            f"copy clips are longer than their span by {statistics.mean(extra):.2f} s on average "
            f"(max {max(extra):.2f} s): they start at the keyframe before the span"]


if __name__ == "__main__":
    sys.exit(main())
