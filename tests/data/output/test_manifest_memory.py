"""The end of a build never holds the whole manifest in one process: finalize and shard
planning run, each build in a child process of its own, on two simulated finished builds,
one four times the other (~20 MB and ~85 MB of manifest as Arrow). The child's peak
memory must not follow the build: the bigger one may add less than the extra manifest's
Arrow bytes (measured: about half of them, allocator retention). The old code, which
held every row as Python objects, added 3.3 times them (docs/reliability.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

CHILD = """
import json, resource, sys
from pathlib import Path
import psutil
from lfvila_data.output.manifest import SortConfig
from lfvila_data.output.write import OutputDir, finalize, iter_journal
from lfvila_data.shards.write import ShardConfig, plan_shards
from tests.support.finished import simulate
build, shards = sys.argv[1], sys.argv[2]
cfg = SortConfig(run_bytes=8 * 2**20, merge_group_bytes=2**20, max_runs=4, chunk_rows=128, part_rows=1024)
def run(build, shards):
    out = OutputDir(build)
    counts = finalize(out, iter_journal(out), None, cfg)
    return counts, plan_shards([build], shards, ShardConfig(samples_per_shard=64), bucket_rows=256)
simulate(Path(shards + "-warm"), 20, seed=1)  # imports and pools warm before the baseline
run(shards + "-warm", shards + "-warm-shards")
base = psutil.Process().memory_info().rss
counts, plan = run(build, shards)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - base, "samples": counts["samples_written"], "shards": len(plan.shards)}))
"""


def _measure(build, tmp_path, samples: int) -> tuple[dict, int]:
    r = subprocess.run([sys.executable, "-c", CHILD, str(build), str(tmp_path / f"shards-{samples}")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["samples"] == samples and got["shards"] >= samples // 64
    return got, pq.read_table(build / "manifest").nbytes


def test_finalize_and_shard_planning_memory_does_not_grow_with_the_build(finished_builds, tmp_path):
    small, small_bytes = _measure(finished_builds[500], tmp_path, 500)
    big, big_bytes = _measure(finished_builds[2000], tmp_path, 2000)
    assert big_bytes - small_bytes > 60 * 2**20
    assert big["growth"] - small["growth"] < big_bytes - small_bytes, (small, big, small_bytes, big_bytes)
