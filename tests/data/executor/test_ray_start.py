"""Ray starts while the driver plans (issue 15, fixed cost): the start runs on a thread of
its own, the driver's own progress lines still reach the screen meanwhile, Ray's start-up
noise does not, Ray outlives the thread that started it, and a plan-only run of small
inputs starts no Ray at all. The local Ray is lean: none of the processes a one-machine
build does not use (dashboard, autoscaler and log monitors, prestarted workers), and
none of its processes outlives the stop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ray

from lfvila_data.build import BuildConfig, plans_in_process, run_build
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import psutil
    import ray
    from lfvila_data.executor.cluster import RayStart

    start = RayStart(None)
    for i in range(3):          # the driver planning while Ray starts
        print(f"plan: line {i}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    start.wait()
    time.sleep(0.5)             # the start thread's work is done by now
    ray_procs = psutil.Process().children(recursive=True)
    print("processes", json.dumps([" ".join(p.cmdline()[:3]) for p in ray_procs]), flush=True)
    print("task gave", ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60), flush=True)
    start.stop()
    print("initialized after stop:", ray.is_initialized(), flush=True)
    print("alive after stop:", [p.pid for p in psutil.wait_procs(ray_procs, timeout=30)[1]], flush=True)
""")

# what a one-machine build's Ray leaves out (executor/cluster.LocalRay), by the start of a
# command line (a worker renames itself ray::IDLE)
LEFT_OUT = {"dashboard": "dashboard/dashboard.py", "autoscaler monitor": "autoscaler/_private/monitor.py",
            "log monitor": "log_monitor.py", "prestarted worker": "default_worker.py", "idle worker": "ray::IDLE"}


def test_ray_starts_on_a_thread_quietly_and_outlives_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a user's plain shell
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240,
                       check=False, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    # Ray is usable after the thread that started it is idle (its processes would die with
    # that thread if it ended: PR_SET_PDEATHSIG is per thread)
    assert "task gave 42" in p.stdout and "initialized after stop: False" in p.stdout
    # a lean local Ray: the GCS, the raylet and its agents, nothing a one-machine build
    # does not use; and the stop ends every one of them
    procs = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("processes "))[10:])
    assert any("gcs_server" in c for c in procs) and any("raylet" in c for c in procs), procs
    assert {name for name, mark in LEFT_OUT.items() if any(mark in c for c in procs)} == set(), procs
    assert "alive after stop: []" in p.stdout
    # the driver's lines printed during the start reach stderr, in order
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("plan: line")]
    assert lines == ["plan: line 0", "plan: line 1", "plan: line 2"]
    # Ray's own start-up notice (the token-authentication warning) does not
    assert "authentication" not in p.stderr.lower(), p.stderr


def test_plan_only_of_small_inputs_starts_no_ray(tmp_path):
    ray.shutdown()  # whatever an earlier test left running
    meta, text = write_metadata(tmp_path, [VideoSpec("vid00001", "http://127.0.0.1:9/v.mp4",
                                                     even_spans(6, 4.0, 0.5))])
    cfg = BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(tmp_path / "out"),
                      plan=PlanConfig(min_clips=4), plan_only=True)
    assert plans_in_process(cfg)
    summary = run_build(cfg)
    assert summary["samples"] == 1 and summary["clips_in_samples"] == 6
    assert not ray.is_initialized()


def test_lean_start_is_one_variable_away(monkeypatch):
    from lfvila_data.executor.cluster import LEAN_ENV, LocalRay

    monkeypatch.delenv(LEAN_ENV, raising=False)
    assert LocalRay.from_env() == LocalRay(dashboard=False, monitor=False, log_monitor=False, prestart=False)
    monkeypatch.setenv(LEAN_ENV, "0")
    assert LocalRay.from_env() is None  # ray.init's own start, every process
