"""`lfvila-data stats`: the numbers of a build or shard directory, PNG plots of their
distributions and of the failure codes, and a self-contained index.html.

A build directory is recognised by a manifest (`manifest/` parts, or an older single
`manifest.parquet`) with a `clips` column (words are counted from the texts, failures read
from `failures/`); a shard directory by
`stats.json` and a manifest with `n_clips`, `duration`, `paragraph_words`, `clip_words`.
Columns are read with Arrow and words counted by Arrow kernels, so millions of samples
take seconds; failures are counted by their code."""
from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lfvila_data.output import manifest as tables
from lfvila_data.plan.join import word_account_rows
from lfvila_data.progress import fetched_split, human_bytes
from lfvila_data.records import paragraph

# name: (title, x axis label with unit, what is counted on the y axis, integer values)
DISTRIBUTIONS = {
    "clips_per_sample": ("Clips per sample", "clips per sample", "samples", True),
    "sample_duration_s": ("Sample duration", "sample duration (s)", "samples", False),
    "words_per_paragraph": ("Words per paragraph", "words per paragraph", "samples", True),
    "words_per_clip": ("Words per clip", "words per clip", "clips", True),
}
SHARD_COLUMNS = ("n_clips", "duration", "paragraph_words", "clip_words")
TOP_CODES = 15
MAX_BINS = 60
FAILURE_PNG = "failure_codes.png"


class StatsInputError(Exception):
    """The directory is neither a build nor a shard directory (the CLI exits 2 on it)."""


# ---------------------------------------------------------------------------------------
# numbers


def histogram_edges(a: np.ndarray, integer: bool) -> np.ndarray:
    """One bin per value for small integer ranges, else numpy's 'auto' capped at MAX_BINS
    (integer data keeps whole-number bins centred on the values)."""
    lo, hi = float(a.min()), float(a.max())
    if integer:
        return _integer_edges(lo, hi, lambda: len(np.histogram_bin_edges(a, bins="auto")) - 1)
    edges = np.histogram_bin_edges(a, bins="auto")
    bins = min(len(edges) - 1, MAX_BINS)
    return edges if len(edges) - 1 == bins else np.histogram_bin_edges(a, bins=bins)


def _integer_edges(lo: float, hi: float, auto_bins) -> np.ndarray:
    """Integer data's edges from its range and, for a wide one, numpy's 'auto' bin count."""
    if hi - lo <= MAX_BINS:
        return np.arange(lo - 0.5, hi + 1.5)
    bins = min(auto_bins(), MAX_BINS)
    width = float(np.ceil((hi - lo + 1) / bins))
    return np.arange(lo - 0.5, hi + width + 0.5, width)


