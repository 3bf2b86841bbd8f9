"""x264 settings for the cut, traded off: encode CPU, bytes and quality (`bench_cut.py --encoders`).

The frames x264 sees in a cut (decoded, trimmed, 3 fps, scaled) are written once per input
as y4m by the cut's own command with the encoder replaced (`reference`), so every setting
encodes the same frames and its quality is measured against exactly them: ffmpeg's `ssim`
and `psnr` filters over the whole output. Encode CPU is the CPU of an ffmpeg run that reads
the y4m and encodes it, minus that of the same run writing nothing (start-up and y4m
reading), over the process tree (`proctree.run_measured`), medians of interleaved rounds.
A cheaper setting can win at a lower crf, so each setting is also run at the (fractional)
crf that gives the default's bytes, found by a secant search on log bytes."""
from __future__ import annotations

import math
import re
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from proctree import run_measured

from lfvila_data.media.cut import CutConfig, Span, cut_command

# name -> (preset, x264-params); single changes are made on the default preset, veryfast
SETTINGS: dict[str, tuple[str, str]] = {
    "ultrafast": ("ultrafast", ""),
    "superfast": ("superfast", ""),
    "veryfast": ("veryfast", ""),
    "faster": ("faster", ""),
    "vf aq-mode=0": ("veryfast", "aq-mode=0"),
    "vf aq-mode=2": ("veryfast", "aq-mode=2"),
    "vf mbtree=0": ("veryfast", "mbtree=0"),
    "vf rc-lookahead=0": ("veryfast", "rc-lookahead=0"),
    "vf rc-lookahead=3": ("veryfast", "rc-lookahead=3"),
    "vf subme=1": ("veryfast", "subme=1"),
    "vf me=dia": ("veryfast", "me=dia"),
    "vf ref=2": ("veryfast", "ref=2"),
    "vf partitions=i8x8+i4x4": ("veryfast", "partitions=i8x8,i4x4"),  # superfast's
    "vf partitions=none": ("veryfast", "partitions=none"),
    "vf 8x8dct=0": ("veryfast", "8x8dct=0"),
    "vf weightp=0": ("veryfast", "weightp=0"),
    "vf scenecut=0": ("veryfast", "scenecut=0"),
    "vf bframes=0": ("veryfast", "bframes=0"),
    "vf b-adapt=0": ("veryfast", "b-adapt=0"),
    "vf trellis=1": ("veryfast", "trellis=1"),
    # combinations of the single changes that were as good per byte and cheaper
    "vf bframes=0+me=dia": ("veryfast", "bframes=0:me=dia"),
    "vf bframes=0+partitions": ("veryfast", "bframes=0:partitions=i8x8,i4x4"),
    "vf bframes=0+partitions+me=dia": ("veryfast", "bframes=0:partitions=i8x8,i4x4:me=dia"),
    "vf bframes=0+trellis=1": ("veryfast", "bframes=0:trellis=1"),
}
BASE, BASE_CRF = "veryfast", 23  # CutConfig's x264 settings before this study


@dataclass(frozen=True)
class Item:
    """One input of the study: a span of a source file, as one cut makes it."""

    corpus: str
    name: str
    src: Path
    start: float
    end: float


@dataclass
class Point:
    """One setting at one crf over one corpus."""

    setting: str
    crf: float
    bytes: int = 0
    frames: int = 0
    ssim: float = 0.0   # frame-weighted mean of ffmpeg's SSIM "All"
    psnr: float = 0.0   # from the pooled MSE ("average" of every frame's Y, U, V)
    cpu: list[float] = field(default_factory=list)  # encode CPU-s per round, the corpus summed


def ssim_db(s: float) -> float:
    return -10 * math.log10(max(1e-12, 1 - s))


def x264_args(setting: str, crf: float, threads: int, gop: int) -> list[str]:
    preset, params = SETTINGS[setting]
    return (["-c:v", "libx264", "-preset", preset, "-crf", f"{crf:g}", "-g", str(gop),
             "-threads", str(threads)] + (["-x264-params", params] if params else []))


def reference(item: Item, cfg: CutConfig, ref: Path) -> list[str]:
    """The cut's command for `item` with its encoder replaced by a y4m writer: the frames
    x264 would encode, bit for bit."""
    cmd = cut_command(item.src, [Span(item.start, item.end, ref)], cfg, False)
    i = cmd.index("-c:v")
    j = cmd.index("-t", i)
    return cmd[:i] + ["-an", *cmd[j:j + 2], "-f", "yuv4mpegpipe", "-y", str(ref)]


