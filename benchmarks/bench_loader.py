"""Loader throughput (samples/s, CPU-s per sample) for 32 frames at 192×320: our shard
loader (`lfvila_model.data`, one in-memory 3 fps / 240 px sample video per sample)
against, in the same run and on the same samples, the reference way (LF-VILA's original
loader, XPretrain `pretrain_dataset._read_videos`: one VideoReader per clip file, four
per sample, 8 frames each, then the same crop/resize/normalise and tokenizer).

The reference reads the *same rendition* as ours: one clip file per clip, cut from the
source with our own `cut_sample` and `CutConfig()` (3 fps, 240 px, x264 as CutConfig sets it),
so the ratio measures the loader (one file per clip against one in-memory sample video),
not the input. A second, separate row reads stream-copied clip files at the source
resolution and frame rate (what HD-VILA distributed): that ratio is loader and input.
Target: ours >= 3x the reference.

    python benchmarks/bench_loader.py [--size 1280x720 --src-fps 30 --videos 3 --clips 64]
    python benchmarks/bench_loader.py --quick      # < 60 s smoke run

The corpus (demo videos at --size, built and sharded by our own pipeline, plus the
per-clip files) is cached in --workdir. The loaders run in this process, single-threaded
(decord and torch), interleaved --repeat times; medians are reported, so CPU-s per
sample is the cost one DataLoader worker pays.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from lfvila_data.demo import COLOURS, TEMPLATES, make_video
from lfvila_model.data import (
    DataConfig,
    choose_window,
    crop_resize_normalize,
    frame_times,
    make_loader,
    random_resized_crop_box,
)

# ---------------------------------------------------------------- corpus

def make_sources(www: Path, videos: int, clips: int, size: str, fps: int, seed: int = 0) -> None:
    """The demo videos at `size` and `fps`, with the colours make_corpus would draw for
    them (it replays the same rng) and the stamp it checks, so make_corpus keeps them (it
    would regenerate them at its own frame rate) and writes matching text."""
    rng = random.Random(seed)
    jobs = []
    for v in range(videos):
        colours = [rng.choice(list(COLOURS)) for _ in range(clips)]
        for _ in range(clips):
            rng.choice(TEMPLATES)
        path = www / f"demo{v:02d}.mp4"
        stamp = path.with_suffix(".colours")
        want = json.dumps([colours, size])
        if not path.exists() or not stamp.exists() or stamp.read_text() != want:
            jobs.append((path, colours, stamp, want))
    www.mkdir(parents=True, exist_ok=True)

    def make(job: tuple) -> None:
        path, colours, stamp, want = job
        make_video(path, colours, size=size, fps=fps)
        stamp.write_text(want)

    with ThreadPoolExecutor(2) as pool:  # each job is one ffmpeg process
        list(pool.map(make, jobs))


def build_shards(root: Path, videos: int, clips: int, max_clips: int, size: str) -> Path:
    """Our pipeline end to end: demo corpus -> build (fetch + cut to 3 fps / 240 px) -> shard."""
    import ray

    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.demo import make_corpus
    from lfvila_data.localserver import MediaServer
    from lfvila_data.media.fetch import FetchConfig
    from lfvila_data.media.task import TaskContext
    from lfvila_data.plan.join import PlanConfig
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.shards.write import ShardConfig, run_shard

    out = root / "shards"
    if (out / "shard.json").exists():
        return out
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024)
    try:
        with MediaServer(root / "www") as srv:
            meta, text = make_corpus(root, srv.url("").rstrip("/"), videos=videos, clips=clips,
                                     size=size)
            build = root / "build"
            run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(build),
                                  plan=PlanConfig(max_clips=max_clips),
                                  task=TaskContext(output=str(build), fetch=FetchConfig(retries=0, allow_private_addresses=True))))
        run_shard([str(build)], str(out), ShardConfig(val_fraction=0.0), write=RayTasks())
    finally:
        ray.shutdown()
    return out


def _clip_spans(root: Path):
    """(source video, clip id, start, end) of every clip of the corpus metadata."""
    for line in (root / "hdvila_part0.jsonl").read_text().splitlines():
        video = json.loads(line)
        for clip in video["clip"]:
            yield root / "www" / f"{video['video_id']}.mp4", clip["clip_id"], *clip["span"]


def cut_clip_files(root: Path) -> Path:
    """One file per clip from the sources, by ffmpeg stream copy (as HD-VILA distributed
    clips): source resolution and frame rate, starting at the keyframe before the span."""
    clips_dir = root / "clips"
    clips_dir.mkdir(exist_ok=True)
    jobs = [["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", a, "-to", b, "-i", str(src),
             "-c", "copy", "-avoid_negative_ts", "make_zero", str(clips_dir / clip_id)]
            for src, clip_id, a, b in _clip_spans(root) if not (clips_dir / clip_id).exists()]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda cmd: subprocess.run(cmd, check=True), jobs))
    return clips_dir


def cut_clip_renditions(root: Path) -> Path:
    """One file per clip in our sample rendition: `cut_sample` with `CutConfig()` (3 fps,
    240 px, x264 as CutConfig sets it) over each clip's span, so the reference reads what ours
    reads, only split into one file per clip."""
    from lfvila_data.media.cut import CutConfig, cut_sample, probe
    from lfvila_data.sources.hdvila import parse_span

    clips_dir = root / "clips240"
    clips_dir.mkdir(exist_ok=True)
    todo = [c for c in _clip_spans(root) if not (clips_dir / c[1]).exists()]
    probes = {src: probe(src) for src in {c[0] for c in todo}}
    with ThreadPoolExecutor(2) as pool:  # each job is one ffmpeg process
        list(pool.map(lambda c: cut_sample(c[0], clips_dir / c[1], parse_span(c[2]), parse_span(c[3]),
                                           CutConfig(), probes[c[0]]), todo))
    return clips_dir


def read_metas(shard_dir: Path) -> list[dict]:
    metas = []
    for url in sorted(shard_dir.glob("train-*.tar")):
        with tarfile.open(url) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers()
                      if m.name.endswith(".json")]
    return metas


def tiny_tokenizer(root: Path):
    """A small WordPiece vocabulary for the demo sentences (no downloads)."""
    from lfvila_model.data import load_tokenizer

    d = root / "tokenizer"
    d.mkdir(exist_ok=True)
    words = sorted({w.strip(".").lower() for t in TEMPLATES for w in t.split() if "{" not in w}
                   | set(COLOURS))
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    return load_tokenizer(str(d))


# ---------------------------------------------------------------- the two loaders

def run_ours(shard_dir: Path, cfg: DataConfig, tokenizer, n: int) -> int:
    """Samples through make_loader (train mode), cycling over the shards until n."""
    urls = [str(p) for p in sorted(shard_dir.glob("train-*.tar"))]
    done = 0
    while done < n:
        for batch in make_loader(urls, cfg, train=True, tokenizer=tokenizer):
            assert batch["video"].shape[1:] == (32, 3, *cfg.size)
            done += len(batch["key"])
            if done >= n:
                break
    return done


def reference_sample(meta: dict, clips_dir: Path, cfg: DataConfig, tokenizer,
                     rng: random.Random) -> dict:
    """HD-VILA-style: a VideoReader per clip file at source resolution, 8 frames evenly
    spaced over each file, then the same augmentation and tokenizer as ours."""
    import decord

    k = cfg.sample_clips
    start = choose_window(meta["n_clips"], k, rng, train=True)
    parts = []
    for clip in meta["clips"][start:start + k]:
        vr = decord.VideoReader(str(clips_dir / clip["clip_id"]), ctx=decord.cpu(0),
                                num_threads=cfg.decode_threads)
        n = len(vr)
        idx = [min(int(t), n - 1) for t in frame_times(0.0, float(n), cfg.frames_per_clip)]
        parts.append(torch.from_numpy(vr.get_batch(idx).asnumpy()))
    frames = torch.cat(parts)
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], cfg.scale, cfg.crop_ratio, rng)
    video = crop_resize_normalize(frames, box, cfg.size, cfg.flip and rng.random() < 0.5)
    tok = tokenizer([c["text"] for c in meta["clips"][start:start + k]], padding="max_length",
                    truncation=True, max_length=cfg.max_tokens, return_tensors="pt")
    return {"video": video, "input_ids": tok["input_ids"]}


def run_reference(metas: list[dict], clips_dir: Path, cfg: DataConfig, tokenizer, n: int) -> int:
    rng = random.Random(cfg.seed)
    for i in range(n):
        out = reference_sample(metas[i % len(metas)], clips_dir, cfg, tokenizer, rng)
        assert out["video"].shape == (32, 3, *cfg.size)
    return n


def measure(fn, *args) -> tuple[int, float, float]:
    """(samples, wall s, CPU s of this process, all threads)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    n = fn(*args)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return n, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1280x720", help="source video size (reference reads this)")
    ap.add_argument("--src-fps", type=int, default=30)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--clips", type=int, default=64, help="clips per source video")
    ap.add_argument("--max-clips", type=int, default=8, help="clips per sample")
    ap.add_argument("--samples", type=int, default=48, help="samples timed per loader")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny corpus, few samples (< 60 s)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.src_fps, args.videos, args.clips = "640x360", 15, 1, 16
        args.samples, args.repeat = 6, 1
    root = args.workdir or Path(f"/tmp/lfvila-bench-loader-{args.size}-{args.src_fps}-"
                                f"{args.videos}x{args.clips}-{args.max_clips}")
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    make_sources(root / "www", args.videos, args.clips, args.size, args.src_fps)
    shard_dir = build_shards(root, args.videos, args.clips, args.max_clips, args.size)
    clips_dir = cut_clip_files(root)
    clips240_dir = cut_clip_renditions(root)
    metas = read_metas(shard_dir)
    tokenizer = tiny_tokenizer(root)
    print(f"corpus ready in {time.perf_counter() - t0:.1f} s: {len(metas)} samples, "
          f"{sum(m['n_clips'] for m in metas)} clips, sources {args.size}@{args.src_fps} fps, "
          f"shard {sum(p.stat().st_size for p in shard_dir.glob('*.tar')) / 1e6:.1f} MB "
          f"({metas[0]['width']}x{metas[0]['height']}@{metas[0]['fps']:g} fps), clip files "
          f"{sum(p.stat().st_size for p in clips_dir.iterdir()) / 1e6:.1f} MB at source size, "
          f"{sum(p.stat().st_size for p in clips240_dir.iterdir()) / 1e6:.1f} MB at 240p 3 fps")

    cfg = DataConfig(batch_size=4, num_workers=0, shuffle_buffer=8, decode_threads=1)
    refs = {"reference, 240p 3 fps clip files (same input)": clips240_dir,
            f"reference, {args.size} {args.src_fps} fps clip files": clips_dir}
    run_ours(shard_dir, cfg, tokenizer, 2)                        # warm up every path
    for d in refs.values():
        run_reference(metas, d, cfg, tokenizer, 1)
    runs: dict[str, list[tuple[int, float, float]]] = {"ours (shards)": [], **{k: [] for k in refs}}
    for _ in range(args.repeat):  # interleaved: the machine's load hits every loader alike
        runs["ours (shards)"].append(measure(run_ours, shard_dir, cfg, tokenizer, args.samples))
        for name, d in refs.items():
            runs[name].append(measure(run_reference, metas, d, cfg, tokenizer, args.samples))
    print(f"\n{'loader':<48}{'samples':>8}{'samples/s':>11}{'CPU-s/sample':>14}   runs (samples/s)")
    med = {}
    for name, rs in runs.items():
        sps = statistics.median(n / wall for n, wall, _ in rs)
        cps = statistics.median(cpu / n for n, _, cpu in rs)
        med[name] = (sps, cps)
        print(f"{name:<48}{rs[0][0]:>8}{sps:>11.2f}{cps:>14.3f}   "
              + ", ".join(f"{n / wall:.2f}" for n, wall, _ in rs))
    ours_sps, ours_cpu = med["ours (shards)"]
    print(f"\nmedians of {args.repeat} interleaved runs")
    for name in refs:
        ref_sps, ref_cpu = med[name]
        print(f"ours / {name}: {ours_sps / ref_sps:.2f}x samples/s, "
              f"{ref_cpu / ours_cpu:.2f}x less CPU per sample (target >= 3x)")

if __name__ == "__main__":
    main()
