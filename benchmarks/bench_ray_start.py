"""What each of Ray's optional processes costs a local Ray start (issue 15, fixed cost):
a local Ray started and stopped as a build does, once with every process ray.init starts
(`LFVILA_RAY_LEAN=0`, the code before), once lean (`executor/cluster.LocalRay()`, the
default now), and once per process the lean start leaves out with only that one put back,
so each row's difference to `lean` is what that process costs.

    python benchmarks/bench_ray_start.py --repeat 5

Every variant is a fresh process (`import ray`, start, one task, one actor call, stop),
measured over its whole process tree (a cgroup as root, else psutil polling:
benchmarks/proctree.py); rounds interleave the variants. The process itself reports the
wall time of the start (to ready), of the first task and actor call (a worker started
then, unless prestarted), and of the stop; the Ray processes it saw are listed for one
round. Medians are printed; nothing asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ray_workers import kind
from proctree import run_measured

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, logging, os, sys, threading, time
import psutil
t0 = time.perf_counter()
import ray
from lfvila_data.executor import cluster
imported = time.perf_counter() - t0
flags = json.loads(sys.argv[1])
names = {}
def watch():  # the names of the processes Ray starts, for the listing
    me = os.getpid()
    while True:
        for p in psutil.Process(me).children(recursive=True):
            try:
                names.setdefault(p.pid, " ".join(p.cmdline()[:3]) or p.name())
            except psutil.Error:
                pass
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
if flags is None:
    os.environ[cluster.LEAN_ENV] = "0"
    cluster.init_ray(None)
else:
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    assert cluster._start_lean(cluster.LocalRay(**flags), None, kwargs)
started = time.perf_counter() - t0
t0 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
task = time.perf_counter() - t0
@ray.remote(num_cpus=0)
class Board:
    def ping(self):
        return 1
t0 = time.perf_counter()
ray.get(Board.remote().ping.remote())
actor = time.perf_counter() - t0
t0 = time.perf_counter()
cluster.shutdown_ray()
stopped = time.perf_counter() - t0
print(json.dumps({"import": imported, "start": started, "task": task, "actor": actor, "stop": stopped,
                  "processes": sorted(names.values())}))
"""

# label -> LocalRay fields (None: every process ray.init starts, the code before)
VARIANTS: dict[str, dict | None] = {
    "ray.init (before)": None,
    "lean (now)": {},
    "lean + dashboard process": {"dashboard": True},
    "lean + autoscaler monitor": {"monitor": True},
    "lean + log monitor": {"log_monitor": True},
    "lean + prestarted workers": {"prestart": True},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-cgroup", action="store_true")
    a = p.parse_args()
    rows: dict[str, list[dict]] = defaultdict(list)
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_ray_start_") as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tmp}
        for r in range(a.repeat):
            for label, flags in VARIANTS.items():
                m = run_measured([sys.executable, "-c", CHILD, json.dumps(flags)], env=env, cwd=str(REPO),
                                 use_cgroup=not a.no_cgroup)
                if m.returncode != 0:
                    sys.exit(f"{label} failed ({m.returncode}):\n{m.stderr[-2000:]}")
                row = json.loads(m.stdout.strip().splitlines()[-1])
                row.update(wall=m.wall_s, cpu=m.cpu_s, method=m.method)
                rows[label].append(row)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{a.repeat}: " + ", ".join(
                f"{k} {v[-1]['wall']:.2f} s / {v[-1]['cpu']:.2f} CPU-s" for k, v in rows.items()), flush=True)

    def med(label: str, key: str) -> float:
        return statistics.median(row[key] for row in rows[label])

    lean = "lean (now)"
    print(f"\nmedians of {a.repeat}, CPU of the whole tree by {rows[lean][0]['method']}; load average "
          f"(1 min) {min(loads):.1f}-{max(loads):.1f}")
    keys = ("wall", "cpu", "import", "start", "task", "actor", "stop")
    print(f"{'':28s}" + "".join(f"{k:>9s}" for k in keys) + f"{'CPU vs lean':>13s}")
    for label in VARIANTS:
        print(f"{label:28s}" + "".join(f"{med(label, k):9.2f}" for k in keys)
              + f"{med(label, 'cpu') - med(lean, 'cpu'):+13.2f}")
    before = "ray.init (before)"
    print(f"\nlean / before: wall {med(lean, 'wall') / med(before, 'wall'):.2f}, "
          f"CPU {med(lean, 'cpu') / med(before, 'cpu'):.2f}, start+task+actor "
          f"{sum(med(lean, k) for k in ('start', 'task', 'actor')) / sum(med(before, k) for k in ('start', 'task', 'actor')):.2f}, "
          f"stop {med(lean, 'stop') / med(before, 'stop'):.2f}")
    for label in VARIANTS:
        kinds = sorted(kind(c, c).replace("other", "Ray: agent or reaper") for c in rows[label][0]["processes"])
        kinds = [k.split(" ")[0] if k.startswith("worker") else k for k in kinds]
        print(f"processes, {label}: {', '.join(kinds)}")


if __name__ == "__main__":
    main()
