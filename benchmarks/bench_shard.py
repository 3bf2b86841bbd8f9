"""Shard-writing throughput (MB/s) of `run_shard` compared, in the same run, with tar
doing the same work on the same CPUs: the same files in as many shards, two tar processes
at a time (the 2 CPUs `run_shard` gets from Ray), each shard's MD5 computed as it is
written (`tar -cf - ... | tee shard.tar | md5sum`: the index carries each shard's MD5, which
a plain tar does not compute). Also, for reference, the same shards without the MD5 and
one serial `tar` of everything (one sequential copy). Target: >= 0.8 of tar.

    python benchmarks/bench_shard.py [--samples 400 --mb 2.5 --workdir /tmp/lfvila-bench-shard]

Methods run interleaved, --repeat times; medians are reported.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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

    groups = shard_groups(build, files, args.shard_mb * 10**6)
    lists = []
    for i, g in enumerate(groups):
        lists.append(args.workdir / f"files-{i}.txt")
        lists[-1].write_text("\n".join(g) + "\n")

    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    par = f"tar, {len(groups)} shards, 2 at a time"
    results: dict[str, list[float]] = {"tar, 1 file, serial": [], par: [], par + " + md5": [],
                                       "run_shard": []}

    def cold() -> None:
        if args.cold:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def fresh(name: str) -> Path:
        out = args.workdir / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        cold()
        return out

    def timed(name: str, fn, *fargs, **kwargs) -> None:
        t = time.perf_counter()
        fn(*fargs, **kwargs)
        results[name].append(time.perf_counter() - t)

    for _ in range(args.repeat):  # interleaved: the machine's load hits every method alike
        timed("tar, 1 file, serial", subprocess.run,
              ["tar", "-cf", str(fresh("tar") / "all.tar"), "-C", str(build), "-T",
               str(args.workdir / "files.txt")], check=True)
        timed(par, tar_shards, build, lists, fresh("tar-shards"), md5=False)
        timed(par + " + md5", tar_shards, build, lists, fresh("tar-shards-md5"), md5=True)
        timed("run_shard", run_shard, [str(build)], str(fresh("shards")),
              ShardConfig(max_shard_bytes=args.shard_mb * 10**6, val_fraction=0.0), write=RayTasks())
    ray.shutdown()
    print(f"{'cold' if args.cold else 'warm'} page cache: "
          f"{args.samples} samples x {args.mb} MB = {total / 1e6:.0f} MB, "
          f"{len(groups)} shards of <= {args.shard_mb} MB, {args.repeat} runs (median), 2 CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("(run_shard includes reading the manifest, planning, Ray tasks, the index, the"
          " shard manifest and stats, and adds each sample's .json/.txt members)")
    print(f"{'method':<40}{'median s':>10}{'MB/s':>10}   runs (s)")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:<40}{v:>10.2f}{total / 1e6 / v:>10.1f}   {', '.join(f'{x:.2f}' for x in results[k])}")
    print(f"ratio run_shard / ({par} + md5) throughput: {med[par + ' + md5'] / med['run_shard']:.2f} "
          f"(same work, same CPUs)")
    print(f"ratio run_shard / ({par}) throughput: {med[par] / med['run_shard']:.2f} (target >= 0.8)")
    print(f"ratio run_shard / (tar, 1 file, serial) throughput: "
          f"{med['tar, 1 file, serial'] / med['run_shard']:.2f}")


def shard_groups(build: Path, files: list[str], max_bytes: int) -> list[list[str]]:
    """The files in order, cut into groups of at most `max_bytes` (as run_shard cuts shards)."""
    groups: list[list[str]] = [[]]
    size = 0
    for f in files:
        n = (build / f).stat().st_size
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += n
    return groups


def tar_shards(build: Path, lists: list[Path], out: Path, md5: bool) -> None:
    """One tar per shard, two processes at a time; with `md5`, each tar piped through tee
    into md5sum, so the hash is made while the shard is written, as run_shard does."""
    def one(i: int) -> None:
        tar = f"tar -cf - -C {shlex.quote(str(build))} -T {shlex.quote(str(lists[i]))}"
        dst = shlex.quote(str(out / f"shard-{i:05d}.tar"))
        cmd = f"set -o pipefail; {tar} | tee {dst} | md5sum" if md5 else f"{tar} > {dst}"
        subprocess.run(["bash", "-c", cmd], check=True, stdout=subprocess.DEVNULL)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(len(lists))))

if __name__ == "__main__":
    main()
