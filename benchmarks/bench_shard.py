"""Shard-writing throughput (MB/s) of `run_shard` compared, in the same run, with a plain
`tar` of the same files (the limit: one sequential copy). Target: >= 0.8 of tar.

    python benchmarks/bench_shard.py [--samples 400 --mb 2.5 --workdir /tmp/lfvila-bench-shard]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfvila_data.executor.pool import RayTasks  # noqa: E402
from lfvila_data.output.write import OutputDir  # noqa: E402
from lfvila_data.schemas import MANIFEST_SCHEMA  # noqa: E402
from lfvila_data.shards.write import ShardConfig, run_shard  # noqa: E402


def make_build(root: Path, samples: int, mb: float) -> Path:
    """A build directory with `samples` files of `mb` MB (random bytes: shards copy bytes)."""
    build = root / "build"
    if (build / "manifest.parquet").exists():
        return build
    rows = []
    rng = os.urandom
    for i in range(samples):
        vid = f"bench{i // 4:05d}"
        key = f"{vid}_{(i % 4) * 8 + 1:05d}_{(i % 4) * 8 + 8:05d}"
        rel = OutputDir.video_rel(vid, key)
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_bytes(rng(int(mb * 1e6)))
        clips = [{"clip_id": f"{vid}.{k}.mp4", "start": 13.4 * k, "end": 13.4 * k + 13.0,
                  "text": "a sentence of about twelve words that somebody said in the video"}
                 for k in range(8)]
        rows.append({"key": key, "video_id": vid, "url": f"https://x/{vid}", "source": "hdvila",
                     "start": 0.0, "end": 107.0, "n_clips": 8, "clips": clips,
                     "paragraph": " ".join(c["text"] for c in clips), "video": rel, "fps": 3.0,
                     "width": 426, "height": 240, "duration": 107.0, "frames": 321,
                     "bytes": int(mb * 1e6)})
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), build / "manifest.parquet")
    return build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--mb", type=float, default=2.5, help="size of one sample video, MB")
    ap.add_argument("--shard-mb", type=int, default=250)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-shard"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each method (root): inputs come from disk")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    build = make_build(args.workdir, args.samples, args.mb)
    files = sorted(str(p.relative_to(build)) for p in (build / "videos").rglob("*.mp4"))
    total = sum((build / f).stat().st_size for f in files)
    (args.workdir / "files.txt").write_text("\n".join(files) + "\n")

    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[float]] = {"tar": [], "tar+md5sum": [], "run_shard": []}
    def cold() -> None:
        if args.cold:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    for _ in range(args.repeat):
        cold()
        out = args.workdir / "tar"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t = time.perf_counter()
        subprocess.run(["tar", "-cf", str(out / "all.tar"), "-C", str(build), "-T",
                        str(args.workdir / "files.txt")], check=True)
        results["tar"].append(time.perf_counter() - t)
        # the index must carry each shard's MD5, which a plain tar does not compute
        subprocess.run(["md5sum", str(out / "all.tar")], check=True, capture_output=True)
        results["tar+md5sum"].append(time.perf_counter() - t)
        out = args.workdir / "shards"
        shutil.rmtree(out, ignore_errors=True)
        cold()
        t = time.perf_counter()
        run_shard([str(build)], str(out), ShardConfig(max_shard_bytes=args.shard_mb * 10**6,
                                                      val_fraction=0.0), write=RayTasks())
        results["run_shard"].append(time.perf_counter() - t)
    ray.shutdown()
    print(f"{'cold' if args.cold else 'warm'} page cache: "
          f"{args.samples} samples x {args.mb} MB = {total / 1e6:.0f} MB, "
          f"shards of <= {args.shard_mb} MB, {args.repeat} runs (median), 2 CPUs")
    print(f"{'method':<12}{'median s':>10}{'MB/s':>10}")
    print("(run_shard includes reading the manifest, planning, Ray tasks, the index, the"
          " shard manifest and stats; tar is one sequential copy)")
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:<12}{v:>10.2f}{total / 1e6 / v:>10.1f}")
    print(f"ratio run_shard / tar throughput: {med['tar'] / med['run_shard']:.2f} (target >= 0.8)")
    print(f"ratio run_shard / (tar + md5sum) throughput: {med['tar+md5sum'] / med['run_shard']:.2f}")


if __name__ == "__main__":
    main()
