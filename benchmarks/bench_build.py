"""The whole build, end to end, split into its fixed and its proportional cost, beside a
bare decode of the same spans in the same run.

    python benchmarks/bench_build.py                      # 4 videos x 16 clips, 3 rounds
    python benchmarks/bench_build.py --videos 12 --repeat 5
    python benchmarks/bench_build.py --quick              # 1 round, 2 videos

A generated HD-VILA-style corpus (lfvila_data.demo.make_corpus: 320x240, 15 fps, 4-s clips)
is served on loopback; every method runs as the user runs it, a fresh `lfvila-data`
process, and rounds interleave the methods so drift on a shared machine hits all alike.

- `ray`: start a local Ray as the build does (`executor/cluster.init_ray` of the checkout
  measured, so a baseline's is its own), run one task, stop it: the floor Ray alone sets;
- `plan-only`: `lfvila-data build --plan-only` on a fresh output (start-up, reading and
  planning the inputs);
- `build`: the whole build on a fresh output;
- `rerun`: the same command again on the finished output, which has nothing left to cut:
  the build's fixed cost (start-up, Ray, planning or reusing the plan, finalize);
- `decode`: ffmpeg decoding exactly the spans the build cut, from the same files, to
  `-f null` (no scaling, no encode), one process per sample as the build runs them:
  what cutting cannot go below.

The proportional cost is build minus rerun. `--baseline DIR` runs plan-only, build and
rerun also with the code checked out in DIR (e.g. `git worktree add /tmp/base <commit>`),
in the same rounds, and prints ours/baseline ratios. `--also-ray` runs our build and rerun
also with `--executor ray` (ours by default runs on the driver's threads, no Ray);
`--executor ray` runs every build and rerun, ours and the baseline's, through Ray (what a
cluster runs; plan-only is then left out). CPU is the whole process tree (a cgroup
as root, else psutil polling: benchmarks/proctree.py), since Ray's workers are not the
driver's waited-for children. Each run's Ray keeps its files under a folder of its own
(RAY_TMPDIR), from which the worker processes it started are counted (one core-worker log
each). Medians are printed, with ratios; nothing asserts on time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import Measured, run_measured

from lfvila_data.demo import make_corpus
from lfvila_data.localserver import MediaServer

# a local Ray started and stopped by the code of the tree it runs in, as its build does
RAY_ONLY = ("import ray; from lfvila_data.executor.cluster import init_ray, shutdown_ray; init_ray(None); "
            "ray.get(ray.remote(lambda: 1).remote()); shutdown_ray()")


REPO = Path(__file__).resolve().parent.parent


def build_cmd(meta: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(meta), "--text", str(text),
            "--output", str(out), "--allow-private-addresses", *extra]


def tree_env(tree: Path) -> dict:
    """Run the code of `tree` (its subprocesses and Ray workers too; the command also runs
    in `tree`, since `python -m` puts the working directory first on the path)."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def decode_cmd(spans: list[tuple[str, float, float]]) -> list[str]:
    """One shell running one ffmpeg per span, as the build runs one per sample."""
    lines = [f"ffmpeg -nostdin -v error -ss {s:.3f} -i {src} -t {e - s:.3f} -f null - || exit 1"
             for src, s, e in spans]
    return ["bash", "-c", "\n".join(lines)]