class ValueCounts:
    """How often each non-negative integer occurs, added a batch at a time: what the stats
    keep of every clip's word count (a few hundred distinct values), so that memory follows
    the largest value, not the number of clips (4 + 8 bytes a clip, and more for sorting,
    at 150M clips: several GB). `distribution` of it gives the numbers of the values."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)  # counts[v]: how many values are v

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values)
        if not v.size:
            return
        if v.min() < 0:
            raise ValueError("ValueCounts counts non-negative integers")
        c = np.bincount(v)
        if len(c) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(c) - len(self.counts)))
        self.counts[:len(c)] += c

    def total(self) -> int:
        """The sum of the values."""
        return int(np.dot(np.arange(len(self.counts), dtype=np.int64), self.counts))


def _percentiles(values: np.ndarray, counts: np.ndarray, q: list[float]) -> np.ndarray:
    """`np.percentile(np.repeat(values, counts), q)` (its default 'linear' method, step for
    step, so the floats are the same) from sorted distinct values and their counts."""
    n = int(counts.sum())
    virtual = (n - 1) * np.true_divide(np.asarray(q), 100)
    below = np.floor(virtual)
    above = np.where(virtual >= n - 1, n - 1, below + 1)
    below = np.where(virtual >= n - 1, n - 1, below)
    ends = np.cumsum(counts)
    a = values[np.searchsorted(ends, below, side="right")].astype(float)
    b = values[np.searchsorted(ends, above, side="right")].astype(float)
    t = virtual - np.where(virtual >= n - 1, -1, below)  # numpy's index of the last value is -1
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _counted_bins(values: np.ndarray, counts: np.ndarray) -> int:
    """The number of bins `np.histogram_bin_edges(np.repeat(values, counts), "auto")`
    gives (its estimators, step for step), for a range wider than one value."""
    n = int(counts.sum())
    ptp = float(values[-1]) - float(values[0])
    p75, p25 = _percentiles(values, counts, [75, 25])
    fd = 2.0 * np.subtract(p75, p25) * n ** (-1.0 / 3.0)
    width = min(max(fd, ptp / np.sqrt(n) / 2), ptp / (np.log2(n) + 1.0))
    return int(np.ceil(ptp / width)) if width else 1


def _counted_distribution(c: ValueCounts) -> dict:
    """`distribution` of the counted values, byte for byte, without them."""
    values = np.flatnonzero(c.counts)
    if not len(values):
        return {"count": 0}
    counts = c.counts[values]
    n = int(counts.sum())
    lo, hi = float(values[0]), float(values[-1])
    edges = _integer_edges(lo, hi, lambda: _counted_bins(values, counts))
    hist, _ = np.histogram(values.astype(float), bins=edges, weights=counts)
    p5, median, p95 = _percentiles(values, counts, [5, 50, 95])
    return {"count": n, "mean": float(np.float64(c.total()) / n), "median": float(median),
            "p5": float(p5), "p95": float(p95), "min": lo, "max": hi,
            "histogram": {"edges": [round(float(e), 6) for e in edges],
                          "counts": [int(x) for x in hist]}}


def distribution(values: np.ndarray | ValueCounts, integer: bool = False) -> dict:
    """Summary numbers and a histogram, JSON-ready; count 0 when there are no values.
    Counted values (`ValueCounts`, integers) give the numbers of the values themselves."""
    if isinstance(values, ValueCounts):
        return _counted_distribution(values)
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"count": 0}
    edges = histogram_edges(a, integer)
    counts, _ = np.histogram(a, bins=edges)
    p5, median, p95 = np.percentile(a, [5, 50, 95])
    return {"count": int(a.size), "mean": float(a.mean()), "median": float(median),
            "p5": float(p5), "p95": float(p95), "min": float(a.min()), "max": float(a.max()),
            "histogram": {"edges": [round(float(e), 6) for e in edges],
                          "counts": [int(c) for c in counts]}}


def word_counts(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whitespace-separated words per string (like str.split()); nulls count 0."""
    trimmed = pc.utf8_trim_whitespace(texts)
    n = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
    n = pc.if_else(pc.equal(trimmed, ""), 0, n)
    return np.asarray(pc.fill_null(n, 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def failure_stats(failures: pd.DataFrame | Iterable[pd.DataFrame]) -> dict:
    """Failure rows by stage and by code (records.FailureCode), the most common
    (stage, code) pairs first, each with one reason as an example (the first). A ledger
    older than the code column counts its rows as `unknown`. Takes the ledger whole or in
    frames (a batch at a time: a build's ledger is never held whole)."""
    counts = _FailureCounts()
    for frame in ([failures] if isinstance(failures, pd.DataFrame) else failures):
        counts.add(frame)
    return counts.result()


class _FailureCounts:
    """The ledger's counts, summed frame by frame."""

    def __init__(self) -> None:
        self.total = self.permanent = 0
        self.stages: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.pairs: dict[tuple[str, str], list] = {}  # (stage, code) -> [count, first reason]

    def add(self, failures: pd.DataFrame) -> None:
        if failures.empty:
            return
        codes = failures["code"] if "code" in failures else pd.Series(None, index=failures.index, dtype=object)
        df = failures.assign(stage=failures["stage"].fillna("unknown"), code=codes.fillna("unknown"),
                             reason=failures["reason"].fillna(""))
        grouped = df.groupby(["stage", "code"], sort=False).agg(count=("reason", "size"),
                                                                example=("reason", "first"))
        for (stage, code), count, example in zip(grouped.index, grouped["count"], grouped["example"]):
            pair = self.pairs.setdefault((stage, code), [0, example])
            pair[0] += int(count)
        self.total += len(df)
        self.permanent += int(df["permanent"].fillna(False).astype(bool).sum()) if "permanent" in df else 0
        self.stages.update({k: int(v) for k, v in df["stage"].value_counts().items()})
        self.codes.update({k: int(v) for k, v in df["code"].value_counts().items()})

    def result(self) -> dict:
        if not self.total:
            return {"total": 0, "permanent": 0, "by_stage": {}, "by_code": {}, "top_codes": []}
        top = sorted(self.pairs.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))[:TOP_CODES]
        return {"total": self.total, "permanent": self.permanent,
                "by_stage": {str(k): v for k, v in sorted(self.stages.items())},
                "by_code": {str(k): v for k, v in sorted(self.codes.items(), key=lambda kv: (-kv[1], kv[0]))},
                "top_codes": [{"stage": stage, "code": code, "count": count, "example": example}
                              for (stage, code), (count, example) in top]}


def _kind(fs, root: str) -> str:
    """'build' or 'shards', from the files present and the manifest's columns."""
    files = tables.parquet_files(fs, root, "manifest")
    if not files:
        raise StatsInputError(f"{root!r} has no manifest: not a build or shard directory")
    names = set(tables.read_schema(fs, files).names)
    if fs.exists(f"{root}/stats.json") and set(SHARD_COLUMNS) <= names:
        return "shards"
    if "clips" in names:
        return "build"
    raise StatsInputError(f"{root}/manifest has neither a clips column (build) nor "
                          f"{', '.join(SHARD_COLUMNS)} with stats.json (shards)")


def _common(t: pa.Table, build: bool | None = None) -> dict:
    """Samples, videos, hours, bytes and dataset splits; `build`: a build's manifest
    (default: whether it has a clips column)."""
    duration = np.asarray(t["duration"].to_numpy(zero_copy_only=False), dtype=float)
    out = {"samples": t.num_rows, "videos": len(pc.unique(t["video_id"])),
           "hours": float(np.nansum(duration)) / 3600}
    if "bytes" in t.column_names:
        out["bytes"] = int(pc.sum(t["bytes"]).as_py() or 0)
    # benchmark builds: samples per dataset split (the build's `split`, the shards' `dataset_split`)
    build = "clips" in t.column_names if build is None else build
    column = "dataset_split" if "dataset_split" in t.column_names else "split" if build else None
    if column in t.column_names and t[column].null_count < t.num_rows:
        counts = pc.value_counts(t[column].drop_null()).to_pylist()
        out["dataset_splits"] = {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}
    return out


def _distributions(n_clips, duration, paragraph_words, clip_words) -> dict:
    values = {"clips_per_sample": n_clips, "sample_duration_s": duration,
              "words_per_paragraph": paragraph_words, "words_per_clip": clip_words}
    return {name: distribution(values[name], DISTRIBUTIONS[name][3]) for name in DISTRIBUTIONS}


def text_origin(t: pa.Table) -> dict:
    """Samples and hours by where the text came from, and samples by language."""
    if "text_source" not in t.column_names or not t.num_rows:
        return {}
    df = t.select([c for c in ("text_source", "language", "duration") if c in t.column_names]).to_pandas()
    out = {"text_sources": {str(k): {"samples": int(len(g)), "hours": float(g.duration.sum()) / 3600}
                            for k, g in sorted(df.groupby(df.text_source.fillna("metadata")))}}
    if "language" in df:
        counts = df.language.fillna("unknown").value_counts()
        out["languages"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
    return out


# what build stats keep per sample; the texts (clips, paragraph) are read a batch at a time
# and only their word counts kept: ~60 bytes per sample, the clips' counted by value
# (`ValueCounts`), never the manifest
BUILD_STATS_COLUMNS = ["video_id", "n_clips", "duration", "bytes", "text_source", "language", "split"]
FAILURE_STATS_COLUMNS = ["stage", "code", "reason", "permanent"]
# rows per batch: a batch's texts and their split words are what stats holds at once
# (~50 MB of LF-VILA-like texts, a few times that while words are counted)
BATCH_ROWS = 8192


def _build_columns(fs, root: str) -> tuple[pa.Table, np.ndarray, ValueCounts]:
    """The manifest's per-sample numbers, words per paragraph and words per clip, streamed."""
    files = tables.parquet_files(fs, root, "manifest")
    names = tables.read_schema(fs, files).names
    keep = [c for c in BUILD_STATS_COLUMNS if c in names]
    texts = ["clips"] + (["paragraph"] if "paragraph" in names else [])
    light, paragraph_words, clip_words = [], [], ValueCounts()
    for batch in tables.iter_batches(fs, files, keep + texts, BATCH_ROWS):
        t = pa.Table.from_batches([batch])
        clips = pc.list_flatten(t["clips"])
        clip_texts = pc.struct_field(clips, "text") if len(clips) else pa.array([], pa.string())
        paragraphs = (t["paragraph"] if "paragraph" in names
                      else pa.array([paragraph(c["text"] for c in row) for row in t["clips"].to_pylist()]))
        part = t.select(keep)
        if "n_clips" not in names:
            part = part.append_column("n_clips", pc.list_value_length(t["clips"]))
        light.append(part)
        paragraph_words.append(word_counts(paragraphs))
        clip_words.add(word_counts(clip_texts))
    if not light:  # no rows: the columns' types from the schema
        t = tables.read_table(fs, root, "manifest", keep + ["clips"])
        return (t.select(keep).append_column("n_clips", pc.list_value_length(t["clips"]))
                if "n_clips" not in names else t.select(keep)), np.zeros(0, np.int64), clip_words
    return pa.concat_tables(light), np.concatenate(paragraph_words), clip_words


def _build_stats(fs, root: str) -> dict:
    t, paragraph_words, clip_words = _build_columns(fs, root)
    stats = {"kind": "build", **_common(t, build=True), "distributions": _distributions(
        t["n_clips"].to_numpy(zero_copy_only=False), t["duration"].to_numpy(zero_copy_only=False),
        paragraph_words, clip_words)}
    stats.update(text_origin(t))
    stats["words"] = clip_words.total()
    if fs.exists(f"{root}/build.json"):  # what planning dropped: not in the ledger, no sample holds it
        with fs.open(f"{root}/build.json", "rb") as f:
            record = json.loads(f.read())
        stats["planning"] = record.get("plan", {})
        counts = record.get("counts", {})
        if "fetched_bytes" in counts:  # the network's bill against what the written samples needed
            stats["downloads"] = {"fetched_bytes": counts["fetched_bytes"],
                                  "needed_bytes": counts.get("download_bytes", 0)}
            if "text_fetched_bytes" in counts:  # of which speech recognition's audio
                stats["downloads"]["text_fetched_bytes"] = counts["text_fetched_bytes"]
    files = tables.parquet_files(fs, root, "failures")
    names = tables.read_schema(fs, files).names if files else []
    stats["failures"] = failure_stats(batch.to_pandas() for batch in tables.iter_batches(
        fs, files, [c for c in FAILURE_STATS_COLUMNS if c in names], BATCH_ROWS))
    return stats


# what shard stats read of a shard manifest (its other columns are per-sample paths)
SHARD_STATS_COLUMNS = ["split", "shard", "video_id", "n_clips", "duration", "paragraph_words",
                       "clip_words", "text_source", "language", "bytes", "dataset_split"]


class _ShardCounts:
    """What shard stats need of a shard manifest, gathered a batch at a time. Kept per
    sample only numbers (for exact medians and the same float sums as the whole table) and
    the few-valued string columns as codes into a small list of values; the clips' word
    counts counted by value; distinct videos and shards as sets per split; every other
    count summed as it goes."""

    CODED = ("split", "text_source", "language")

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.samples = self.bytes = 0
        self.numbers: dict[str, list[np.ndarray]] = {c: [] for c in ("n_clips", "duration", "paragraph_words")}
        self.clip_words = ValueCounts()
        self.values: dict[str, list] = {c: [] for c in self.CODED}  # code -> value (None: null)
        self.index: dict[str, dict] = {c: {} for c in self.CODED}   # value -> code
        self.codes: dict[str, list[np.ndarray]] = {c: [] for c in self.CODED}
        self.videos: dict[object, set] = {}   # split -> distinct video ids
        self.shards: dict[object, set] = {}   # split -> distinct shard names
        self.dataset_splits: Counter[str] = Counter()

    def _coded(self, column: str, values: pa.ChunkedArray) -> np.ndarray:
        """A batch's values of a few-valued column as codes shared by all batches."""
        encoded = pc.dictionary_encode(values.combine_chunks(), null_encoding="encode")
        known, index = self.values[column], self.index[column]
        for v in encoded.dictionary.to_pylist():
            if v not in index:
                index[v] = len(known)
                known.append(v)
        to_global = np.array([index[v] for v in encoded.dictionary.to_pylist()], dtype=np.int32)
        return to_global[encoded.indices.to_numpy(zero_copy_only=False)] if len(to_global) else np.zeros(0, np.int32)

    def add(self, t: pa.Table) -> None:
        self.samples += t.num_rows
        for c in ("n_clips", "duration", "paragraph_words"):
            self.numbers[c].append(np.array(t[c].to_numpy(zero_copy_only=False)))
        self.clip_words.add(pc.drop_null(pc.list_flatten(t["clip_words"])).to_numpy(zero_copy_only=False))
        for c in self.CODED:
            if c in self.names:
                self.codes[c].append(self._coded(c, t[c]))
        if "bytes" in self.names:
            self.bytes += int(pc.sum(t["bytes"]).as_py() or 0)
        if "dataset_split" in self.names:
            self.dataset_splits.update({c["values"]: int(c["counts"]) for c in
                                        pc.value_counts(t["dataset_split"].drop_null()).to_pylist()})
        splits = self.codes["split"][-1] if "split" in self.names else np.zeros(t.num_rows, np.int32)
        for code in np.unique(splits):
            rows = pa.array(splits == code)
            split = self.values["split"][code] if "split" in self.names else None
            self.videos.setdefault(split, set()).update(pc.unique(t["video_id"].filter(rows)).to_pylist())
            if "shard" in self.names:
                self.shards.setdefault(split, set()).update(pc.unique(t["shard"].filter(rows)).to_pylist())

    def _groups(self, c: str, null: str) -> dict[str, np.ndarray]:
        """Per value of a coded column (nulls as `null`), the mask of its samples."""
        codes = np.concatenate(self.codes[c])
        names = [null if v is None else v for v in self.values[c]]
        return {name: np.isin(codes, [i for i, v in enumerate(names) if v == name]) for name in set(names)}

    def result(self) -> dict:
        """The dict `shard_table_stats` gives of the whole table (its float sums are over
        the same values in the same order)."""
        n = {c: np.concatenate(a) if a else np.zeros(0) for c, a in self.numbers.items()}
        duration = n["duration"]
        stats = {"kind": "shards", "samples": self.samples,
                 "videos": len(set().union(*self.videos.values())),
                 "hours": float(np.nansum(duration)) / 3600}
        if "bytes" in self.names:
            stats["bytes"] = self.bytes
        if self.dataset_splits:
            stats["dataset_splits"] = {k: self.dataset_splits[k] for k in sorted(self.dataset_splits)}
        if "shard" in self.names:
            stats["shards"] = len(set().union(*self.shards.values()))
        if "split" in self.names:
            groups = self._groups("split", null=None) if self.samples else {}
            stats["splits"] = {str(value): {
                "samples": int(mask.sum()), "videos": len(self.videos[value] - {None}),
                "hours": float(pd.Series(duration[mask]).sum()) / 3600,
                **({"shards": len(self.shards[value] - {None})} if "shard" in self.names else {})}
                for value, mask in sorted((v, m) for v, m in groups.items() if v is not None)}
        stats["distributions"] = _distributions(n["n_clips"], duration, n["paragraph_words"], self.clip_words)
        if "text_source" in self.names and self.samples:  # as text_origin of the whole table
            stats["text_sources"] = {str(k): {"samples": int(m.sum()), "hours": float(pd.Series(duration[m]).sum()) / 3600}
                                     for k, m in sorted(self._groups("text_source", "metadata").items())}
            if "language" in self.names:
                counts = {k: int(m.sum()) for k, m in self._groups("language", "unknown").items()}
                stats["languages"] = {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
        return stats


def shard_stats(fs, root: str, columns: list[str] = SHARD_STATS_COLUMNS) -> dict:
    """Stats of a shard directory's manifest, streamed: a batch at a time, keeping per
    sample a few numbers and the clips' word counts by value, never the manifest (`shard` writes
    these, of `columns`, as stats.json). The same numbers as `shard_table_stats` of the
    whole table."""
    files = tables.parquet_files(fs, root, "manifest")
    names = [c for c in columns if c in tables.read_schema(fs, files).names]
    counts = _ShardCounts(names)
    for batch in tables.iter_batches(fs, files, names, BATCH_ROWS):
        counts.add(pa.Table.from_batches([batch]))
    return counts.result()


def shard_table_stats(t: pa.Table) -> dict:
    """Stats of a shard manifest table read whole (`shard_stats` streams the same)."""
    stats = {"kind": "shards", **_common(t)}
    if "shard" in t.column_names:
        stats["shards"] = len(pc.unique(t["shard"]))
    if "split" in t.column_names:
        df = t.select([c for c in ("split", "shard", "video_id", "duration")
                       if c in t.column_names]).to_pandas()
        stats["splits"] = {str(split): {"samples": int(len(part)),
                                        "videos": int(part.video_id.nunique()),
                                        "hours": float(part.duration.sum()) / 3600,
                                        **({"shards": int(part.shard.nunique())}
                                           if "shard" in part else {})}
                           for split, part in sorted(df.groupby("split"))}
    clip_words = pc.list_flatten(t["clip_words"]).to_numpy(zero_copy_only=False)
    stats["distributions"] = _distributions(
        t["n_clips"].to_numpy(zero_copy_only=False), t["duration"].to_numpy(zero_copy_only=False),
        t["paragraph_words"].to_numpy(zero_copy_only=False), clip_words)
    stats.update(text_origin(t))
    return stats


def collect_stats(dir: str) -> dict:
    """The numbers of a build or shard directory, JSON-ready, for the summary and report."""
    fs, root = fsspec.core.url_to_fs(dir.rstrip("/"))
    kind = _kind(fs, root)
    stats = _build_stats(fs, root) if kind == "build" else shard_stats(fs, root)
    return {"dir": dir, **stats}


# ---------------------------------------------------------------------------------------
# plots and the page


def _figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot's global state (safe in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def plot_distribution(name: str, dist: dict, path: Path) -> None:
    """A histogram with mean and median marked, labelled with the unit of its axis."""
    title, xlabel, counted, _ = DISTRIBUTIONS[name]
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    edges, counts = dist["histogram"]["edges"], dist["histogram"]["counts"]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4C72B0",
           edgecolor="white", linewidth=0.5)
    ax.axvline(dist["mean"], color="#C44E52", linestyle="--", label=f"mean {_num(dist['mean'])}")
    ax.axvline(dist["median"], color="#55A868", linestyle=":", linewidth=2,
               label=f"median {_num(dist['median'])}")
    ax.set_title(f"{title} ({dist['count']:,} {counted})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{counted} (count)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_failures(failures: dict, path: Path) -> None:
    """The top (stage, code) pairs as horizontal bars coloured by stage, the largest on top."""
    top = failures["top_codes"]
    stages = sorted({r["stage"] for r in top})
    colours = dict(zip(stages, ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3",
                                "#937860", "#DA8BC3", "#8C8C8C"] * 4))
    fig = _figure(10, 1.6 + 0.42 * len(top))
    ax = fig.add_subplot()
    y = np.arange(len(top))[::-1]
    ax.barh(y, [r["count"] for r in top], color=[colours[r["stage"]] for r in top])
    ax.set_yticks(y, [r["code"] for r in top], fontsize=8)
    from matplotlib.patches import Patch
    handles = [Patch(color=colours[st], label=f"{st} ({failures['by_stage'].get(st, 0):,} in all)")
               for st in stages]
    ax.set_title(f"Top {len(top)} failure codes by stage ({failures['total']:,} failures)")
    ax.set_xlabel("failures (rows in failures.parquet)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, title="stage", frameon=False, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{font-size:90%}"""


def _table(header: list[str], rows: list[list[object]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=n' if i in numeric else ''}>{html.escape(str(v))}</td>"
        for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(stats: dict, images: dict[str, str]) -> str:
    """A page with no external resources: tables inline, plots as relative <img> links."""
    parts = [f"<h1>lfvila {html.escape(stats['kind'])} report</h1>",
             f"<p><code>{html.escape(str(stats['dir']))}</code></p>",
             "<h2>Summary</h2>", _table(["", "value"], [list(r) for r in render_summary(stats)])]
    rows = [[DISTRIBUTIONS[n][0], d["count"], *(_num(d[k]) for k in
             ("mean", "median", "p5", "p95", "min", "max"))]
            for n, d in stats["distributions"].items() if d["count"]]
    parts += ["<h2>Distributions</h2>",
              _table(["", "count", "mean", "median", "p5", "p95", "min", "max"], rows,
                     set(range(1, 8)))]
    for name, img in images.items():
        if name in DISTRIBUTIONS:
            parts.append(f'<img src="{html.escape(img)}" alt="{html.escape(DISTRIBUTIONS[name][0])}">')
    if "failures" in stats:
        parts += _failures_html(stats["failures"], images.get("failures"))
    if stats.get("browse"):
        parts.insert(2, f'<p>Samples with a frame per clip: <a href="{html.escape(stats["browse"])}">'
                        "the browse page</a></p>")
    elif "browse" in stats:
        parts.insert(2, f"<p>To look at samples (a frame per clip under its text), run "
                        f"<code>lfvila-data browse {html.escape(str(stats['dir']))}</code> "
                        "and run stats again to link its page here.</p>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>lfvila report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def _failures_html(f: dict, image: str | None) -> list[str]:
    parts = ["<h2>Failures</h2>"]
    if not f["total"]:
        return parts + ["<p>No failures.</p>"]
    parts.append(_table(["stage", "failures"], [[k, f"{v:,}"] for k, v in f["by_stage"].items()], {1}))
    if image:
        parts.append(f'<img src="{html.escape(image)}" alt="failure codes by stage">')
    parts += [f"<h3>Top {len(f['top_codes'])} failure codes</h3>",
              _table(["count", "stage", "code", "example reason"],
                     [[f"{r['count']:,}", r["stage"], r["code"], r["example"]]
                      for r in f["top_codes"]], {0})]
    return parts


def write_report(dir: str, out_dir: str | None = None) -> dict:
    """Write the plots, index.html and report.json (default DIR/report/); returns the stats."""
    stats = collect_stats(dir)
    out = Path(out_dir) if out_dir else Path(dir.rstrip("/")) / "report"
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    for name, dist in stats["distributions"].items():
        if dist["count"]:
            plot_distribution(name, dist, out / f"{name}.png")
            images[name] = f"{name}.png"
    if stats.get("failures", {}).get("total"):
        plot_failures(stats["failures"], out / FAILURE_PNG)
        images["failures"] = FAILURE_PNG
    stats["report"] = str(out / "index.html")
    stats["images"] = images
    stats["browse"] = _browse_link(dir, out)
    (out / "index.html").write_text(render_html(stats, images), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    return stats


def _browse_link(dir: str, report_dir: Path) -> str | None:
    """The `lfvila-data browse` page of DIR relative to the report, when one was made."""
    from lfvila_data.shards.browse import DEFAULT_DIR, PAGE

    page = Path(dir.rstrip("/")) / DEFAULT_DIR / PAGE
    return os.path.relpath(page, report_dir) if page.is_file() else None


def _dist_line(d: dict) -> str:
    if not d["count"]:
        return "none"
    return (f"mean {_num(d['mean'])}, median {_num(d['median'])}, "
            f"p5-p95 {_num(d['p5'])}-{_num(d['p95'])}, max {_num(d['max'])}")


def render_summary(stats: dict) -> list[tuple[str, str]]:
    """Rows for the CLI's two-column summary table (progress.print_summary)."""
    rows = [("directory", str(stats["dir"])),
            ("kind", "build directory" if stats["kind"] == "build" else "shard directory"),
            ("samples", f"{stats['samples']:,}"), ("videos", f"{stats['videos']:,}"),
            ("hours", f"{stats['hours']:,.2f}")]
    if "bytes" in stats:
        rows.append(("sample video bytes", human_bytes(stats["bytes"])))
    if "shards" in stats:
        rows.append(("shards", f"{stats['shards']:,}"))
    if "downloads" in stats:
        d = stats["downloads"]
        rows.append(("downloaded (all runs)", (f"{human_bytes(d['fetched_bytes'])}"
                                               f"{fetched_split(d['fetched_bytes'], d.get('text_fetched_bytes', 0))}, "
                                               f"of which written samples needed {human_bytes(d['needed_bytes'])}")))
    if stats.get("text_sources"):
        rows.append(("text sources", ", ".join(f"{k} {v['samples']:,} ({v['hours']:,.2f} h)"
                                               for k, v in stats["text_sources"].items())))
    if stats.get("languages"):
        rows.append(("languages", ", ".join(f"{k} {v:,}" for k, v in list(stats["languages"].items())[:10])))
    if stats.get("dataset_splits"):
        rows.append(("dataset splits", ", ".join(f"{k} {v:,}" for k, v in stats["dataset_splits"].items())))
    for split, s in stats.get("splits", {}).items():
        rows.append((f"split {split}", f"{s['samples']:,} samples, {s['videos']:,} videos, "
                                       f"{s['hours']:,.2f} h"))
    for name, d in stats["distributions"].items():
        rows.append((DISTRIBUTIONS[name][1], _dist_line(d)))
    if "words" in stats:
        rows.append(("words in manifest", f"{stats['words']:,}"))
    rows += [(f"planning: {k}", v) for k, v in word_account_rows(stats.get("planning", {}))]
    if "failures" in stats:
        f = stats["failures"]
        stages = ", ".join(f"{k} {v:,}" for k, v in f["by_stage"].items())
        rows.append(("failures", f"{f['total']:,}" + (f" ({stages})" if stages else "")))
        if f["by_code"]:
            rows.append(("failures by code", ", ".join(f"{k} {v:,}" for k, v in list(f["by_code"].items())[:8])))
    if "report" in stats:
        rows.append(("report", stats["report"]))
    if "browse" in stats:
        rows.append(("samples page", os.path.normpath(Path(stats["report"]).parent / stats["browse"])
                     if stats["browse"] else f"none yet: lfvila-data browse {stats['dir']}"))
    return rows
