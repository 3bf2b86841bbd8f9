"""Benchmark of the planning shuffle: wall time, CPU and peak memory of build_plan on a
local Ray in up to three variants in one run, with the plan files of each compared byte
for byte to the first: `per-line` (lines parsed in Python, videos planned by `group_runs`
on Python objects: the path before issue 11 C), `arrow-objects` (Arrow-block parsing,
per-object reduce) and `columnar` (Arrow-block parsing and the columnar reduce: the
default); the map phase alone (CPU per clip, one process); and a naive one-process pandas
join. All on generated HD-VILA-format metadata.

    python benchmarks/bench_plan.py --clips 1000000 --skip-baseline
    python benchmarks/bench_plan.py --clips 10000000 --variants columnar --skip-map --skip-baseline
    python benchmarks/bench_plan.py --clips 1000000 --variants columnar --skip-map   # vs naive pandas
    python benchmarks/bench_plan.py --clips 1000000 --reduce-task --profile --skip-map \
        --variants '' --skip-baseline                 # one reduce task: per object vs columnar

The naive baseline runs on the same data as the Ray variants (`--baseline-clips` defaults
to `--clips`), so memory per clip is compared at one size.

Memory is sampled every 0.5 s over the driver and every process it started (gcs, raylet,
workers): summed RSS (counts shared object-store pages once per process that maps them),
summed PSS (shares them out, so it adds up to real use) and the largest single RSS. CPU is
the user+system time of that process tree (each process's last sample: Ray's workers are
not waited-for children, so rusage would miss them), from after Ray started to the end."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", np.uint8)
_WORDS = ("the a we you this that is was so and but then now here there people video make "
          "going to really just like know think right okay time way see look good little "
          "thing water cook pan heat minutes guitar chord game level player road car engine "
          "paint brush color layer camera light phone battery garden soil seed tree").split()


# ---------------------------------------------------------------------------------------
# data generation


def _fmt_spans(ms: np.ndarray) -> pa.Array:
    """HH:MM:SS.mmm strings, vectorised."""
    def pad(x: np.ndarray, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pa.array(x), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pad(ms // 3_600_000, 2), ":", pad(ms // 60_000 % 60, 2), ":",
                                       pad(ms // 1000 % 60, 2), ".", pad(ms % 1000, 3), "")


def _sentence_pool(rng: np.random.Generator, n: int) -> pa.Array:
    words = np.array(_WORDS)
    out = []
    for _ in range(n):
        length = int(rng.integers(90, 220))
        text, i = [], 0
        while i < length:
            w = words[rng.integers(len(words))]
            text.append(w)
            i += len(w) + 1
        out.append(" ".join(text).capitalize() + ".")
    return pa.array(out)


def _write(arr: pa.Array, f) -> None:
    """Write a string array whose values are whole lines: its data buffer is the file."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32 if arr.type == pa.string() else np.int64,
                            count=len(arr) + 1, offset=arr.offset * (4 if arr.type == pa.string() else 8))
    f.write(memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]])