def check(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        sys.exit(f"{what} failed ({m.returncode}):\n{m.stderr[-2000:]}")
    return m


def ray_workers(ray_tmp: Path) -> int:
    """Worker processes the Ray sessions under `ray_tmp` started (one core-worker log each,
    moved to old/ when the worker ends)."""
    return len(list(ray_tmp.rglob("python-core-worker-*.log")))


def measured_build(cmd: list[str], env: dict, tree: Path, ray_tmp: Path, cg: bool, what: str,
                   workers: dict[str, list[int]]) -> Measured:
    """One build command, its Ray (if any) in `ray_tmp`; the workers it started noted."""
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir(parents=True)
    m = check(run_measured(cmd, env={**env, "RAY_TMPDIR": str(ray_tmp)}, cwd=str(tree), use_cgroup=cg), what)
    workers[what].append(ray_workers(ray_tmp))
    return m


def corpus_args(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark on this corpus, beside another checkout (bench_costs too)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--baseline", default=None, help="a checkout of other code to run beside ours")
    return p


def main() -> None:
    p = corpus_args(__doc__)
    p.add_argument("--no-cgroup", action="store_true", help="measure CPU by polling (as without root)")
    p.add_argument("--also-ray", action="store_true", help="also our build with --executor ray")
    p.add_argument("--executor", default=None, help="every build (ours and the baseline's) with this --executor")
    p.add_argument("--also-local", action="store_true", help="also our build with --executor local")
    a = p.parse_args()
    if a.quick:
        a.videos, a.repeat = 2, 1
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_build_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Measured]] = defaultdict(list)
    source_s = 0.0
    (work / "corpus" / "www").mkdir(parents=True, exist_ok=True)
    with MediaServer(work / "corpus" / "www") as srv:
        meta, text = make_corpus(work / "corpus", srv.url("").rstrip("/"), videos=a.videos, clips=a.clips)
        www = work / "corpus" / "www"
        # tag -> (code, extra build options); the baseline predates --executor
        chosen = ("--executor", a.executor) if a.executor else ()
        trees = {"": (REPO, chosen), **({"ray-exec ": (REPO, ("--executor", "ray"))} if a.also_ray else {}),
                 **({"local-exec ": (REPO, ("--executor", "local"))} if a.also_local else {}),
                 **({"base ": (Path(a.baseline), chosen)} if a.baseline else {})}
        cg = not a.no_cgroup
        workers: dict[str, list[int]] = defaultdict(list)
        ray_tmp = work / "ray"
        for r in range(a.repeat):
            for tag, (tree, extra) in trees.items():
                env = tree_env(tree)
                if tree != REPO or not tag:  # each checkout's own start and stop
                    results[f"{tag}ray"].append(check(run_measured([sys.executable, "-c", RAY_ONLY], env=env,
                                                                   cwd=str(tree), use_cgroup=cg), f"{tag}ray"))
                if not extra:  # planning does not depend on the executor
                    out = work / f"plan{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    results[f"{tag}plan-only"].append(check(run_measured(
                        build_cmd(meta, text, out, "--plan-only"), env=env, cwd=str(tree), use_cgroup=cg),
                        f"{tag}plan-only"))
                out = work / f"build{r}"
                shutil.rmtree(out, ignore_errors=True)
                for what in ("build", "rerun"):
                    results[f"{tag}{what}"].append(measured_build(build_cmd(meta, text, out, *extra), env, tree,
                                                                  ray_tmp, cg, f"{tag}{what}", workers))
            manifest = pd.read_parquet(out / "manifest.parquet") if (out / "manifest.parquet").exists() \
                else pd.read_parquet(out / "manifest")
            spans = [(str(www / f"{row.video_id}.mp4"), float(row.start), float(row.end))
                     for row in manifest.itertuples()]
            source_s = sum(e - s for _, s, e in spans)
            results["decode"].append(check(run_measured(decode_cmd(spans), use_cgroup=cg), "decode"))
            print(f"round {r + 1}/{a.repeat}: " + ", ".join(
                f"{k} {v[-1].wall_s:.2f} s / {v[-1].cpu_s:.2f} CPU-s" for k, v in results.items()), flush=True)

    med = {k: (statistics.median(m.wall_s for m in v), statistics.median(m.cpu_s for m in v))
           for k, v in results.items()}
    build_w, build_c = med["build"]
    fixed_w, fixed_c = med["rerun"]
    prop_w, prop_c = build_w - fixed_w, build_c - fixed_c
    dec_w, dec_c = med["decode"]
    method = results["build"][0].method
    print(f"\n{a.videos} videos x {a.clips} clips, {len(spans)} samples, {source_s:.0f} source-s cut; "
          f"median of {a.repeat}; CPU by {method}")
    print(f"{'':24s} {'wall s':>8s} {'CPU s':>8s}")
    labels = [("ray", "ray start+stop"), ("plan-only", "plan-only"), ("rerun", "fixed (rerun, nothing to do)"),
              ("build", "whole build")]
    for key, label in labels:
        for tag in ("", "ray-exec ", "local-exec ", "base "):
            if f"{tag}{key}" in med:
                w, c = med[f"{tag}{key}"]
                print(f"{(tag + label):24s} {w:8.2f} {c:8.2f}")
    print(f"{'proportional':24s} {prop_w:8.2f} {prop_c:8.2f}")
    props = {tag: (med[f"{tag}build"][0] - med[f"{tag}rerun"][0], med[f"{tag}build"][1] - med[f"{tag}rerun"][1])
             for tag in ("ray-exec ", "local-exec ", "base ") if f"{tag}build" in med}
    for tag, (w, c) in props.items():
        print(f"{(tag + 'proportional'):24s} {w:8.2f} {c:8.2f}")
    print(f"{'bare decode':24s} {dec_w:8.2f} {dec_c:8.2f}")
    if any(any(v) for v in workers.values()):
        print("Ray worker processes started (median): " + ", ".join(
            f"{k} {statistics.median(v):g}" for k, v in workers.items()))
    for tag, name in (("base ", "baseline"), ("ray-exec ", "--executor ray"), ("local-exec ", "--executor local")):
        if f"{tag}build" in med:
            print(f"\nours / {name} (wall, CPU): " + ", ".join(
                f"{k} {med[k][0] / med[tag + k][0]:.2f}, {med[k][1] / med[tag + k][1]:.2f}"
                for k in ("ray", "plan-only", "rerun", "build") if tag + k in med))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[2]:.1f} (15 min)")
    print(f"fixed share of the build's wall time: {fixed_w / build_w:.2f}")
    print(f"source-s per wall-s: build {source_s / build_w:.1f}, proportional {source_s / max(prop_w, 1e-9):.1f}, "
          f"decode {source_s / dec_w:.1f}")
    print(f"source-s per CPU-s:  build {source_s / build_c:.1f}, proportional {source_s / max(prop_c, 1e-9):.1f}, "
          f"decode {source_s / dec_c:.1f}")
    print(f"proportional CPU / bare decode CPU: {prop_c / dec_c:.2f}"
          + "".join(f", {tag}{c / dec_c:.2f}" for tag, (_, c) in props.items()))
    print(f"proportional CPU per video: {prop_c / a.videos:.3f}"
          + "".join(f", {tag}{c / a.videos:.3f}" for tag, (_, c) in props.items()))
    subprocess.run(["rm", "-rf", str(work / "ray"), *(str(work / f"{k}{r}") for k in ("plan", "build")
                                                        for r in range(a.repeat))], check=False)


if __name__ == "__main__":
    main()
