"""Stats of hand-made build and shard directories: exact numbers, real PNG plots, and an
index.html that links every plot and needs nothing from outside."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfvila_data.records import Failure, FailureCode
from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA
from lfvila_data.shards.stats import (
    StatsInputError,
    ValueCounts,
    collect_stats,
    distribution,
    failure_stats,
    render_summary,
    write_report,
)
from tests.data.shards.test_verify import standard_layout, write_shard_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def manifest_row(video_id: str, first: int, texts: list[str], duration: float) -> dict:
    key = f"{video_id}_{first:05d}_{first + len(texts) - 1:05d}"
    step = duration / len(texts)
    clips = [{"clip_id": f"{video_id}.{first + i}.mp4", "start": 50 + i * step,
              "end": 50 + (i + 1) * step, "text": t} for i, t in enumerate(texts)]
    return {"key": key, "video_id": video_id, "url": f"https://example.com/{video_id}",
            "source": "hdvila", "start": 50.0, "end": 50.0 + duration, "n_clips": len(texts),
            "clips": clips, "paragraph": " ".join(texts), "video": f"videos/{video_id[:2]}/{key}.mp4",
            "fps": 3.0, "width": 320, "height": 240, "duration": duration,
            "frames": int(duration * 3), "bytes": 1000}


C = FailureCode
FAILURES = [  # (stage, code, reason); rows of one code count together whatever their reason
    ("probe", C.PAST_MEDIA_END, "clip span 1.000-2.000 s is beyond the end of the video data at 0.900 s"),
    ("probe", C.PAST_MEDIA_END, "clip span 13.500-20.250 s is beyond the end of the video data at 12.000 s"),
    ("download", C.NOT_FOUND, "HTTP Error 404: Not Found"),
    ("download", C.NETWORK, "HTTP Error 429: Too Many Requests (after 3 attempts)"),
    ("text", C.NO_TEXT, "no text for clip"),
    ("text", C.NO_TEXT, "no text for clip"),
    ("text", C.NO_TEXT, "no text for clip"),
    ("cut", C.CUT_FAILED, "ffmpeg could not cut 1.000-2.000: [h264 @ 0x55d5a0] error while decoding"),
]


@pytest.fixture
def build_dir(tmp_path) -> Path:
    rows = [manifest_row("vidAAAAAAA1", 1, ["a b", "c", "d e f", "g"], 10.0),
            manifest_row("vidAAAAAAA1", 9, ["one two three"] * 5, 20.0),
            manifest_row("vidBBBBBBB2", 1, [" x "] * 4, 30.0) | {"text_source": "asr", "language": "en"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "manifest.parquet")
    fails = [Failure("vidCCCCCCC3", None, s, c, r, s != "download").to_row() for s, c, r in FAILURES]
    pq.write_table(pa.Table.from_pylist(fails, schema=FAILURE_SCHEMA), tmp_path / "failures.parquet")
    return tmp_path


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    fake = {2: b"\0" * 100, 3: b"\0" * 150}  # stats never reads the videos
    root = tmp_path / "shards"
    write_shard_dir(root, standard_layout(fake))
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return struct.unpack(">II", data[16:24])


def assert_real_plot(path: Path) -> None:
    """A PNG of sensible size with more than a blank canvas drawn on it."""
    width, height = png_size(path)
    assert width >= 400 and height >= 250
    assert path.stat().st_size > 8000
    import matplotlib.image as mpimg
    pixels = mpimg.imread(path)[..., :3].reshape(-1, 3)
    rgb = (pixels * 255).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(rgb)) > 20
    assert (pixels.min(axis=1) < 0.9).mean() > 0.01  # a visible share of non-white pixels


def test_build_numbers(build_dir):
    s = collect_stats(str(build_dir))
    assert s["kind"] == "build"
    assert (s["samples"], s["videos"], s["bytes"]) == (3, 2, 3000)
    assert s["hours"] == pytest.approx(60 / 3600)
    d = s["distributions"]
    assert d["clips_per_sample"] | {"histogram": None} == {
        "count": 3, "mean": pytest.approx(13 / 3), "median": 4.0, "p5": pytest.approx(4.0),
        "p95": pytest.approx(4.9), "min": 4.0, "max": 5.0, "histogram": None}
    assert d["clips_per_sample"]["histogram"] == {"edges": [3.5, 4.5, 5.5], "counts": [2, 1]}
    assert (d["sample_duration_s"]["mean"], d["sample_duration_s"]["median"]) == (20.0, 20.0)
    assert (d["words_per_paragraph"]["count"], d["words_per_paragraph"]["mean"],
            d["words_per_paragraph"]["median"]) == (3, 26 / 3, 7.0)
    assert (d["words_per_clip"]["count"], d["words_per_clip"]["mean"],
            d["words_per_clip"]["max"]) == (13, 2.0, 3.0)
    assert s["text_sources"] == {"asr": {"samples": 1, "hours": pytest.approx(30 / 3600)},
                                 "metadata": {"samples": 2, "hours": pytest.approx(30 / 3600)}}
    assert sum(d["words_per_clip"]["histogram"]["counts"]) == 13


def test_build_failures(build_dir):
    f = collect_stats(str(build_dir))["failures"]
    assert (f["total"], f["permanent"]) == (8, 6)
    assert f["by_stage"] == {"cut": 1, "download": 2, "probe": 2, "text": 3}
    assert f["by_code"] == {"no_text": 3, "past_media_end": 2, "cut_failed": 1, "network": 1, "not_found": 1}
    top = [(r["stage"], r["code"], r["count"], r["example"]) for r in f["top_codes"]]
    assert top == [("text", "no_text", 3, "no text for clip"),
                   ("probe", "past_media_end", 2, FAILURES[0][2]),
                   ("cut", "cut_failed", 1, FAILURES[7][2]),
                   ("download", "network", 1, FAILURES[3][2]),
                   ("download", "not_found", 1, FAILURES[2][2])]


def test_top_codes_are_capped_at_15_and_old_ledgers_count_as_unknown():
    codes = list(FailureCode)[:17]
    df = pd.DataFrame({"stage": "metadata", "permanent": True,
                       "code": [c.value for i, c in enumerate(codes) for _ in range(i + 1)],
                       "reason": [f"bad {c.value}" for i, c in enumerate(codes) for _ in range(i + 1)]})
    f = failure_stats(df)
    assert len(f["top_codes"]) == 15 and len(f["by_code"]) == 17
    assert f["top_codes"][0] == {"stage": "metadata", "code": codes[16].value, "count": 17,
                                 "example": f"bad {codes[16].value}"}
    old = failure_stats(pd.DataFrame({"stage": ["text"], "reason": ["x"], "permanent": [True]}))
    assert old["by_code"] == {"unknown": 1}


def test_shard_numbers(shard_dir):
    s = collect_stats(str(shard_dir))
    assert s["kind"] == "shards"
    assert (s["samples"], s["videos"], s["shards"], s["bytes"]) == (4, 3, 3, 500)
    assert s["hours"] == pytest.approx(10 / 3600)
    assert s["splits"]["train"] | {"hours": 0} == {"samples": 3, "videos": 2, "shards": 2, "hours": 0}
    assert s["splits"]["val"]["samples"] == 1
    d = s["distributions"]
    assert (d["clips_per_sample"]["mean"], d["clips_per_sample"]["median"]) == (4.25, 4.0)
    assert (d["sample_duration_s"]["mean"], d["sample_duration_s"]["min"]) == (2.5, 2.0)
    assert (d["words_per_paragraph"]["mean"], d["words_per_paragraph"]["max"]) == (7.25, 8.0)
    assert d["words_per_clip"]["count"] == 17
    assert d["words_per_clip"]["mean"] == pytest.approx(29 / 17)
    assert "failures" not in s


def test_build_report_files(build_dir):
    stats = write_report(str(build_dir))
    out = build_dir / "report"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["clips_per_sample.png", "failure_codes.png", "sample_duration_s.png",
                    "words_per_clip.png", "words_per_paragraph.png"]
    for name in pngs:
        assert_real_plot(out / name)
    page = (out / "index.html").read_text()
    for name in pngs:
        assert f'src="{name}"' in page
    assert not re.search(r"<script|<link|https?://(?!example)", page)  # self-contained
    assert "no_text" in page and "no text for clip" in page and "Top 5 failure codes" in page
    assert json.loads((out / "report.json").read_text())["samples"] == 3
    assert stats["report"] == str(out / "index.html")


def test_shard_report_to_chosen_dir(shard_dir, tmp_path):
    out = tmp_path / "elsewhere"
    write_report(str(shard_dir), str(out))
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 4 and "failure_codes.png" not in pngs
    page = (out / "index.html").read_text()
    assert all(f'src="{n}"' in page for n in pngs)
    assert_real_plot(out / "sample_duration_s.png")


def test_render_summary(build_dir, shard_dir):
    rows = dict(render_summary(collect_stats(str(build_dir))))
    assert rows["samples"] == "3" and rows["videos"] == "2"
    assert rows["failures"] == "8 (cut 1, download 2, probe 2, text 3)"
    assert rows["failures by code"] == "no_text 3, past_media_end 2, cut_failed 1, network 1, not_found 1"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rows.items())
    assert rows["text sources"] == "asr 1 (0.01 h), metadata 2 (0.01 h)"
    assert rows["languages"] == "unknown 2, en 1"
    assert "downloaded (all runs)" not in rows  # no build.json: nothing to say
    (build_dir / "build.json").write_text(json.dumps({"counts": {"fetched_bytes": 3 << 20,
                                                                 "download_bytes": 1 << 20}}))
    stats = collect_stats(str(build_dir))
    assert stats["downloads"] == {"fetched_bytes": 3 << 20, "needed_bytes": 1 << 20}
    assert dict(render_summary(stats))["downloaded (all runs)"] == \
        "3.0 MB, of which written samples needed 1.0 MB"
    (build_dir / "build.json").write_text(json.dumps({"counts": {  # speech recognition's audio too
        "fetched_bytes": 3 << 20, "text_fetched_bytes": 1 << 19, "download_bytes": 1 << 20}}))
    stats = collect_stats(str(build_dir))
    assert stats["downloads"]["text_fetched_bytes"] == 1 << 19
    assert dict(render_summary(stats))["downloaded (all runs)"] == \
        "3.0 MB = videos 2.5 MB + text 512.0 KB, of which written samples needed 1.0 MB"
    rows = dict(render_summary(collect_stats(str(shard_dir))))
    assert rows["shards"] == "3" and rows["split val"].startswith("1 samples")


def test_not_a_stats_dir(tmp_path):
    with pytest.raises(StatsInputError):
        collect_stats(str(tmp_path))


def test_distribution_of_nothing_and_of_wide_integers():
    assert distribution(np.array([]), True) == {"count": 0}
    d = distribution(np.arange(1, 1001), True)
    edges = d["histogram"]["edges"]
    assert len(edges) - 1 <= 60 and sum(d["histogram"]["counts"]) == 1000
    assert edges[0] == 0.5 and edges[-1] >= 1000.5


STATS_CHILD = """
import json, resource, sys
import psutil
import pyarrow as pa
from lfvila_data.shards import stats
stats.BATCH_ROWS = 256  # both builds read in full batches: what differs is the build's size
stats.collect_stats(sys.argv[2])  # imports and pools warm before the baseline
base, arrow_base = psutil.Process().memory_info().rss, pa.default_memory_pool().max_memory()
got = stats.collect_stats(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - base, "arrow_peak": pa.default_memory_pool().max_memory(), "stats": got}))
"""


def test_build_stats_stream_the_manifest(finished_builds, tmp_path):
    """`stats` of a build reads its manifest a batch at a time, keeping per sample a few
    numbers and per clip its word count: its peak does not follow the manifest. Arrow's
    peak allocation is the exact measure (before: +113 MiB for 61 MiB more manifest, the
    whole table and its words; now +3 MiB); the process's peak RSS is checked loosely.
    The numbers are those of the whole table read at once (one batch, as before)."""
    import shutil
    import subprocess
    import sys

    small, big = finished_builds[500], finished_builds[2000]
    got, manifest = {}, {}
    for build in (small, big):
        r = subprocess.run([sys.executable, "-c", STATS_CHILD, str(build), str(small)],
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        got[build] = json.loads(r.stdout.strip().splitlines()[-1])
        manifest[build] = pq.read_table(build / "manifest").nbytes
    extra = manifest[big] - manifest[small]
    assert extra > 60 * 2**20
    arrow = got[big]["arrow_peak"] - got[small]["arrow_peak"]
    assert arrow < extra / 8, (arrow, extra)
    assert got[big]["growth"] - got[small]["growth"] < extra, (got[big]["growth"], got[small]["growth"], extra)

    whole = tmp_path / "whole"  # the same build as one single-batch manifest.parquet
    whole.mkdir()
    pq.write_table(pq.read_table(big / "manifest"), whole / "manifest.parquet", row_group_size=10**6)
    shutil.copytree(big / "failures", whole / "failures")
    streamed = got[big]["stats"]
    at_once = json.loads(json.dumps(collect_stats(str(whole))))  # as the child printed it
    assert streamed["samples"] == 2000 and streamed["failures"]["total"] > 0
    assert {k: v for k, v in streamed.items() if k != "dir"} == {k: v for k, v in at_once.items() if k != "dir"}


def write_shard_manifest(root: Path, samples: int, seed: int = 0) -> int:
    """A shard directory's manifest (write.SHARD_MANIFEST_SCHEMA) of `samples` samples of
    4..32 clips, 3 samples a video, 64 a shard, every 50th video in val, a benchmark split
    on every third sample and a NaN duration on every 97th, in parts of 4,096 rows; no tars
    (stats read only the manifest). Returns its Arrow bytes."""
    from lfvila_data.shards.write import SHARD_MANIFEST_SCHEMA

    rng = np.random.default_rng(seed)
    n_clips = rng.integers(4, 33, samples).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(n_clips)]).astype(np.int32)
    videos = np.arange(samples) // 3
    split = np.where(videos % 50 == 49, "val", "train")
    index = np.arange(samples)
    table = pa.table({
        "key": [f"v{v:010d}_{i:05d}_{i + 3:05d}" for v, i in zip(videos, index)],
        "split": split, "shard": [f"{s}-{i // 64:06d}.tar" for s, i in zip(split, index)],
        "offset": index * 4096, "index": (index % 64).astype(np.int32),
        "video_id": [f"v{v:010d}" for v in videos], "n_clips": n_clips,
        "duration": np.where(index % 97 == 5, np.nan, n_clips * 5.0 + rng.random(samples)), "bytes": rng.integers(10**6, 10**7, samples),
        "paragraph_words": rng.integers(50, 500, samples).astype(np.int32),
        "clip_words": pa.ListArray.from_arrays(offsets, rng.integers(1, 40, offsets[-1]).astype(np.int32)),
        "text_source": np.where(index % 7 == 0, "subtitles", "metadata"),
        "language": pa.array(np.where(index % 5 == 0, "en", None), pa.string()),
        "dataset_split": pa.array(np.where(index % 3 == 0, "val1", None), pa.string())},
        schema=SHARD_MANIFEST_SCHEMA)
    (root / "manifest").mkdir(parents=True)
    for i, start in enumerate(range(0, samples, 4096)):
        pq.write_table(table.slice(start, 4096), root / "manifest" / f"part-{i:05d}.parquet")
    (root / "stats.json").write_text("{}")
    return table.nbytes


SHARD_STATS_CHILD = """
import json, sys
import fsspec
import pyarrow as pa
from lfvila_data.shards import stats
from lfvila_data.shards.write import STATS_COLUMNS
stats.BATCH_ROWS = 1024  # both manifests read in full batches: what differs is their size
def step(root):  # the shard command's stats step (write.run_shard)
    return stats.shard_stats(fsspec.filesystem("file"), root, STATS_COLUMNS)
