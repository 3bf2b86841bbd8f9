"""Shard planning alone (`plan_shards`): wall, CPU and peak RSS at any number of samples,
and the sizing before and after `shards/sizing.py` interleaved on the same input.

The input is a finished build's `manifest/part-*.parquet` written directly in
MANIFEST_SCHEMA (planning reads nothing else): 3 samples per video, 4..32 clips of 5 s per
sample, 8..24-word texts drawn from a pool of 4,096, one sentence per clip as a build
writes it, keys sorted within a part (a part's first video may continue the previous
part's last: a few keys repeat, which planning drops as duplicates, as it would). Writing it is vectorised (Arrow), so
8.5M samples take minutes, not the hours of a simulated journal plus finalize.

Each measurement runs `plan_shards` in a child process of its own, measured over its
whole process tree (benchmarks/proctree.py; planning starts no processes, so the child
is the only one); the child reports its own peak RSS (ru_maxrss).

    nice python benchmarks/bench_shard_plan.py --compare 100000 --repeats 3
    nohup nice python benchmarks/bench_shard_plan.py --samples 1000000 4000000 8500000 > log 2>&1 &

The baseline ("old") is `lfvila_data/shards/write.py` at --old-rev (the commit before the
vectorised sizing), which sizes every sample by building its json and txt in Python.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from proctree import run_measured

from lfvila_data.schemas import CLIP_TYPE, MANIFEST_SCHEMA, SENTENCE_TYPE
from tests.support.finished import WORDS

PART_SAMPLES = 50_000  # samples per manifest part
PER_VIDEO = 3


def _texts(rng: np.random.Generator, n: int = 4096) -> pa.Array:
    words = np.array(WORDS)
    return pa.array([" ".join(words[rng.integers(0, len(words), rng.integers(8, 25))]) for _ in range(n)])


def _part(rng: np.random.Generator, pool: pa.Array, first_video: int, samples: int) -> pa.Table:
    """`samples` manifest rows of consecutive videos, `PER_VIDEO` samples each."""
    videos = -(-samples // PER_VIDEO)
    vids = np.array([f"v{first_video + i:010d}" for i in range(videos)])
    vid = np.repeat(vids, PER_VIDEO)[:samples]
    n = rng.integers(4, 33, samples)
    # a video's samples follow each other: first clip number k, 3 clips' gap between samples
    within = np.arange(samples) % PER_VIDEO
    k0 = np.ones(samples, np.int64)
    for j in range(1, PER_VIDEO):
        step = within == j
        k0[step] = k0[np.flatnonzero(step) - 1] + n[np.flatnonzero(step) - 1] + 3
    keys = [f"{v}_{a:05d}_{a + c - 1:05d}" for v, a, c in zip(vid, k0, n)]
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
    parent = np.repeat(np.arange(samples), n)
    j = np.arange(len(parent)) - offsets[:-1][parent]
    k = k0[parent] + j
    t0 = k0 * 5.0
    cstart = t0[parent] + 5.0 * j
    text = pool.take(pa.array(rng.integers(0, len(pool), len(parent))))
    clip_id = pc.binary_join_element_wise(pa.array(vid[parent]), pa.array(k.astype(str)), "mp4", ".")
    sentences = pa.ListArray.from_arrays(pa.array(np.arange(len(parent) + 1, dtype=np.int32)), pa.StructArray.from_arrays(
        [text, pa.array(cstart), pa.array(cstart + 5.0)], fields=list(SENTENCE_TYPE)))
    clips = pa.ListArray.from_arrays(pa.array(offsets), pa.StructArray.from_arrays(
        [clip_id, pa.array(cstart), pa.array(cstart + 5.0), text, sentences], fields=list(CLIP_TYPE)))
    size = rng.integers(2_000_000, 40_000_000, samples)
    cols = {"key": pa.array(keys), "video_id": pa.array(vid),
            "url": pc.binary_join_element_wise("https://www.youtube.com/watch?v=", pa.array(vid), ""),
            "source": pa.array(["hdvila"] * samples), "start": pa.array(t0), "end": pa.array(t0 + 5.0 * n),
            "n_clips": pa.array(n.astype(np.int32)), "clips": clips,
            "paragraph": pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), text), " "),
            "video": pa.array([f"videos/{v[:2]}/{key}.mp4" for v, key in zip(vid, keys)]),
            "fps": pa.array(np.full(samples, 30.0)), "width": pa.array(np.full(samples, 1280, np.int32)),
            "height": pa.array(np.full(samples, 720, np.int32)), "duration": pa.array(5.0 * n),
            "frames": pa.array((150 * n).astype(np.int32)), "bytes": pa.array(size),
            "text_source": pa.array(["metadata"] * samples), "language": pa.nulls(samples, pa.string()),
            "split": pa.nulls(samples, pa.string()), "qa": pa.nulls(samples, pa.string())}
    return pa.Table.from_pydict(cols, schema=MANIFEST_SCHEMA)


def write_manifest(build: Path, samples: int, seed: int = 0) -> None:
    """A finished build's partitioned manifest of `samples` (a multiple of PART_SAMPLES, or
    fewer): links to the first parts of one simulated manifest in `build`'s folder, each
    part written once with its own seed, so a larger build extends a smaller one."""
    parts = build.parent / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(build, ignore_errors=True)
    (build / "manifest").mkdir(parents=True)
    pool = _texts(np.random.default_rng(seed))
    for p, first in enumerate(range(0, samples, PART_SAMPLES)):
        count = min(PART_SAMPLES, samples - first)
        path = parts / f"part-{p:05d}-{count}.parquet"
        if not path.exists():
            pq.write_table(_part(np.random.default_rng([seed, p]), pool, first // PER_VIDEO, count),
                           path.with_suffix(".tmp"), compression="zstd")
            path.with_suffix(".tmp").rename(path)
        (build / "manifest" / f"part-{p:05d}.parquet").symlink_to(path)


def _old_write(rev: str) -> types.ModuleType:
    """`shards/write.py` at `rev`, as a module."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:lfvila_data/shards/write.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("legacy_shard_write")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:lfvila_data/shards/write.py", "exec"), mod.__dict__)  # noqa: S102 - our own code
    return mod


