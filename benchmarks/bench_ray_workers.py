"""Where a build's CPU goes through Ray, process by process: the driver, Ray's own
daemons (GCS, raylet, agents, monitors), each worker process (named by what it ran last:
`ray::IDLE`, an actor's class; "ran nothing" when it never ran a task), and the ffmpeg they ran; and what one worker process costs
to start (a fresh interpreter, `import ray`, then our task module).

    python benchmarks/bench_ray_workers.py --videos 16 --baseline /tmp/base

One `--executor ray` build and its rerun per checkout on the bench_build corpus, with
psutil polling every process of the build's session (`proctree.py`'s method: a process
that lives less than one poll is missed, so ffmpeg reads low; the cgroup totals are
bench_build's). The import costs are CPU seconds of fresh processes, medians of 5
rounds that interleave the checkouts.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import REPO, build_cmd, corpus_args, tree_env

from lfvila_data.demo import make_corpus
from lfvila_data.localserver import MediaServer

IMPORTS = {"interpreter": "pass", "import ray": "import ray",
           "import ray + the runner": "import ray; import lfvila_data.executor.runner"}


def kind(cmdline: str, last_name: str) -> str:
    """What a process of a build is, from its first command line and its last name."""
    if last_name.startswith("ray::") or "default_worker.py" in cmdline:
        return f"worker {last_name.strip()}"
    for word, name in (("ffmpeg", "ffmpeg"), ("ffprobe", "ffmpeg"), ("lfvila_data.cli", "driver"),
                       ("gcs_server", "Ray: gcs"), ("raylet", "Ray: raylet"), ("dashboard.py", "Ray: dashboard"),
                       ("log_monitor.py", "Ray: log monitor"), ("monitor.py", "Ray: autoscaler monitor")):
        if word in cmdline:
            return name
    return "other"


def run_polled(cmd: list[str], env: dict, cwd: str, poll_s: float = 0.02) -> tuple[float, dict]:
    """Run `cmd` in a session of its own; every process of that session, with its last
    seen CPU seconds, first command line, last name and every name seen (a worker is
    named `ray::<task>` while it runs one)."""
    seen: dict[tuple[int, float], list] = {}
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    sid = os.getsid(p.pid)
    done = threading.Event()

    def poll() -> None:
        for q in psutil.process_iter():
            try:
                if os.getsid(q.pid) != sid:
                    continue
                t, key = q.cpu_times(), (q.pid, q.create_time())
                row = seen.setdefault(key, [0.0, " ".join(q.cmdline()), "", set()])
                row[0], row[2] = t.user + t.system, q.name() if not q.cmdline() else " ".join(q.cmdline())[:40]
                row[3].add(row[2].strip())
            except (psutil.Error, OSError):
                continue

    def loop() -> None:
        while not done.is_set():
            poll()
            time.sleep(poll_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    time.sleep(1.0)  # Ray's processes end a moment after the driver
    done.set()
    thread.join()
    if p.returncode:
        sys.exit(f"build failed ({p.returncode}):\n{err[-2000:]}")
    return wall, seen


def breakdown(seen: dict) -> dict[str, tuple[int, float]]:
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for cpu, cmdline, last, names in seen.values():
        k = kind(cmdline, last)
        if k == "worker ray::IDLE" and {n for n in names if n.startswith("ray::")} <= {"ray::IDLE"}:
            k += ", ran nothing"  # e.g. the one Ray prestarts for a lease's backlog (performance.md)
        out[k][0] += 1
        out[k][1] += cpu
    return {k: (n, c) for k, (n, c) in out.items()}


def import_cpu(code: str, tree: Path) -> float:
    """CPU seconds of a fresh interpreter running `code` with the code of `tree` (a
    waited-for child: counted). It runs in `tree`: `python -c` puts the working directory
    first on the path, so run elsewhere it imported that directory's package instead."""
    before = os.times()
    subprocess.run([sys.executable, "-c", code], env=tree_env(tree), cwd=str(tree), check=True)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    p = corpus_args(__doc__)
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_ray_workers_"))
    trees = {"ours": REPO, **({"base": Path(a.baseline)} if a.baseline else {})}
    runs: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in trees}
    for _ in range(5):  # interleaved, so load drift on a shared machine hits every checkout alike
        for name, tree in trees.items():
            for k, c in IMPORTS.items():
                runs[name][k].append(import_cpu(c, tree))
    for name, costs in runs.items():
        print(f"{name}: CPU-s of a fresh process, median of 5 interleaved: "
              + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in costs.items()))
    (work / "corpus" / "www").mkdir(parents=True, exist_ok=True)
    with MediaServer(work / "corpus" / "www") as srv:
        meta, text = make_corpus(work / "corpus", srv.url("").rstrip("/"), videos=a.videos, clips=a.clips)
        for name, tree in trees.items():
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            for what in ("build", "rerun"):
                wall, seen = run_polled(build_cmd(meta, text, out, "--executor", "ray"), tree_env(tree), str(tree))
                rows = breakdown(seen)
                total = sum(c for _, c in rows.values())
                print(f"\n{name} {what}, {a.videos} videos: {wall:.1f} s wall, {total:.2f} CPU-s polled "
                      f"(load {os.getloadavg()[0]:.1f})")
                for k, (n, c) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
                    print(f"  {k:34s} {n:4d} processes {c:7.2f} CPU-s  ({c / n:.2f} each)")
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