step(sys.argv[2])  # the small manifest: imports, pools and Arrow's peak for it
arrow_base = pa.default_memory_pool().max_memory()
got = step(sys.argv[1])
print(json.dumps({"arrow": pa.default_memory_pool().max_memory() - arrow_base, "stats": got}))
"""


def test_shard_stats_json_streams_the_manifest(tmp_path):
    """The shard command's stats.json reads the shard manifest a batch at a time, keeping
    per sample a few numbers and codes: after the stats of a small manifest, those of one
    five times bigger add nothing to Arrow's peak (before: the whole table of STATS_COLUMNS,
    its clip_words lists included, +9.9 MiB for 6.2 MiB more manifest; now +0 to 1.3 KiB).
    The process's peak RSS is not asserted: it varies run to run (measured +24..43 MiB
    while `distribution` made float copies of every clip's word count; those are now
    counted by value, `ValueCounts`). The numbers, serialised, are byte for byte those of
    the whole table read at once."""
    import subprocess
    import sys

    import fsspec

    from lfvila_data.output import manifest as tables
    from lfvila_data.shards.stats import SHARD_STATS_COLUMNS, shard_stats, shard_table_stats
    from lfvila_data.shards.write import STATS_COLUMNS

    small, big = tmp_path / "small", tmp_path / "big"
    extra = write_shard_manifest(big, 40_000, seed=1) - write_shard_manifest(small, 8_000)
    r = subprocess.run([sys.executable, "-c", SHARD_STATS_CHILD, str(big), str(small)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert extra > 6 * 2**20
    assert got["arrow"] < extra / 8, (got["arrow"], extra)
    whole = shard_table_stats(tables.read_table(fsspec.filesystem("file"), str(big), "manifest", STATS_COLUMNS))
    assert got["stats"]["samples"] == 40_000 and set(got["stats"]["splits"]) == {"train", "val"}
    assert json.dumps(got["stats"], sort_keys=True) == json.dumps(whole, sort_keys=True)
    # `lfvila-data stats` of a shard directory reads more columns (bytes, dataset_split)
    fs = fsspec.filesystem("file")
    streamed = shard_stats(fs, str(small))
    assert streamed["dataset_splits"] == {"val1": 2667} and streamed["bytes"] > 0
    assert json.dumps(streamed, sort_keys=True) == json.dumps(
        shard_table_stats(tables.read_table(fs, str(small), "manifest", SHARD_STATS_COLUMNS)), sort_keys=True)


@pytest.mark.parametrize("seed", range(6))
def test_distribution_of_counted_values_is_that_of_the_values(seed):
    """`ValueCounts` keeps how often each word count occurs, not every clip's: its
    distribution is byte for byte that of the values (narrow and wide ranges, heavy tails,
    one value, two, a few thousand)."""
    rng = np.random.default_rng(seed)
    cases = [rng.integers(1, 40, 5000), rng.integers(0, 1000, 3001), rng.geometric(0.05, 20000),
             np.array([7]), np.array([3, 90]), rng.integers(0, 61, 2), np.repeat([0, 500], [10, 1]),
             (rng.pareto(1.5, 4000) * 10).astype(np.int64), rng.integers(100, 170, 777)]
    for values in cases:
        counted = ValueCounts()
        for part in np.array_split(values, 3):  # added a batch at a time
            counted.add(part)
        assert json.dumps(distribution(counted, True)) == json.dumps(distribution(values, True))
        assert counted.total() == int(values.sum())
    assert distribution(ValueCounts(), True) == {"count": 0}