def encode_cmd(ref: Path, dst: Path | None, setting: str, crf: float, cfg: CutConfig) -> list[str]:
    """Encode the reference as the cut would (same muxer options); `dst` None: read only."""
    head = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(ref), "-an"]
    if dst is None:
        return head + ["-f", "null", "-"]
    return head + [*x264_args(setting, crf, cfg.threads, max(1, round(cfg.fps * 2))),
                   "-sn", "-dn", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4",
                   str(dst)]


_SSIM = re.compile(r"SSIM .*All:([0-9.]+)")
_PSNR = re.compile(r"PSNR .*average:([0-9.inf]+)")


def quality(out: Path, ref: Path) -> tuple[int, float, float]:
    """(frames, SSIM All, PSNR average) of `out` against the reference frames."""
    res = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-v", "info", "-i", str(out), "-i", str(ref),
         "-lavfi", "[0:v]split[a][b];[1:v]split[c][d];[a][c]ssim;[b][d]psnr", "-f", "null", "-"],
        capture_output=True, text=True, check=True)
    frames = int(re.findall(r"frame=\s*(\d+)", res.stderr)[-1])
    psnr = _PSNR.search(res.stderr).group(1)
    return frames, float(_SSIM.search(res.stderr).group(1)), 100.0 if psnr == "inf" else float(psnr)


def ref_frames(ref: Path) -> int:
    with ref.open("rb") as f:
        return f.read().count(b"FRAME")


class Study:
    """References, encodes and measures of one corpus."""

    def __init__(self, items: list[Item], cfg: CutConfig, work: Path, workers: int):
        self.items, self.cfg, self.work, self.workers = items, cfg, work, workers
        self.refs = {it.name: work / f"{it.name}.y4m" for it in items}
        for it in items:
            if not self.refs[it.name].is_file():
                subprocess.run(reference(it, cfg, self.refs[it.name]), check=True,
                               capture_output=True)
        self.frames = {n: ref_frames(r) for n, r in self.refs.items()}

    def _out(self, it: Item, setting: str, crf: float) -> Path:
        return self.work / f"{it.name}.{setting.replace(' ', '_').replace(',', '+')}.crf{crf:g}.mp4"

    def _pool(self, fn, jobs: list) -> list:
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(fn, jobs))

    def point(self, setting: str, crf: float) -> Point:
        """Encode every item once (untimed) and measure bytes and quality."""
        p = Point(setting, crf)

        def one(it: Item) -> tuple[int, int, float, float]:
            dst = self._out(it, setting, crf)
            if not dst.is_file():
                subprocess.run(encode_cmd(self.refs[it.name], dst, setting, crf, self.cfg),
                               check=True, capture_output=True)
            n, s, q = quality(dst, self.refs[it.name])
            if n != self.frames[it.name]:
                raise RuntimeError(f"{dst.name}: {n} frames, reference has {self.frames[it.name]}")
            return dst.stat().st_size, n, s, q

        mse = 0.0
        for size, n, s, q in self._pool(one, self.items):
            p.bytes += size
            p.frames += n
            p.ssim += s * n
            mse += n * 10 ** (-q / 10)  # MSE relative to 255^2
        p.ssim /= p.frames
        p.psnr = -10 * math.log10(mse / p.frames)
        return p

    def equal_bytes(self, setting: str, target: int, first: Point) -> Point:
        """The point of `setting` whose bytes are within 1 % of `target` (secant on log bytes)."""
        pts = [first]
        crf = first.crf + 6 * math.log2(first.bytes / target)  # bytes halve about every +6 crf
        for _ in range(6):
            crf = round(min(51.0, max(0.0, crf)), 2)
            p = self.point(setting, crf)
            pts.append(p)
            if abs(p.bytes / target - 1) <= 0.01:
                return p
            a, b = pts[-2], pts[-1]
            la, lb = math.log(a.bytes), math.log(b.bytes)
            slope = (lb - la) / (b.crf - a.crf) if b.crf != a.crf and lb != la else -math.log(2) / 6
            crf = b.crf + (math.log(target) - lb) / slope
        return min(pts, key=lambda q: abs(q.bytes / target - 1))

    def time_rounds(self, points: list[Point], rounds: int) -> list[float]:
        """Encode CPU of every point, rounds interleaved; returns the read-only runs' CPU-s."""
        jobs = [(p, it) for p in points for it in self.items] + [(None, it) for it in self.items]
        read_only: list[float] = []
        for _ in range(rounds):
            cpu: dict[int, float] = {}

            def one(job: tuple[Point | None, Item]) -> float:
                p, it = job
                dst = None if p is None else self.work / f"timed.{id(job)}.mp4"
                cmd = encode_cmd(self.refs[it.name], dst, p.setting if p else BASE,
                                 p.crf if p else 0, self.cfg)
                m = run_measured(cmd)
                if m.returncode:
                    raise RuntimeError(m.stderr[-400:])
                if dst is not None:
                    dst.unlink()
                return m.cpu_s

            for (p, _), c in zip(jobs, self._pool(one, jobs)):
                cpu[id(p)] = cpu.get(id(p), 0.0) + c
            for p in points:
                p.cpu.append(cpu[id(p)])
            read_only.append(cpu[id(None)])
        return read_only


