"""The end of a full-size build: `finalize` (journal -> manifest/, failures/, downloads/)
and shard planning (`plan_shards`), time and peak memory, on simulated finished builds
(a real media journal of realistic samples, no video), old code and new in the same run.

The old code is the previous implementation read from git (the merge base with main:
`finalize` over `read_journal`, and `read_manifests` + `plan_shards` in pandas), run only
up to --old-up-to samples (it holds every row in the driver). Each measurement runs in a
child process of its own, so its peak RSS (ru_maxrss) is that step's alone; neither step
starts Ray tasks, so the driver is the only process.

    nice python benchmarks/bench_finalize.py --samples 1000000 4000000 8500000 --old-up-to 1000000
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfvila_data.output.write import OutputDir
from tests.support.finished import simulate


def simulate_once(build: Path, samples: int) -> None:
    """A finished build's media journal (tests/support/finished.py), kept between runs."""
    if not (build / "_journal" / "SIMULATED").exists():
        simulate(build, samples)
        (build / "_journal" / "SIMULATED").write_text(f"{samples}\n")


def _legacy(module: str) -> types.ModuleType:
    """The module as it was before this change (git merge base with main)."""
    base = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True,
                          text=True, check=True).stdout.strip()
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:{module}"], capture_output=True,
                         text=True, check=True).stdout
    mod = types.ModuleType(f"legacy_{Path(module).stem}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{base[:8]}:{module}", "exec"), mod.__dict__)  # noqa: S102 - our own code at a commit
    return mod


def child(step: str, build: Path, shards: Path) -> dict:
    """One measured step in this process; returns seconds and peak RSS."""
    t = time.perf_counter()
    if step == "finalize-new":
        from lfvila_data.output.write import finalize, iter_journal
        out = OutputDir(str(build))
        info = finalize(out, iter_journal(out), None)
    elif step == "finalize-old":
        old = _legacy("lfvila_data/output/write.py")
        out = OutputDir(str(build))
        info = old.finalize(out, old.read_journal(out), None)
    elif step == "plan-new":
        from lfvila_data.shards.write import ShardConfig, plan_shards
        layout = plan_shards([str(build)], str(shards), ShardConfig())
        info = {"shards": len(layout.shards)}
    elif step == "plan-old":
        old = _legacy("lfvila_data/shards/write.py")
        manifest, _ = old.read_manifests([str(build)])
        info = {"shards": len(old.plan_shards(manifest, old.ShardConfig()))}
    else:
        raise SystemExit(f"unknown step {step}")
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step": step, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20),
            "samples": info.get("samples_written"), "shards": info.get("shards")}


def run_child(step: str, build: Path, shards: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", step, "--build", str(build),
                        "--shards", str(shards)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"step": step, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[100_000])
    ap.add_argument("--old-up-to", type=int, default=1_000_000,
                    help="run the old code only up to this many samples")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-bench-finalize"))
    ap.add_argument("--keep", action="store_true", help="keep the simulated builds")
    ap.add_argument("--child")
    ap.add_argument("--build", type=Path)
    ap.add_argument("--shards", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.build, args.shards)))
        return
    results = []
    for n in args.samples:
        build, shards = args.workdir / f"build-{n}", args.workdir / f"shards-{n}"
        t = time.perf_counter()
        simulate_once(build, n)
        print(f"{n:,} samples: journal simulated in {time.perf_counter() - t:.0f} s "
              f"({sum(p.stat().st_size for p in (build / '_journal').iterdir()) / 2**30:.2f} GiB)", flush=True)
        steps = (["finalize-old", "plan-old"] if n <= args.old_up_to else []) + ["finalize-new", "plan-new"]
        for step in steps:
            if step == "finalize-new":  # the new reader must not find the old single file
                (build / "manifest.parquet").unlink(missing_ok=True)
            res = run_child(step, build, shards) | {"n": n}
            print(json.dumps(res), flush=True)
            results.append(res)
        if not args.keep:
            shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(shards, ignore_errors=True)
    print("\n| samples | step | seconds | peak RSS (MiB) |\n|---:|---|---:|---:|")
    for r in results:
        print(f"| {r['n']:,} | {r['step']} | {r.get('seconds', r.get('error'))} | {r.get('peak_rss_mib', '')} |")


if __name__ == "__main__":
    main()
