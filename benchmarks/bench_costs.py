"""Where the proportional cost of a build goes: the CPU of each step of `lfvila_data/media/`
per video and per source-second, on bench_build's corpus, without Ray.

    python benchmarks/bench_costs.py                        # 4 videos x 16 clips, 3 rounds
    python benchmarks/bench_costs.py --baseline /tmp/base   # another checkout in the same rounds
    python benchmarks/bench_costs.py --quick                # 1 round, 2 videos

The corpus and its loopback server are bench_build's (lfvila_data.demo.make_corpus,
MediaServer); the plan is made by `lfvila-data build --plan-only` (no Ray for small local
inputs). Each round runs, for each checkout, a fresh worker process (this script with
`--worker`, PYTHONPATH set to the checkout) that does what a build's tasks do, one video
after the other: `fetch_video` then `cut_video` on a fresh output, then both again on the
finished output (the reused-file checks of a rerun). The worker times each step by
wrapping the functions that do it (a stack of phases, each charged exclusive of the phases
inside it) and reads, per phase: the CPU of its own thread (`time.thread_time`), of the
process's other threads (the fetch guard's proxy threads), and of the child processes it
waited for (ffmpeg, ffprobe: `RUSAGE_CHILDREN`). The worker's whole process tree is
measured too (benchmarks/proctree.py), so what the phases miss shows as "unaccounted".

The cut's ffmpeg run is then taken apart by running variants of the same command on the
same section files (the worker, after the build): ffmpeg start-up (one null frame); the
bare decode of the span (accurate seek, as bench_build's limit); decode from the cut's
preroll seek through `trim` only; the whole filter chain to `-f null`; x264 start-up (a
one-frame span encoded, minus the same to `-f null`). Encoding and muxing is what the full
cut costs above the filter chain.

Python start-up is `python -c pass` in a fresh process; imports are timed in the worker.
Medians over rounds; nothing asserts on time.
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
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import REPO, build_cmd, check, corpus_args, tree_env
from proctree import run_measured

# -- the worker: runs in the checkout under test ------------------------------------------


class Meter:
    """Charges CPU to named phases; a phase is charged exclusive of the phases inside it.

    Only the main thread enters phases; CPU of other threads (the guard's proxy) in the
    meantime is charged to the phase that is open."""

    def __init__(self):
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.stack: list[list] = []  # [name, start readings, nested inclusive readings]

    @staticmethod
    def read() -> dict[str, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        main = time.thread_time()
        return {"main": main, "threads": me.ru_utime + me.ru_stime - main,
                "children": kids.ru_utime + kids.ru_stime, "wall": time.perf_counter()}

    def enter(self, name: str) -> None:
        self.stack.append([name, self.read(), defaultdict(float)])

    def leave(self) -> None:
        name, start, nested = self.stack.pop()
        now = self.read()
        used = {k: now[k] - start[k] for k in now}
        for k, v in used.items():
            self.totals[name][k] += v - nested[k]
        self.totals[name]["calls"] += 1
        if self.stack:
            for k, v in used.items():
                self.stack[-1][2][k] += v

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        meter = self

        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            meter.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                meter.leave()
        setattr(owner, attr, timed)


def _timed_import(meter: Meter, name: str, module: str) -> None:
    meter.enter(name)
    __import__(module)
    meter.leave()


def _ffmpeg_variants(meter: Meter, jobs: list, ctx, out_dir: Path) -> None:
    """Take the cut's ffmpeg run apart: run variants of its command on the same files."""
    from lfvila_data.media.cut import CutConfig, Span, cut_command

    cfg: CutConfig = ctx.cut
    scratch = Path(tempfile.mkdtemp(prefix="variants_"))

    def run(name: str, cmd: list[str]) -> None:
        meter.enter(name)
        subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        meter.leave()

    def to_null(cmd: list[str], graph: str | None = None) -> list[str]:
        i = cmd.index("-filter_complex")
        head = cmd[:i + 4]  # ... -filter_complex G -filter_threads N
        if graph is not None:
            head[i + 1] = graph
        return head + ["-map", "[v0]", "-f", "null", "-"]

    run("ffmpeg start-up (x jobs)", ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                                      "nullsrc=s=16x16:d=0.04", "-f", "null", "-"])
    meter.totals["ffmpeg start-up (x jobs)"]["calls"] = 0
    for job in jobs:
        for s in job.samples:
            src = _section_of(ctx, job.video_id, s.start, s.end)
            if src is None:
                continue
            end = min(s.end, _PROBE(src).end)
            full = cut_command(src, [Span(s.start, end, scratch / "o.mp4")], cfg, False)
            run("  bare decode of the span", ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{s.start:.3f}",
                                              "-i", str(src), "-t", f"{end - s.start:.3f}", "-f", "null", "-"])
            trim = f"[0:v:0]trim=start={s.start:.6f}:end={end:.6f}[v0]"
            run("  decode from the preroll seek + trim", to_null(full, trim))
            run("  + fps/scale filter chain (to null)", to_null(full))
            run("  + x264 encode and mux (full cut)", full)
            one = s.start + 1.0 / cfg.fps
            tiny = cut_command(src, [Span(s.start, one, scratch / "t.mp4")], cfg, False)
            run("  one-frame cut to null", to_null(tiny))
            run("  one-frame cut with x264", tiny)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(out_dir / "_variants", ignore_errors=True)


