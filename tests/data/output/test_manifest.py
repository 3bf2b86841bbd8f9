"""The partitioned manifest, ledger and downloads (output/manifest.py): finalize a
synthetic finished build (a real journal, no video) through the external sort with tiny
memory bounds, so the sort spills many runs and writes several parts; read them back as
users do (pandas, pyarrow.dataset) and as our readers do (also an old single file)."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from lfvila_data.output.manifest import ExternalSort, SortConfig, SortGroup, parquet_files, read_table
from lfvila_data.output.write import OutputDir, finalize, iter_journal, read_journal
from tests.support.finished import simulate

SMALL = SortConfig(run_bytes=256 * 1024, merge_group_bytes=32 * 1024, chunk_rows=64, part_rows=256)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for name in ("manifest", "failures", "downloads") for p in sorted((root / name).iterdir())}


def test_finalize_writes_sorted_parts_readers_get_back(tmp_path):
    out = tmp_path / "out"
    simulate(out, 700, seed=1)
    journal = read_journal(OutputDir(str(out)))
    counts = finalize(OutputDir(str(out)), iter_journal(OutputDir(str(out))), None, SMALL)
    rows = [r for _, p in journal.values() for r in p["rows"]]
    keys = sorted(r["key"] for r in rows)
    parts = sorted(p.name for p in (out / "manifest").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(out / "manifest" / p).num_rows for p in parts] == [256, 256, 188]
    m = pd.read_parquet(out / "manifest")
    assert list(m.key) == keys and list(pads.dataset(out / "manifest").to_table()["key"].to_pylist()) == keys
    # a list column comes back as numpy arrays of dicts, as readers really get it
    first = min(rows, key=lambda r: r["key"])
    assert [c["text"] for c in m.clips[0]] == [c["text"] for c in first["clips"]]
    assert counts["samples_written"] == 700 and counts["video_bytes"] == sum(r["bytes"] for r in rows)
    assert counts["download_bytes"] == counts["video_bytes"]
    ledger = pd.read_parquet(out / "failures")
    assert len(ledger) == counts["failures"] == counts["failures_by_code"]["video_unavailable"] > 0
    assert list(ledger.video_id) == sorted(ledger.video_id)
    dl = pd.read_parquet(out / "downloads")
    assert sorted(dl.key) == keys and list(dl.video_id) == sorted(dl.video_id)


def test_finalize_is_byte_identical_whatever_the_journal_and_run_layout(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    simulate(a, 500, seed=2, per_file=64)
    simulate(b, 500, seed=2, per_file=7)  # other journal files, same videos
    finalize(OutputDir(str(a)), iter_journal(OutputDir(str(a))), None, SMALL)
    other = SortConfig(run_bytes=40 * 1024, merge_group_bytes=8 * 1024, chunk_rows=64, part_rows=256)
    finalize(OutputDir(str(b)), iter_journal(OutputDir(str(b))), None, other)
    assert len(list((a / "manifest").iterdir())) == 2
    assert _digests(a) == _digests(b)
    # a rerun with fewer, bigger parts leaves no stale part behind
    finalize(OutputDir(str(b)), iter_journal(OutputDir(str(b))), None,
             SortConfig(chunk_rows=64, part_rows=1024))
    assert [p.name for p in (b / "manifest").iterdir()] == ["part-00000.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(b / "manifest"), pd.read_parquet(a / "manifest"))


def test_an_empty_build_has_typed_empty_tables(tmp_path):
    out = OutputDir(str(tmp_path))
    counts = finalize(out, iter_journal(out), None)
    assert counts["samples_written"] == 0
    assert pd.read_parquet(tmp_path / "manifest").empty
    assert "clips" in pq.read_schema(tmp_path / "manifest" / "part-00000.parquet").names


def test_readers_take_an_old_single_file_manifest(tmp_path):
    import fsspec
    table = pa.table({"key": ["b", "a"], "n": [2, 1]})
    pq.write_table(table, tmp_path / "manifest.parquet")
    fs = fsspec.filesystem("file")
    assert parquet_files(fs, str(tmp_path), "manifest") == [f"{tmp_path}/manifest.parquet"]
    assert read_table(fs, str(tmp_path), "manifest").equals(table)
    assert parquet_files(fs, str(tmp_path), "failures") == []


def test_finalize_to_s3(s3, tmp_path):
    fs, env = s3
    simulate(tmp_path / "local", 120, seed=3)
    for p in sorted((tmp_path / "local" / "_journal").iterdir()):
        fs.put_file(str(p), f"lfvila-test/out/_journal/{p.name}")
    out = OutputDir("s3://lfvila-test/out")
    counts = finalize(out, iter_journal(out), None, SMALL)
    fs.invalidate_cache()
    opts = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
    m = pd.read_parquet("s3://lfvila-test/out/manifest", storage_options=opts)
    assert len(m) == counts["samples_written"] == 120 and list(m.key) == sorted(m.key)
    assert sorted(fs.ls("lfvila-test/out/manifest")) == ["lfvila-test/out/manifest/part-00000.parquet"]
    assert read_table(out.fs, out.root, "downloads").num_rows == 120


def test_external_sort_merges_many_runs_into_the_sorted_rows():
    rng = random.Random(0)
    rows = [{"video_id": rng.choice("abcdefgh") * 3, "clip_id": rng.choice([None, "c1", "c2"]),
             "n": rng.randrange(50)} for _ in range(3000)]
    schema = pa.schema([("video_id", pa.string()), ("clip_id", pa.string()), ("n", pa.int64())])
    sorter = ExternalSort(schema, ["video_id", "clip_id", "n"],
                          SortConfig(run_bytes=2048, merge_group_bytes=512, max_runs=8, chunk_rows=100))
    for i in range(0, 3000, 70):
        sorter.add(pa.Table.from_pylist(rows[i:i + 70], schema=schema))
    assert len(sorter._runs) > 20
    got = pa.concat_tables(list(sorter.sorted_chunks()))
    want = pa.Table.from_pylist(rows, schema=schema).sort_by(
        [("video_id", "ascending"), ("clip_id", "ascending"), ("n", "ascending")])
    assert got.to_pylist() == want.to_pylist()


def test_sorts_filled_side_by_side_share_one_buffer_budget():
    """finalize fills three sorts at once; alone each buffered up to run_bytes, so a small
    table (downloads) stayed in memory to the end of the build and the driver's peak
    grew with it (1,023 MiB at 1M samples, 1,327 MiB at 4M). In a group their buffers
    hold run_bytes in all, and each still sorts its own rows."""
    rng = random.Random(1)
    schema = pa.schema([("key", pa.string()), ("text", pa.string())])
    cfg = SortConfig(run_bytes=64 * 1024, merge_group_bytes=4096, chunk_rows=50)
    group = SortGroup(cfg)
    big, small = group.sort(schema, ["key"]), group.sort(schema, ["key"])
    rows = {"big": [], "small": []}
    largest_add = 0
    for i in range(400):
        for name, sorter, width in (("big", big, 200), ("small", small, 20)):
            batch = [{"key": f"{rng.randrange(10**6):06d}", "text": "x" * width} for _ in range(8)]
            rows[name] += batch
            table = pa.Table.from_pylist(batch, schema=schema)
            largest_add = max(largest_add, table.nbytes)
            sorter.add(table)
            assert big._buffered + small._buffered < cfg.run_bytes + largest_add
    assert small._runs, "the small table must spill too, not wait for the end"
    assert group.peak < cfg.run_bytes + largest_add
    for name, sorter in (("big", big), ("small", small)):
        got = pa.concat_tables(list(sorter.sorted_chunks())).to_pylist()
        assert got == sorted(rows[name], key=lambda r: r["key"])


MERGE_CHILD = """
import json
import numpy as np, pyarrow as pa
from lfvila_data.output.manifest import ExternalSort, SortConfig
rng, rows, total = np.random.default_rng(0), 80_000, 0  # ~80 MB of text that lz4 cannot shrink much
order = rng.permutation(rows)
def batch(i):
    return pa.table({"key": [f"k{k:08d}" for k in order[i:i + 1000]],
                     "text": [rng.bytes(500).hex() for _ in range(1000)]})
sorter = ExternalSort(batch(0).schema, ["key"], SortConfig(run_bytes=8 * 2**20, chunk_rows=512))
for i in range(0, rows, 1000):
    t = batch(i)
    total += t.nbytes
    sorter.add(t)
for chunk in sorter.sorted_chunks():
    pass
print(json.dumps({"total": total, "peak": pa.default_memory_pool().max_memory()}))
"""


def test_the_merge_does_not_keep_the_runs_it_read():
    """Arrow's Parquet reader pre-buffers by default and keeps every range it read until
    it closes, so the external sort's merge held most of each run's bytes to its end
    (finalize at 1M samples: 2.5 GiB, its peak, in the merge). Now its Arrow peak is the
    spill and the read-ahead of one row group per run: 45 MB for 81 MB of rows in 10 runs
    (before: 118 MB)."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", MERGE_CHILD], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["peak"] < got["total"] * 3 / 4, got
