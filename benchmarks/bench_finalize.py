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
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
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


class Sampler:
    """Every 2 s in a thread: the bytes under the step's temporary directory (the sort's
    spilled runs) and the load average, kept at their extremes, and a trace of RSS, Arrow's
    allocated bytes and the spill over time (to see *when* the peak happens)."""

    def __init__(self, tmp: Path):
        self.tmp, self.spill, self.load = tmp, 0, [os.getloadavg()[0]] * 2
        self.trace: list[dict] = []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            size = sum(f.stat().st_size for f in self.tmp.rglob("*") if f.is_file())
            self.spill = max(self.spill, size)
            load = os.getloadavg()[0]
            self.load = [min(self.load[0], load), max(self.load[1], load)]
            import pyarrow as pa  # the step imports it anyway
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
            self.trace.append({"t": round(time.perf_counter() - self._t0), "rss_mib": rss,
                               "arrow_mib": pa.total_allocated_bytes() >> 20,
                               "spill_mib": size >> 20, "runs": sum(1 for _ in self.tmp.rglob("run-*"))})

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_spill_gib": round(self.spill / 2**30, 2), "load": [round(x, 1) for x in self.load]}


def child(step: str, build: Path, shards: Path) -> dict:
    """One measured step in this process; returns seconds (wall and CPU, all threads),
    peak RSS, peak spill disk and the load average's range."""
    sampler = Sampler(Path(tempfile.gettempdir()))
    t = time.perf_counter()
    if step == "finalize-new":
        from lfvila_data.output.write import finalize, iter_journal
        out = OutputDir(str(build))
        info = finalize(out, iter_journal(out), None)
    elif step == "finalize-old":
        sys.modules["lfvila_data.output.manifest"] = _legacy("lfvila_data/output/manifest.py")
        old = _legacy("lfvila_data/output/write.py")  # on the old external sort too
        out = OutputDir(str(build))
        info = old.finalize(out, old.iter_journal(out), None)
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = sampler.stop()
    with open(build.parent / f"trace-{step}-{build.name}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in sampler.trace)
    return {"step": step, "seconds": round(seconds, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), **stats,
            "samples": info.get("samples_written"), "shards": info.get("shards")}


def run_child(step: str, build: Path, shards: Path) -> dict:
    """The step in a child process whose temporary files go to a directory of its own."""
    tmp = build.parent / f"tmp-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = subprocess.run([sys.executable, __file__, "--child", step, "--build", str(build),
                        "--shards", str(shards)], capture_output=True, text=True, check=False,
                       env=os.environ | {"TMPDIR": str(tmp)})
    shutil.rmtree(tmp, ignore_errors=True)
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
    ap.add_argument("--steps", nargs="+", choices=["finalize", "plan"], default=["finalize", "plan"],
                    help="the steps to measure")
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
        steps = [f"{s}-{v}" for v in (["old"] if n <= args.old_up_to else []) + ["new"] for s in args.steps]
        for step in steps:
            if step == "finalize-new":  # the new reader must not find the old single file
                (build / "manifest.parquet").unlink(missing_ok=True)
            res = run_child(step, build, shards) | {"n": n}
            if step.startswith("finalize") and "error" not in res:
                res["outputs_gib"] = round(sum(p.stat().st_size for name in ("manifest", "failures", "downloads")
                                               for p in (build / name).glob("*")) / 2**30, 3)
                res["journal_gib"] = round(sum(p.stat().st_size for p in (build / "_journal").iterdir()) / 2**30, 3)
            print(json.dumps(res), flush=True)
            results.append(res)
        if not args.keep:
            shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(shards, ignore_errors=True)
    print("\n| samples | step | seconds | CPU s | peak RSS (MiB) | peak spill (GiB) | load |\n|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['step']} | {r.get('seconds', r.get('error'))} | {r.get('cpu_s', '')} | "
              f"{r.get('peak_rss_mib', '')} | {r.get('peak_spill_gib', '')} | {r.get('load', '')} |")


if __name__ == "__main__":
    main()