def _section_of(ctx, video_id: str, start: float, end: float) -> Path | None:
    """A kept section file covering the span (the worker keeps them for the variants)."""
    for f in sorted((Path(ctx.workdir) / "_kept" / video_id).glob("*")):
        first = float(f.stem) if f.stem.replace(".", "", 1).isdigit() else 0.0  # named by section start
        if first <= start and end <= _PROBE(f).end:
            return f
    return None


_PROBE = None


def worker(plan_out: str, output: str, workdir: str, variants: bool) -> None:
    meter = Meter()
    _timed_import(meter, "import lfvila_data.media.task", "lfvila_data.media.task")
    from lfvila_data.build import iter_jobs
    from lfvila_data.media import cut, fetch, task
    from lfvila_data.plan.join import PlanConfig

    if not getattr(fetch, "direct_media", None):  # the code that fetches with yt-dlp only
        _timed_import(meter, "import yt_dlp", "yt_dlp")
    import yt_dlp
    global _PROBE
    _PROBE = cut.probe  # unwrapped, for the variants
    meter.wrap(task, "fetch_video", "fetch: reused-file checks, task")
    meter.wrap(fetch.Fetcher, "__call__", "fetch: Fetcher (guard, retries, files)")
    meter.wrap(yt_dlp.YoutubeDL, "extract_info", "fetch: yt-dlp info extraction")
    meter.wrap(yt_dlp.YoutubeDL, "process_ie_result", "fetch: section download (yt-dlp + ffmpeg)")
    for attr, name in (("direct_media", "fetch: direct media check"),
                       ("download_sections", "fetch: section download (ffmpeg)")):
        meter.wrap(fetch, attr, name)
    meter.wrap(task, "cut_video", "cut: task (rows, stamps)")
    meter.wrap(task, "probe", "probe: the section (rerun: the file)")
    meter.wrap(task, "cut_spans", "cut: ffmpeg")
    meter.wrap(cut, "probe", "probe: the output")
    meter.wrap(cut, "probe_written", "probe: the output")  # from its MP4 boxes, else ffprobe
    meter.wrap(task, "probe_written", "rerun: probe of the file")
    meter.wrap(task, "reusable", "rerun: reused-file checks")

    ctx = task.TaskContext(output=output, fetch=fetch.FetchConfig(allow_private_addresses=True), workdir=workdir)
    # keep each video's section files for the variants (cut_video removes its scratch)
    rmtree = shutil.rmtree

    def keep_then_rmtree(path, *a, **k):
        p = Path(path)
        if variants and p.parent == ctx.scratch() and p.is_dir():
            dst = Path(workdir) / "_kept" / p.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in p.iterdir():  # a hard link: nothing charged to the task
                os.link(f, dst / f.name)
        return rmtree(path, *a, **k)
    task.shutil = SimpleNamespace(rmtree=keep_then_rmtree)  # task's own name only

    for d in (output, workdir):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(Path(plan_out) / "plan", Path(output) / "plan")
    jobs = list(iter_jobs(output, set(), PlanConfig().min_clips))
    seconds = 0.0
    for job in jobs:  # the build: every sample cut
        result = task.cut_video(task.fetch_video(job, ctx), ctx)
        if result.failures:
            raise SystemExit(f"{job.video_id}: {result.failures}")
        seconds += sum(r["end"] - r["start"] for r in result.rows)
    build = {k: dict(v) for k, v in meter.totals.items()}
    meter.totals.clear()
    for job in jobs:  # the rerun: every file reused
        task.cut_video(task.fetch_video(job, ctx), ctx)
    rerun = {k: dict(v) for k, v in meter.totals.items()}
    meter.totals.clear()
    if variants:
        _ffmpeg_variants(meter, jobs, ctx, Path(output))
    json.dump({"videos": len(jobs), "samples": sum(len(j.samples) for j in jobs), "source_s": seconds,
               "build": build, "rerun": rerun, "variants": {k: dict(v) for k, v in meter.totals.items()}},
              sys.stdout)


