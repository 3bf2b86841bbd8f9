"""One benchmark build (`--source activitynet|didemo|queryd|condensed-movies`) from
hand-written annotation files and generated videos in `--video-dir`, as the CLI wires it."""
from __future__ import annotations

from pathlib import Path

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.media import make_timecoded_video


def benchmark_build(root: Path, source: str, annotations: dict[str, bytes | str], videos: dict[str, float], *,
                    split_files: dict[str, str] | None = None,
                    video_base_url: str | None = None) -> tuple[Path, BuildConfig]:
    """Write the annotation files and split files under `root`, make `videos` (file name ->
    seconds, 160x120) in `root/videos`, build into `root/out`; returns (out, config)."""
    vdir = root / "videos"
    vdir.mkdir()
    for name, seconds in videos.items():
        make_timecoded_video(vdir / name, seconds, width=160, height=120,
                             codec="vp9" if name.endswith(".webm") else "h264")
    for name, body in {**annotations, **(split_files or {})}.items():
        (root / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    out = root / "out"
    cfg = BuildConfig(metadata=(), text=(), output=str(out), source=source,
                      annotations=tuple(str(root / n) for n in annotations), video_dir=str(vdir),
                      split_files=tuple(str(root / n) for n in split_files or {}), video_base_url=video_base_url,
                      plan=PlanConfig(allow_local_files=True),
                      task=TaskContext(output=str(out), source=source, fetch=FetchConfig(allow_local_files=True)))
    run_build(cfg)
    return out, cfg