def child(which: str, build: Path, shards: Path, rev: str) -> dict:
    """Plan the shards of one build in this process; seconds, peak RSS, the layout."""
    if which == "old":
        write = _old_write(rev)
    else:
        from lfvila_data.shards import write
    shutil.rmtree(shards, ignore_errors=True)
    t = time.perf_counter()
    layout = write.plan_shards([str(build)], str(shards), write.ShardConfig())
    seconds = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"which": which, "seconds": round(seconds, 1), "cpu_self_s": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_mib": round(ru.ru_maxrss / 1024), "shards": len(layout.shards), "layout": layout.layout}


def measure(which: str, build: Path, shards: Path, rev: str) -> dict:
    m = run_measured([sys.executable, __file__, "--child", which, "--build", str(build), "--shards", str(shards),
                      "--old-rev", rev], env={**os.environ, "PYTHONPATH": str(ROOT)})
    if m.returncode != 0:
        return {"which": which, "error": (m.stderr.strip().splitlines() or ["?"])[-1]}
    res = json.loads(m.stdout.strip().splitlines()[-1])
    return res | {"wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1), "cpu_method": m.method}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="*", default=[], help="plan these sizes with the current code")
    ap.add_argument("--compare", type=int, help="old and new sizing interleaved on this many samples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-rev", default="d0f12ce~1")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-shardplan"))
    ap.add_argument("--keep", action="store_true", help="keep the simulated manifest parts for the next run")
    ap.add_argument("--child")
    ap.add_argument("--build", type=Path)
    ap.add_argument("--shards", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.build, args.shards, args.old_rev)))
        return
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    print(f"commit {rev}, load average {os.getloadavg()}", flush=True)
    if args.compare:
        build, shards = args.workdir / f"build-{args.compare}", args.workdir / "shards"
        write_manifest(build, args.compare)
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for which in ("old", "new"):
                runs[which].append(r := measure(which, build, shards, args.old_rev))
                print(json.dumps(r | {"n": args.compare, "load": os.getloadavg()[0]}), flush=True)
        med = {w: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "peak_rss_mib")}
               for w, rs in runs.items()}
        same = len({r.get("layout") for rs in runs.values() for r in rs}) == 1
        print(f"\n{args.compare:,} samples, medians of {args.repeats}: old {med['old']}, new {med['new']}; "
              f"CPU ratio old/new {med['old']['cpu_s'] / med['new']['cpu_s']:.1f}x, "
              f"CPU-ms per sample old {1000 * med['old']['cpu_s'] / args.compare:.3f} "
              f"new {1000 * med['new']['cpu_s'] / args.compare:.3f}; the same layout: {same}", flush=True)
        shutil.rmtree(shards, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    for n in args.samples:
        build, shards = args.workdir / f"build-{n}", args.workdir / "shards"
        t = time.perf_counter()
        write_manifest(build, n)
        size = sum(p.resolve().stat().st_size for p in (build / "manifest").iterdir())
        print(f"{n:,} samples: manifest written in {time.perf_counter() - t:.0f} s ({size / 2**30:.2f} GiB)",
              flush=True)
        r = measure("new", build, shards, args.old_rev)
        print(json.dumps(r | {"n": n, "load": os.getloadavg()}), flush=True)
        shutil.rmtree(shards, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(args.workdir / "parts", ignore_errors=True)


if __name__ == "__main__":
    main()