# -- the parent --------------------------------------------------------------------------


def cpu(row: dict) -> float:
    return row.get("main", 0.0) + row.get("threads", 0.0) + row.get("children", 0.0)


def main() -> None:
    p = corpus_args(__doc__)
    p.add_argument("--worker", nargs=3, metavar=("PLAN", "OUTPUT", "WORKDIR"), help=argparse.SUPPRESS)
    p.add_argument("--variants", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(*a.worker, a.variants)
    if a.quick:
        a.videos, a.repeat = 2, 1
    from lfvila_data.demo import make_corpus
    from lfvila_data.localserver import MediaServer

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_costs_"))
    trees = {"ours": REPO, **({"base": Path(a.baseline)} if a.baseline else {})}
    runs: dict[str, list[dict]] = defaultdict(list)
    (work / "corpus" / "www").mkdir(parents=True, exist_ok=True)
    with MediaServer(work / "corpus" / "www") as srv:
        meta, text = make_corpus(work / "corpus", srv.url("").rstrip("/"), videos=a.videos, clips=a.clips)
        plan = work / "plan"
        shutil.rmtree(plan, ignore_errors=True)
        check(run_measured(build_cmd(meta, text, plan, "--plan-only"), env=tree_env(REPO), cwd=str(REPO),
                           use_cgroup=False), "plan-only")
        for r in range(a.repeat):
            for tag, tree in trees.items():
                env = tree_env(tree)
                py = check(run_measured([sys.executable, "-c", "pass"], env=env), "python")
                out, scratch = work / f"out-{tag}{r}", work / f"scratch-{tag}{r}"
                m = check(run_measured([sys.executable, __file__, "--worker", str(plan), str(out), str(scratch),
                                        *(["--variants"] if tag == "ours" else [])],
                                       env=env, cwd=str(tree)), f"{tag} worker")
                got = json.loads(m.stdout)
                got["tree_cpu"], got["python"], got["method"] = m.cpu_s, py.cpu_s, m.method
                runs[tag].append(got)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(scratch, ignore_errors=True)
                print(f"round {r + 1}/{a.repeat} {tag}: worker {m.wall_s:.2f} s, {m.cpu_s:.2f} CPU-s", flush=True)
    report(runs, os.getloadavg())


def _median_steps(rounds: list[dict], part: str) -> dict[str, float]:
    names = {n for g in rounds for n in g[part]}
    return {n: statistics.median(cpu(g[part].get(n, {})) for g in rounds) for n in names}


def report(runs: dict[str, list[dict]], load: tuple[float, float, float]) -> None:
    first = runs["ours"][0]
    videos, source_s = first["videos"], first["source_s"]
    print(f"\n{videos} videos, {first['samples']} samples, {source_s:.0f} source-s; medians of "
          f"{len(runs['ours'])}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    tags = list(runs)
    steps = {t: _median_steps(runs[t], "build") for t in tags}
    names = sorted({n for t in tags for n in steps[t]})
    head = "".join(f" {t + ' CPU-s/video':>20s} {'ms/source-s':>12s}" for t in tags)
    print(f"\n{'step (build, no Ray)':44s}{head}")
    totals = {t: 0.0 for t in tags}
    for n in names:
        cells = ""
        for t in tags:
            v = steps[t].get(n, 0.0)
            totals[t] += v
            cells += f" {v / videos:20.3f} {1000 * v / source_s:12.1f}"
        print(f"{n:44s}{cells}")
    extra = {t: statistics.median(g["python"] for g in runs[t]) for t in tags}
    print(f"{'python start-up (per process)':44s}" + "".join(f" {extra[t]:20.3f} {'':12s}" for t in tags))
    print(f"{'sum of the steps':44s}" + "".join(f" {totals[t] / videos:20.3f} {1000 * totals[t] / source_s:12.1f}"
                                                  for t in tags))
    print(f"{'cost / source-s vs bare decode':44s}" + "".join(
        f" {'':20s} {totals[t] / max(_bare(runs['ours']), 1e-9):11.2f}x" for t in tags))
    guard = {t: statistics.median(sum(r.get("threads", 0.0) for r in g["build"].values()) for g in runs[t])
             for t in tags}
    print(f"{'  of which other threads (fetch guard)':44s}" + "".join(
        f" {guard[t] / videos:20.3f} {1000 * guard[t] / source_s:12.1f}" for t in tags))
    tree = {t: statistics.median(g["tree_cpu"] for g in runs[t]) for t in tags}
    print("worker process tree (" + runs["ours"][0]["method"] + "): " + ", ".join(
        f"{t} {tree[t]:.2f} CPU-s" for t in tags) + " (build, rerun, and ours' ffmpeg variants)")
    outside = {t: statistics.median(g["tree_cpu"] - sum(cpu(r) for part in ("build", "rerun", "variants")
                                                        for r in g[part].values()) for g in runs[t])
               for t in tags}
    print("  of which outside every phase (interpreter, imports of the worker, reading the plan): " +
          ", ".join(f"{t} {outside[t]:.2f} CPU-s" for t in tags))
    rerun = {t: _median_steps(runs[t], "rerun") for t in tags}
    print("rerun, nothing to cut (fixed cost): " + ", ".join(
        f"{t} {sum(rerun[t].values()) / videos:.3f} CPU-s/video" for t in tags))
    var = _median_steps(runs["ours"], "variants")
    if var:
        print(f"\nthe cut's ffmpeg run taken apart (ours, summed over the {first['samples']} samples):")
        for n in sorted(var, key=_variant_order):
            print(f"  {n:44s} {var[n]:8.3f} CPU-s {1000 * var[n] / source_s:8.1f} ms/source-s")


_ORDER = ["ffmpeg", "  bare", "  decode", "  + fps", "  + x264", "  one-frame cut to", "  one-frame cut with"]


def _variant_order(name: str) -> int:
    return next((i for i, p in enumerate(_ORDER) if name.startswith(p)), len(_ORDER))


def _bare(rounds: list[dict]) -> float:
    return statistics.median(cpu(g["variants"].get("  bare decode of the span", {})) for g in rounds)


if __name__ == "__main__":
    main()