def run_study(corpora: dict[str, list[Item]], cfg: CutConfig, work: Path, rounds: int,
              workers: int, settings: list[str]) -> None:
    """Print, per corpus, every setting at crf 23 and at the bytes of veryfast crf 23, the
    x264 settings of CutConfig before this study; then `cfg`'s own (CutConfig()'s now)."""
    work.mkdir(parents=True, exist_ok=True)
    own = next((n for n, v in SETTINGS.items() if v == (cfg.preset, cfg.x264_params)), None)
    for corpus, items in corpora.items():
        st = Study(items, cfg, work, workers)
        base = st.point(BASE, BASE_CRF)
        rows: list[tuple[Point, Point]] = []
        for s in settings:
            at = base if s == BASE else st.point(s, BASE_CRF)
            eq = base if s == BASE else st.equal_bytes(s, base.bytes, at)
            rows.append((at, eq))
        if own is not None:
            at = st.point(own, cfg.crf)
            rows.append((at, at))
        pts = list({id(p): p for r in rows for p in r}.values())
        read = st.time_rounds(pts, rounds)
        null = statistics.median(read)
        seconds = sum(st.frames.values()) / cfg.fps
        print(f"\n{corpus}: {len(items)} inputs, {sum(st.frames.values())} output frames "
              f"({seconds:.1f} s at {cfg.fps:g} fps); encode CPU = median of {rounds} interleaved "
              f"rounds minus the same run without encoding ({null:.2f} CPU-s, runs "
              f"{', '.join(f'{c:.2f}' for c in read)}); quality against the cut's own frames")
        b0 = statistics.median(base.cpu) - null
        print(f"{'setting':<26}{'crf':>6}{'enc CPU-s':>10}{'× CPU':>7}{'bytes':>10}{'× bytes':>8}"
              f"{'SSIM':>8}{'SSIM dB':>8}{'PSNR':>7}  |{'crf=':>6}{'× CPU':>7}{'× bytes':>8}"
              f"{'SSIM dB':>8}{'PSNR':>7}{'ΔSSIM dB':>9}{'ΔPSNR':>7}")
        for at, eq in rows:
            c, ce = statistics.median(at.cpu) - null, statistics.median(eq.cpu) - null
            print(f"{at.setting:<26}{at.crf:>6g}{c:>10.3f}{c / b0:>7.2f}{at.bytes:>10}"
                  f"{at.bytes / base.bytes:>8.3f}{at.ssim:>8.5f}{ssim_db(at.ssim):>8.3f}"
                  f"{at.psnr:>7.2f}  |{eq.crf:>6g}{ce / b0:>7.2f}{eq.bytes / base.bytes:>8.3f}"
                  f"{ssim_db(eq.ssim):>8.3f}{eq.psnr:>7.2f}"
                  f"{ssim_db(eq.ssim) - ssim_db(base.ssim):>+9.3f}{eq.psnr - base.psnr:>+7.2f}")
        print("CPU-s per round: " + "; ".join(
            f"{p.setting} crf {p.crf:g}: {', '.join(f'{c:.2f}' for c in p.cpu)}" for p in pts))
