"""Ray starts while the driver plans (issue 15, fixed cost): the start runs on a thread of
its own, the driver's own progress lines still reach the screen meanwhile, Ray's start-up
noise does not, Ray outlives the thread that started it, and a plan-only run of small
inputs starts no Ray at all."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ray

from lfvila_data.build import BuildConfig, plans_in_process, run_build
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata

SCRIPT = textwrap.dedent("""
    import sys, time
    import ray
    from lfvila_data.executor.cluster import RayStart

    start = RayStart(None)
    for i in range(3):          # the driver planning while Ray starts
        print(f"plan: line {i}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    start.wait()
    time.sleep(0.5)             # the start thread's work is done by now
    print("task gave", ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60), flush=True)
    start.stop()
    print("initialized after stop:", ray.is_initialized(), flush=True)
""")


def test_ray_starts_on_a_thread_quietly_and_outlives_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a user's plain shell
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240,
                       check=False, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    # Ray is usable after the thread that started it is idle (its processes would die with
    # that thread if it ended: PR_SET_PDEATHSIG is per thread)
    assert "task gave 42" in p.stdout and "initialized after stop: False" in p.stdout
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