def generate(workdir: Path, n_clips: int, parts: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Write hdvila_part*.jsonl and one clip-text jsonl with about n_clips clips."""
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / "generated.json"
    if marker.exists() and json.loads(marker.read_text())["clips_target"] == n_clips:
        info = json.loads(marker.read_text())
        return info["metadata"], info["text"]
    rng = np.random.default_rng(seed)
    pool = _sentence_pool(rng, 50_000)
    n_videos = max(1, round(n_clips / 13.4))
    batch_videos = 50_000
    meta_paths = [str(workdir / f"hdvila_part{p}.jsonl") for p in range(parts)]
    text_path = str(workdir / "hdvila_clip_text.jsonl")
    meta_files = [open(p, "wb") for p in meta_paths]
    total = 0
    with open(text_path, "wb") as text_file:
        for b0 in range(0, n_videos, batch_videos):
            nv = min(batch_videos, n_videos - b0)
            ids = _ALPHABET[rng.integers(0, 64, (nv, 11))].view("S11").ravel()
            vid = pc.cast(pa.array(ids), pa.string())
            # clips per video: negative binomial, mean ~13.4, long tail like real videos
            per = 1 + rng.negative_binomial(2, 2 / (2 + 12.4), nv)
            n = int(per.sum())
            total += n
            first = np.concatenate([[0], np.cumsum(per)[:-1]])
            vidx = np.repeat(np.arange(nv), per)
            k = np.arange(n) - first[vidx] + 1
            dur = rng.integers(2000, 25000, n)
            gap = np.where(rng.random(n) < 0.9, rng.integers(0, 1500, n), rng.integers(1500, 30000, n))
            step = np.cumsum(gap + dur)
            base = (step - gap - dur)[first][vidx]  # elapsed before the video's first clip
            end_ms = step - base
            start_ms = end_ms - dur
            vid_c = pc.take(vid, pa.array(vidx))
            clip_id = pc.binary_join_element_wise(vid_c, ".", pc.cast(pa.array(k), pa.string()), ".mp4", "")
            clip_json = pc.binary_join_element_wise(
                '{"clip_id": "', clip_id, '", "span": ["', _fmt_spans(start_ms), '", "',
                _fmt_spans(end_ms), '"]}', "")
            clips = pc.binary_join(pa.ListArray.from_arrays(
                pa.array(np.concatenate([first, [n]]).astype(np.int32)), clip_json), ", ")
            lines = pc.binary_join_element_wise(
                '{"video_id": "', vid, '", "url": "https://www.youtube.com/watch?v=', vid,
                '", "clip": [', clips, ']}\n', "")
            _write(lines, meta_files[b0 * parts // n_videos])
            keep = rng.random(n) >= 0.01  # 1% of clips have no text line
            texts = pc.binary_join_element_wise(
                '{"clip_id": "', pc.filter(clip_id, keep), '", "text": "',
                pc.take(pool, pa.array(rng.integers(0, len(pool), int(keep.sum())))), '"}\n', "")
            _write(texts, text_file)
    for f in meta_files:
        f.close()
    marker.write_text(json.dumps({"clips_target": n_clips, "clips": total, "videos": n_videos,
                                  "metadata": meta_paths, "text": [text_path]}))
    return meta_paths, [text_path]


# ---------------------------------------------------------------------------------------
# memory sampling from /proc


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak summed RSS/PSS and largest RSS of a process tree, sampled every 0.5 s."""

    def __init__(self, root: int, every_s: float = 0.5) -> None:
        self.root, self.every_s = root, every_s
        self.peak_rss = self.peak_pss = self.peak_one = self.peak_private = 0
        self.peak_one_name = ""
        self.load: list[float] = []  # 1-minute load average at each sample (the machine is shared)
        self.cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0
        for pid in _tree(self.root):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                self.cpu_ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
            r = _kib(f"/proc/{pid}/status", "VmRSS:")
            rss += r
            pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
            # pages this process alone holds: a long-lived Ray worker's RSS also counts every
            # object-store page it ever mapped, which depends on which tasks it happened to run
            own = (_kib(f"/proc/{pid}/smaps_rollup", "Private_Clean:")
                   + _kib(f"/proc/{pid}/smaps_rollup", "Private_Dirty:"))
            self.peak_private = max(self.peak_private, own)
            if r > self.peak_one:
                self.peak_one = r
                try:
                    self.peak_one_name = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.load.append(os.getloadavg()[0])

    def cpu_s(self) -> float:
        """User+system seconds of every process of the tree so far (sampled now)."""
        self._sample()
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------------------------------
# the contenders

# name: (per_line, per_object) of build_plan
VARIANTS = {"per-line": (True, True), "arrow-objects": (False, True), "columnar": (False, False)}


def run_ray(meta: list[str], text: list[str], out_dir: str, num_buckets: int | None,
            chunk_mib: int, max_in_flight: int | None, per_line: bool = False, per_object: bool = False) -> dict:
    import ray

    from lfvila_data.executor.pool import RayShuffle
    from lfvila_data.plan.join import PlanConfig, build_plan

    with MemorySampler(os.getpid()) as mem:
        t0 = time.monotonic()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        t1, cpu1 = time.monotonic(), mem.cpu_s()
        cfg = PlanConfig(num_buckets=num_buckets, chunk_bytes=chunk_mib * 1024 * 1024)
        summary = build_plan(meta, text, out_dir, cfg, shuffle=RayShuffle(max_in_flight=max_in_flight),
                             per_line=per_line, per_object=per_object)
        t2, cpu2 = time.monotonic(), mem.cpu_s()
        ray.shutdown()
    return {"wall_s": t2 - t1, "cpu_s": cpu2 - cpu1, "ray_start_s": t1 - t0, "summary": summary.__dict__,
            "peak_rss_sum_mib": mem.peak_rss / 1024, "peak_pss_sum_mib": mem.peak_pss / 1024,
            "peak_one_mib": mem.peak_one / 1024, "peak_one_name": mem.peak_one_name,
            "peak_private_mib": mem.peak_private / 1024, "load_min": min(mem.load), "load_max": max(mem.load)}


def _map_ranges(meta: list[str], text: list[str], chunk_mib: int, num_buckets: int,
                per_line: bool = False) -> Iterator[tuple[list[dict], dict]]:
    """Every map task of build_plan, run in this process: (per-bucket parts, stats) each."""
    from lfvila_data.inputs import iter_line_ranges
    from lfvila_data.plan.join import map_metadata_range, map_text_range

    task_no = 0
    for kind, paths in (("metadata", meta), ("text", text)):
        for i, p in enumerate(paths):
            for _, start, end in iter_line_ranges(p, chunk_mib * 1024 * 1024):
                if kind == "metadata":
                    yield map_metadata_range(i, p, start, end, num_buckets, False, task_no, per_line)
                else:
                    yield map_text_range(i, p, start, end, num_buckets, task_no, per_line)
                task_no += 1


def map_phase_cpu(meta: list[str], text: list[str], chunk_mib: int, per_line: bool) -> dict:
    """CPU seconds of every map task of build_plan run in this process (11 buckets)."""
    t0, lines = time.process_time(), 0
    for _, stats in _map_ranges(meta, text, chunk_mib, 11, per_line):
        lines += stats["lines"]
    return {"cpu_s": time.process_time() - t0, "lines": lines}


def bucket_parts(meta: list[str], text: list[str], chunk_mib: int, num_buckets: int,
                 bucket: int) -> list[dict]:
    """Bucket `bucket` of every map task's output (Arrow parse), computed in this process."""
    return [parts[bucket] for parts, _ in _map_ranges(meta, text, chunk_mib, num_buckets)]


def _profile_shares(fn, top: int) -> list[tuple[str, float]]:
    """cProfile of fn(): the `top` functions by own CPU time (not wall time: the machine is
    shared), as shares of the total."""
    import cProfile
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = sorted(((f"{Path(k[0]).name}:{k[2]}", v[2] / total) for k, v in stats.items()),
                  key=lambda r: -r[1])
    return rows[:top]


def reduce_task(meta: list[str], text: list[str], chunk_mib: int, num_buckets: int, repeat: int,
                profile: bool, workdir: Path) -> dict:
    """One reduce task (bucket 0 of `num_buckets`) in this process: per object against
    columnar, interleaved `repeat` times, CPU by time.process_time; with `profile`, where
    the Arrow map and the columnar reduce spend their CPU (cProfile, own time)."""
    from lfvila_data.plan.join import PlanConfig, reduce_bucket

    parts = bucket_parts(meta, text, chunk_mib, num_buckets, 0)
    clips = sum(p["clips"].num_rows for p in parts if "clips" in p)
    cfg, cpu = PlanConfig(), {"per-object": [], "columnar": []}
    out = {}
    for _ in range(repeat):
        for name, runs in cpu.items():
            d = workdir / f"reduce-{name}"
            (d / "plan").mkdir(parents=True, exist_ok=True)
            t0 = time.process_time()
            r = reduce_bucket(0, parts, cfg, str(d), per_object=name == "per-object")
            runs.append(time.process_time() - t0)
            out[name] = r["counts"]
    same = same_files(str(workdir / "reduce-per-object"), str(workdir / "reduce-columnar"))
    med = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
    print(f"reduce task, bucket 0 of {num_buckets}: {clips:,} clips, {out['columnar']['samples']:,} "
          f"samples; part files byte-identical: {same}")
    for name, runs in cpu.items():
        print(f"  {name:<11} CPU s per run {', '.join(f'{c:.2f}' for c in runs)}; median {med[name]:.2f} "
              f"({med[name] / clips * 1e6:.1f} µs/clip)")
    print(f"  columnar: {med['per-object'] / med['columnar']:.2f}x less CPU (medians of {repeat})")
    result = {"clips": clips, "cpu_s": cpu, "identical": same}
    if profile:
        def map_all() -> None:
            for _ in _map_ranges(meta, text, chunk_mib, num_buckets):
                pass

        d = workdir / "reduce-profile"
        (d / "plan").mkdir(parents=True, exist_ok=True)
        for label, fn in (("Arrow map phase, all ranges", map_all),
                          ("columnar reduce task", lambda: reduce_bucket(0, parts, cfg, str(d))),
                          ("per-object reduce task",
                           lambda: reduce_bucket(0, parts, cfg, str(d), per_object=True))):
            rows = _profile_shares(fn, 12)
            print(f"profile, {label} (own time, share of the profiled total):")
            for name, share in rows:
                print(f"  {share:6.1%}  {name}")
            result[f"profile {label}"] = rows
    return result


def same_files(a: str, b: str) -> bool:
    """Every file under a/plan and b/plan byte for byte equal."""
    names = sorted(os.listdir(f"{a}/plan"))
    return names == sorted(os.listdir(f"{b}/plan")) and all(
        Path(f"{a}/plan/{n}").read_bytes() == Path(f"{b}/plan/{n}").read_bytes() for n in names)


def naive_pandas(meta: list[str], text: list[str]) -> dict:
    """What one would write first: the whole text file in a dict, then join in pandas."""
    import pandas as pd

    from lfvila_data.plan.join import PlanConfig, group_runs
    from lfvila_data.sources.hdvila import parse_video_line

    texts_df = pd.concat(pd.read_json(p, lines=True, dtype={"clip_id": str, "text": str}) for p in text)
    texts = dict(zip(texts_df["clip_id"], texts_df["text"]))
    rows = []
    for path in meta:
        with open(path, "rb") as f:
            for line in f:
                video, _ = parse_video_line(line, allow_local_files=False)
                if video:
                    rows += [(video.video_id, video.url, c.clip_id, c.k, c.start, c.end) for c in video.clips]
    clips = pd.DataFrame(rows, columns=["video_id", "url", "clip_id", "k", "start", "end"])
    clips["text"] = clips["clip_id"].map(texts)
    cfg, samples = PlanConfig(), 0
    from lfvila_data.records import Clip, VideoMeta
    for (vid, url), g in clips.groupby(["video_id", "url"], sort=False):
        meta_v = VideoMeta(vid, url, tuple(Clip(*r) for r in zip(g["clip_id"], g["k"], g["start"], g["end"])))
        samples += len(group_runs(meta_v, {c: t for c, t in zip(g["clip_id"], g["text"]) if isinstance(t, str)}, cfg)[0])
    return {"samples": samples, "clips": len(clips)}


def run_baseline(meta: list[str], text: list[str]) -> dict:
    """The naive approach in a child process, so its memory is measured alone."""
    cmd = [sys.executable, __file__, "--baseline-child", json.dumps({"meta": meta, "text": text})]
    t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    with MemorySampler(proc.pid) as mem:
        out, _ = proc.communicate()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # one waited-for child: rusage is whole
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {"wall_s": time.monotonic() - t0,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "peak_rss_sum_mib": mem.peak_rss / 1024,
            "peak_pss_sum_mib": mem.peak_pss / 1024, "peak_one_mib": mem.peak_one / 1024, **result}


# ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10_000_000)
    ap.add_argument("--baseline-clips", type=int, default=None,
                    help="clips for the naive pandas baseline (default: --clips, on the same data)")
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/lfvila-bench-plan")
    ap.add_argument("--num-buckets", type=int, default=None)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--max-in-flight", type=int, default=None)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-map", action="store_true", help="skip the in-process map-phase CPU measurement")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"build_plan variants to run, in order, each compared to the first ({', '.join(VARIANTS)})")
    ap.add_argument("--reduce-task", action="store_true",
                    help="time one reduce task (bucket 0) in this process, per object vs columnar")
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved rounds of every measurement (medians reported)")
    ap.add_argument("--profile", action="store_true",
                    help="with --reduce-task: cProfile of the Arrow map phase and both reduces")
    ap.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        spec = json.loads(args.baseline_child)
        print(json.dumps(naive_pandas(spec["meta"], spec["text"])))
        return

    work = Path(args.workdir)
    t0 = time.monotonic()
    meta, text = generate(work / f"data-{args.clips}", args.clips, args.parts)
    info = json.loads((work / f"data-{args.clips}" / "generated.json").read_text())
    size = sum(os.path.getsize(p) for p in meta + text)
    print(f"data: {info['clips']:,} clips, {info['videos']:,} videos, {size / 2**30:.2f} GiB "
          f"(generated or reused in {time.monotonic() - t0:.0f} s)", flush=True)

    results = {}
    if not args.skip_map:  # interleaved rounds, medians
        cpu = {"per line": [], "arrow": []}
        for _ in range(args.repeat):
            for label, runs_ in cpu.items():
                runs_.append(map_phase_cpu(meta, text, args.chunk_mib, label == "per line")["cpu_s"])
        for label, runs_ in cpu.items():
            m = statistics.median(runs_)
            print(f"map phase, {label}: CPU s per run {', '.join(f'{c:.1f}' for c in runs_)}; median "
                  f"{m:.1f} ({m / info['clips'] * 1e6:.2f} µs per clip)", flush=True)
            results[f"map_cpu_{label.replace(' ', '_')}"] = runs_
        ratio = statistics.median(cpu["per line"]) / statistics.median(cpu["arrow"])
        print(f"map phase: arrow is {ratio:.2f}x less CPU (medians of {args.repeat})", flush=True)
    if args.reduce_task:
        results["reduce_task"] = reduce_task(meta, text, args.chunk_mib, args.num_buckets or 11,
                                             args.repeat, args.profile, work / f"out-{args.clips}")
    variants = [v for v in args.variants.split(",") if v]
    baseline_clips = args.baseline_clips or args.clips
    small_meta, small_text, small = meta, text, info["clips"]
    if not args.skip_baseline and (baseline_clips != args.clips or not variants):
        small_meta, small_text = generate(work / f"data-{baseline_clips}", baseline_clips, 1, seed=1)
        small = json.loads((work / f"data-{baseline_clips}" / "generated.json").read_text())["clips"]
    contenders = {}  # name -> (clips, run function)
    for variant in variants:
        per_line, per_object = VARIANTS[variant]
        contenders[f"ray build_plan, {variant}, {info['clips']:,} clips"] = (info["clips"], partial(
            run_ray, meta, text, str(work / f"out-{args.clips}-{variant}"), args.num_buckets,
            args.chunk_mib, args.max_in_flight, per_line, per_object))
    if not args.skip_baseline:
        if small_meta is not meta:  # a Ray plan of the baseline's own data
            contenders[f"ray build_plan, columnar, {small:,} clips"] = (small, partial(
                run_ray, small_meta, small_text, str(work / f"out-{baseline_clips}"), args.num_buckets,
                args.chunk_mib, args.max_in_flight))
        contenders[f"naive pandas, {small:,} clips"] = (small, partial(run_baseline, small_meta, small_text))
    runs: dict[str, tuple[int, list[dict]]] = {n: (c, []) for n, (c, _) in contenders.items()}
    for rep in range(args.repeat if contenders else 0):  # interleaved: load hits every method alike
        for name, (_, fn) in contenders.items():
            r = fn()
            runs[name][1].append(r)
            print(f"[{rep + 1}/{args.repeat}] {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU s, "
                  f"peak PSS sum {r['peak_pss_sum_mib']:.0f} MiB, largest process {r['peak_one_mib']:.0f} MiB "
                  f"({r.get('peak_one_name', '')}; largest private {r.get('peak_private_mib', 0):.0f} MiB), "
                  f"load {r.get('load_min', 0):.1f}-{r.get('load_max', 0):.1f} "
                  f"during the run", flush=True)
    for variant in variants[1:]:
        identical = same_files(str(work / f"out-{args.clips}-{variants[0]}"), str(work / f"out-{args.clips}-{variant}"))
        print(f"plan files of {variant} and {variants[0]} byte-identical: {identical}")
        results[f"identical_{variant}"] = identical
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for n, (_, rs) in runs.items() if rs}
    results.update({n: rs for n, (_, rs) in runs.items()})

    print(f"\nmedians of {args.repeat} interleaved runs")
    print(f"{'run':48} {'wall s':>8} {'CPU s':>8} {'RSS sum MiB':>12} {'PSS sum MiB':>12} {'max 1 proc MiB':>15} "
          f"{'PSS KiB/clip':>13}")
    for name, r in med.items():
        clips = runs[name][0]
        print(f"{name:48} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_sum_mib']:12.0f} {r['peak_pss_sum_mib']:12.0f} "
              f"{r['peak_one_mib']:15.0f} {r['peak_pss_sum_mib'] * 1024 / clips:13.3f}")
    names = list(med)
    for name in names[1:len(variants)]:
        print(f"{names[0].split(',')[1].strip()} vs {name.split(',')[1].strip()}: "
              f"{med[name]['wall_s'] / med[names[0]]['wall_s']:.2f}x faster (wall), "
              f"{med[name]['cpu_s'] / med[names[0]]['cpu_s']:.2f}x less CPU, "
              f"peak PSS sum {med[names[0]]['peak_pss_sum_mib'] / med[name]['peak_pss_sum_mib']:.2f}x")
    if not args.skip_baseline:  # the naive run against the Ray run of the same data
        naive, ray_run = med[names[-1]], med[names[-2] if small_meta is not meta else names[0]]
        print(f"naive pandas / ray build_plan, same {small:,} clips: peak PSS sum "
              f"{naive['peak_pss_sum_mib'] / ray_run['peak_pss_sum_mib']:.2f}x, largest process "
              f"{naive['peak_one_mib'] / ray_run['peak_one_mib']:.2f}x, wall "
              f"{naive['wall_s'] / ray_run['wall_s']:.2f}x, CPU {naive['cpu_s'] / ray_run['cpu_s']:.2f}x")
    print("\n" + json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
