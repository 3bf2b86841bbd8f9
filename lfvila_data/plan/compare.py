"""`lfvila-data compare-plans A B`: how far two plans of the same metadata are apart, e.g.
the official LF-VILA-8M groups (`--groups`) and our rule, to tune --max-gap, --min-clips
and --max-clips towards the official samples.

Plans are read part by part and spilled to a temporary folder in buckets by a hash of
the video id (a video's samples of both plans meet in one bucket), then compared bucket
by bucket, so memory holds one bucket of both plans, never a whole plan."""
from __future__ import annotations

import json
import tempfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lfvila_data.inputs import InputError
from lfvila_data.plan.join import iter_plan_parts

_SPILL_SCHEMA = pa.schema([("video_id", pa.string()), ("clip_ids", pa.list_(pa.string()))])


@dataclass
class PlanSide:
    """The totals of one plan and its histogram of clips per sample."""

    path: str
    samples: int = 0
    clips: int = 0
    hours: float = 0.0
    clips_per_sample: dict[int, int] = field(default_factory=dict)


@dataclass
class PlanComparison:
    """What compare-plans reports (written as compare.json)."""

    a: PlanSide
    b: PlanSide
    clips_in_both: int = 0
    clips_only_a: int = 0
    clips_only_b: int = 0
    exact_matches: int = 0  # samples with the same clip list in both plans
    match_rate_a: float = 0.0  # exact_matches / samples of A
    match_rate_b: float = 0.0
    clip_recall: float = 0.0  # clips_in_both / distinct clips of A: how much of A's footage B keeps
    png: str | None = None


def build_dir_of(path: str) -> str:
    """The build directory of a build or of its `plan/` folder; a one-line error otherwise."""
    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if fs.exists(f"{root}/plan/_SUCCESS.json"):
        return path.rstrip("/")
    if fs.exists(f"{root}/_SUCCESS.json") and root.rsplit("/", 1)[-1] == "plan":
        return path.rstrip("/").rsplit("/", 1)[0] or "/"
    raise InputError(f"{path!r} is neither a build directory with a finished plan nor its plan/ folder")


def _spill(path: str, side: PlanSide, tmp: Path, name: str, num_buckets: int) -> None:
    """Stream one plan's parts into per-bucket parquet files, counting as it goes."""
    hist: Counter = Counter()
    seconds = 0.0
    for i, table in enumerate(iter_plan_parts(build_dir_of(path))):
        if not table.num_rows:
            continue
        n_clips = table.column("n_clips").to_numpy()
        hist.update(n_clips.tolist())
        side.samples += table.num_rows
        side.clips += int(n_clips.sum())
        seconds += float(pc.sum(table.column("duration")).as_py() or 0.0)
        clips = table.column("clips").combine_chunks()
        clip_ids = pa.ListArray.from_arrays(clips.offsets, clips.values.field("clip_id"))
        videos = table.column("video_id").to_pylist()
        buckets = np.fromiter((zlib.crc32(v.encode()) % num_buckets for v in videos), np.int64, len(videos))
        spill = pa.table({"video_id": table.column("video_id"), "clip_ids": clip_ids}, schema=_SPILL_SCHEMA)
        for b in np.unique(buckets):
            d = tmp / f"{name}-{b:05d}"
            d.mkdir(exist_ok=True)
            pq.write_table(spill.filter(pa.array(buckets == b)), d / f"{i:06d}.parquet")
    side.hours = round(seconds / 3600, 6)
    side.clips_per_sample = dict(sorted(hist.items()))


def _bucket(tmp: Path, name: str, b: int) -> list[tuple[str, ...]]:
    d = tmp / f"{name}-{b:05d}"
    if not d.exists():
        return []
    return [tuple(ids) for ids in pq.read_table(d, schema=_SPILL_SCHEMA).column("clip_ids").to_pylist()]


def compare_plans(a: str, b: str, num_buckets: int = 64) -> PlanComparison:
    """Compare plans `a` and `b` (build directories or their plan/ folders)."""
    result = PlanComparison(PlanSide(a), PlanSide(b))
    with tempfile.TemporaryDirectory(prefix="lfvila-compare-") as d:
        tmp = Path(d)
        _spill(a, result.a, tmp, "a", num_buckets)
        _spill(b, result.b, tmp, "b", num_buckets)
        distinct_a = 0
        for bucket in range(num_buckets):
            samples_a, samples_b = _bucket(tmp, "a", bucket), _bucket(tmp, "b", bucket)
            clips_a = {c for s in samples_a for c in s}
            clips_b = {c for s in samples_b for c in s}
            distinct_a += len(clips_a)
            result.clips_in_both += len(clips_a & clips_b)
            result.clips_only_a += len(clips_a - clips_b)
            result.clips_only_b += len(clips_b - clips_a)
            result.exact_matches += len(set(samples_a) & set(samples_b))
    result.match_rate_a = round(result.exact_matches / max(result.a.samples, 1), 6)
    result.match_rate_b = round(result.exact_matches / max(result.b.samples, 1), 6)
    result.clip_recall = round(result.clips_in_both / max(distinct_a, 1), 6)
    return result


def plot_histograms(result: PlanComparison, path: Path) -> None:
    """Clips per sample of both plans, side by side on one x axis, as a PNG."""
    from lfvila_data.shards.stats import _figure

    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    top = max([*result.a.clips_per_sample, *result.b.clips_per_sample, 1])
    for ax, side, label, color in ((axes[0], result.a, "A", "#4C72B0"), (axes[1], result.b, "B", "#DD8452")):
        ax.bar(list(side.clips_per_sample), list(side.clips_per_sample.values()), width=0.9, color=color)
        ax.set_title(f"{label}: {side.path}\n{side.samples:,} samples, {side.clips:,} clips, {side.hours:,.2f} h",
                     fontsize=9)
        ax.set_xlabel("clips per sample")
        ax.set_xlim(0, top + 1)
    axes[0].set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(result: PlanComparison, output: str) -> PlanComparison:
    """Write compare.json and clips_per_sample.png under `output` (a local folder)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "clips_per_sample.png"
    plot_histograms(result, png)
    result.png = str(png)
    (out / "compare.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def report_rows(r: PlanComparison) -> list[tuple[str, str]]:
    """The report as rows for the printed summary table."""
    def side(s: PlanSide) -> str:
        return f"{s.samples:,} samples, {s.clips:,} clips, {s.hours:,.2f} h"

    return [("A", r.a.path), ("B", r.b.path), ("A plan", side(r.a)), ("B plan", side(r.b)),
            ("clips in both", f"{r.clips_in_both:,}"), ("clips only in A", f"{r.clips_only_a:,}"),
            ("clips only in B", f"{r.clips_only_b:,}"),
            ("same clip list", (f"{r.exact_matches:,} samples ({100 * r.match_rate_a:.1f} % of A, "
                                f"{100 * r.match_rate_b:.1f} % of B)")),
            ("report", str(r.png))]
