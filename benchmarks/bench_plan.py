"""Benchmark of the planning shuffle: wall time, CPU and peak memory of build_plan on a
local Ray in up to three variants in one run, with the plan files of each compared byte
for byte to the first: `per-line` (lines parsed in Python, videos planned by `group_runs`
on Python objects: the path before issue 11 C), `arrow-objects` (Arrow-block parsing,
per-object reduce) and `columnar` (Arrow-block parsing and the columnar reduce: the
default); the map phase alone (CPU per clip, one process); and a naive one-process pandas
join. All on generated HD-VILA-format metadata.

    python benchmarks/bench_plan.py --clips 1000000 --skip-baseline
    python benchmarks/bench_plan.py --clips 10000000 --variants columnar --skip-map --skip-baseline

Memory is sampled every 0.5 s over the driver and every process it started (gcs, raylet,
workers): summed RSS (counts shared object-store pages once per process that maps them),
summed PSS (shares them out, so it adds up to real use) and the largest single RSS. CPU is
the user+system time of that process tree (each process's last sample: Ray's workers are
not waited-for children, so rusage would miss them), from after Ray started to the end."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
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
        self.peak_rss = self.peak_pss = self.peak_one = 0
        self.peak_one_name = ""
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
            if r > self.peak_one:
                self.peak_one = r
                try:
                    self.peak_one_name = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

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
            "peak_one_mib": mem.peak_one / 1024, "peak_one_name": mem.peak_one_name}


def map_phase_cpu(meta: list[str], text: list[str], chunk_mib: int, per_line: bool) -> dict:
    """CPU seconds of every map task of build_plan run in this process (11 buckets)."""
    from lfvila_data.inputs import iter_line_ranges
    from lfvila_data.plan.join import map_metadata_range, map_text_range

    t0, lines = time.process_time(), 0
    for kind, paths in (("metadata", meta), ("text", text)):
        for i, p in enumerate(paths):
            for _, start, end in iter_line_ranges(p, chunk_mib * 1024 * 1024):
                if kind == "metadata":
                    _, stats = map_metadata_range(i, p, start, end, 11, False, 0, per_line)
                else:
                    _, stats = map_text_range(i, p, start, end, 11, 0, per_line)
                lines += stats["lines"]
    return {"cpu_s": time.process_time() - t0, "lines": lines}


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
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    with MemorySampler(proc.pid) as mem:
        out, _ = proc.communicate()
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {"wall_s": time.monotonic() - t0, "peak_rss_sum_mib": mem.peak_rss / 1024,
            "peak_pss_sum_mib": mem.peak_pss / 1024, "peak_one_mib": mem.peak_one / 1024, **result}


# ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10_000_000)
    ap.add_argument("--baseline-clips", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/lfvila-bench-plan")
    ap.add_argument("--num-buckets", type=int, default=None)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--max-in-flight", type=int, default=None)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-map", action="store_true", help="skip the in-process map-phase CPU measurement")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"build_plan variants to run, in order, each compared to the first ({', '.join(VARIANTS)})")
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
    if not args.skip_map:
        for per_line in (True, False):
            r = map_phase_cpu(meta, text, args.chunk_mib, per_line)
            print(f"map phase, {'per line' if per_line else 'arrow'}: {r['cpu_s']:.1f} CPU s, "
                  f"{r['cpu_s'] / info['clips'] * 1e6:.2f} µs per clip", flush=True)
            results[f"map_cpu_{'per_line' if per_line else 'arrow'}"] = r
        ratio = results["map_cpu_per_line"]["cpu_s"] / results["map_cpu_arrow"]["cpu_s"]
        print(f"map phase: arrow is {ratio:.1f}x faster (CPU)", flush=True)
    runs = {}
    variants = args.variants.split(",")
    for variant in variants:
        per_line, per_object = VARIANTS[variant]
        name = f"ray build_plan, {variant}, {info['clips']:,} clips"
        runs[name] = (info["clips"], run_ray(
            meta, text, str(work / f"out-{args.clips}-{variant}"), args.num_buckets,
            args.chunk_mib, args.max_in_flight, per_line, per_object))
        print(f"{name}: {runs[name][1]['wall_s']:.1f} s wall, {runs[name][1]['cpu_s']:.1f} CPU s", flush=True)
    first = runs[next(iter(runs))][1]
    for variant, name in zip(variants[1:], list(runs)[1:]):
        r = runs[name][1]
        identical = same_files(str(work / f"out-{args.clips}-{variants[0]}"), str(work / f"out-{args.clips}-{variant}"))
        print(f"build_plan {variant} vs {variants[0]}: {first['wall_s'] / r['wall_s']:.2f}x faster (wall), "
              f"{first['cpu_s'] / r['cpu_s']:.2f}x less CPU; plan files byte-identical: {identical}", flush=True)
        results[f"identical_{variant}"] = identical
    if not args.skip_baseline:
        small_meta, small_text = generate(work / f"data-{args.baseline_clips}", args.baseline_clips, 1, seed=1)
        small = json.loads((work / f"data-{args.baseline_clips}" / "generated.json").read_text())["clips"]
        runs[f"ray build_plan, {small:,} clips"] = (small, run_ray(
            small_meta, small_text, str(work / f"out-{args.baseline_clips}"), args.num_buckets,
            args.chunk_mib, args.max_in_flight))
        runs[f"naive pandas, {small:,} clips"] = (small, run_baseline(small_meta, small_text))
    results.update({n: r for n, (_, r) in runs.items()})

    print(f"\n{'run':48} {'wall s':>8} {'CPU s':>8} {'RSS sum MiB':>12} {'PSS sum MiB':>12} {'max 1 proc MiB':>15} "
          f"{'PSS KiB/clip':>13}")
    for name, (clips, r) in runs.items():
        print(f"{name:48} {r['wall_s']:8.1f} {r.get('cpu_s', float('nan')):8.1f} {r['peak_rss_sum_mib']:12.0f} {r['peak_pss_sum_mib']:12.0f} "
              f"{r['peak_one_mib']:15.0f} {r['peak_pss_sum_mib'] * 1024 / clips:13.3f}")
    names = list(runs)
    if not args.skip_baseline:
        per = {n: runs[n][1]["peak_pss_sum_mib"] / runs[n][0] for n in names}
        print(f"\nnaive pandas / ray peak memory per clip: {per[names[-1]] / per[names[0]]:.1f}x "
              f"(vs ray at --clips), {per[names[-1]] / per[names[-2]]:.1f}x (vs ray at --baseline-clips)")
    print("\n" + json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
