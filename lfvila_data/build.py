"""`lfvila-data build --source hdvila`: plan, then fetch and cut every planned sample,
then write the manifest, the failure ledger and build.json.

Rerunning the same command resumes: the plan is reused when inputs and settings are
unchanged, videos the journal records as finished are skipped, and sample files already
on disk are reused instead of being downloaded and cut again."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterator

from lfvila_data import __version__
from lfvila_data.executor.asr import transcribe_on_ray
from lfvila_data.executor.cluster import init_ray
from lfvila_data.executor.pool import RayShuffle, RayTasks
from lfvila_data.executor.runner import RunConfig, run_videos
from lfvila_data.inputs import InputError, expand_paths
from lfvila_data.media.task import TaskContext, VideoJob
from lfvila_data.output.fingerprint import content, fingerprint, remove_dir, reuse_or_clear
from lfvila_data.output.write import DONE, FAILED, Journal, OutputDir, VideoResult, finalize, read_journal
from lfvila_data.plan.join import (
    PlanConfig,
    PlanSummary,
    _read_success,
    build_plan,
    iter_plan_parts,
    load_plan_summary,
    read_plan_failures,
    word_account_rows,
)
from lfvila_data.progress import BuildProgress, human_bytes, human_time, print_summary
from lfvila_data.records import PlannedSample
from lfvila_data.schemas import plan_row_to_sample
from lfvila_data.sources.activitynet import index_video_dir, plan_activitynet
from lfvila_data.sources.local import find_videos
from lfvila_data.text.stage import (
    TextOptions,
    _asr_marker,
    plan_local_text,
    plan_youtube,
    retext_plan_with_asr,
)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `build` needs; the CLI makes one from flags."""

    metadata: tuple[str, ...]
    text: tuple[str, ...]
    output: str
    source: str = "hdvila"
    inputs: tuple[str, ...] = ()      # --source local: videos/globs/dirs; youtube: list files
    text_opts: TextOptions = TextOptions()  # subtitle languages, speech recognition
    plan: PlanConfig = PlanConfig()
    task: TaskContext | None = None
    run: RunConfig = RunConfig()
    plan_only: bool = False
    retry_failed: bool = False
    ray_address: str | None = None
    groups: tuple[str, ...] = ()      # --source hdvila: clip-id group files; the plan is exactly those
    annotations: tuple[str, ...] = ()  # benchmark sources: annotation files
    video_dir: str | None = None       # benchmark sources: local videos named by id (else fetched)
    split_files: tuple[str, ...] = ()  # benchmark sources: [NAME=]FILE lists of the videos to build

    def task_context(self) -> TaskContext:
        """What every fetch and cut task gets (defaults unless `task` is given)."""
        return self.task or TaskContext(output=self.output)


def check_output(out: OutputDir) -> None:
    """Fail early, in one line, when the output cannot be written."""
    try:
        out.write_bytes("_write_check", b"ok")
        out.fs.rm(out.path("_write_check"))
    except (OSError, PermissionError) as e:
        raise InputError(f"output {out.url!r} is not writable: {e}") from e


def iter_jobs(output: str, skip: set[str], min_clips: int, retry_failed: bool = False) -> Iterator[VideoJob]:
    """Stream the plan, one job per video, part by part (never the whole plan at once)."""
    for table in iter_plan_parts(output):
        by_video: dict[str, list[PlannedSample]] = defaultdict(list)
        for row in table.to_pylist():
            if row["video_id"] not in skip:
                by_video[row["video_id"]].append(plan_row_to_sample(row))
        for vid in sorted(by_video):
            samples = sorted(by_video[vid], key=lambda s: s.start)
            yield VideoJob(vid, samples[0].url, tuple(samples), min_clips, retry_failed)


def _plan(cfg: BuildConfig) -> PlanSummary:
    fetch = cfg.task_context().fetch
    if cfg.source == "activitynet":  # annotations are small: re-planned on every run, in one process
        return plan_activitynet(list(cfg.annotations), cfg.output, cfg.plan, video_dir=cfg.video_dir,
                                split_files=list(cfg.split_files))
    # text-first sources journal each video's text, so re-planning redoes only what is missing
    if cfg.source == "local":
        return plan_local_text(list(cfg.inputs), cfg.output, cfg.plan, cfg.text_opts, fetch,
                               transcriber=transcribe_on_ray)
    if cfg.source == "youtube":
        look_ups = RayTasks(max_in_flight=cfg.text_opts.concurrency, num_cpus=0, max_retries=1)
        return plan_youtube(list(cfg.inputs), cfg.output, cfg.plan, cfg.text_opts, fetch,
                            look_ups=look_ups, transcriber=transcribe_on_ray)
    # hdvila: metadata has text; only "--asr always" re-transcribes the planned spans
    asr = cfg.text_opts.asr == "always"
    want = _asr_marker(cfg.text_opts) if asr else None
    summary = load_plan_summary(cfg.output, metadata=list(cfg.metadata), text=list(cfg.text),
                                cfg=cfg.plan, groups=list(cfg.groups))
    made_with = (_read_success(cfg.output) or {}).get("inputs", {}).get("asr")
    if summary is not None and made_with == want:
        print("plan: reusing the finished plan (same inputs and settings)", file=sys.stderr)
        return summary
    if summary is None or made_with is not None:
        summary = build_plan(list(cfg.metadata), list(cfg.text), cfg.output, cfg.plan, shuffle=RayShuffle(),
                             groups=list(cfg.groups))
    return (retext_plan_with_asr(cfg.output, cfg.plan, cfg.text_opts, fetch, transcriber=transcribe_on_ray)
            if asr else summary)


def _plan_rows(s: PlanSummary) -> list[tuple[str, object]]:
    groups = [("groups read", f"{s.groups_read:,}"), ("groups planned", f"{s.groups_planned:,}"),
              ("groups rejected", ", ".join(f"{k}: {v:,}" for k, v in s.groups_rejected.items()) or "none")]
    return [*(groups if s.groups_read else []),
            ("videos in metadata", f"{s.videos:,}"),
            ("videos with samples", f"{s.videos_with_samples:,}"),
            ("clips in metadata", f"{s.clips_total:,}"),
            ("clips in samples", f"{s.clips_in_samples:,}"),
            ("samples planned", f"{s.samples:,}"),
            ("hours planned", f"{s.hours:,.2f}"),
            ("short runs dropped", f"{s.dropped_short_runs:,}"),
            *word_account_rows(asdict(s)),
            ("planning failures", ", ".join(f"{k}: {v}" for k, v in s.failures_by_stage.items()) or "none")]


def _versions() -> dict:
    import yt_dlp

    ff = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"lfvila": __version__, "yt_dlp": yt_dlp.version.__version__, "ffmpeg": ff}


def preflight(cfg: BuildConfig) -> OutputDir:
    """Fail in one line, before Ray starts, on what would stop the build later: missing
    ffmpeg, unreadable inputs, a wrong ASR model path, an output that cannot be written."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise InputError("ffmpeg and ffprobe must be on PATH (e.g. apt-get install ffmpeg)")
    if cfg.source == "hdvila":
        expand_paths(list(cfg.metadata))
        expand_paths(list(cfg.text))
        if cfg.groups:
            expand_paths(list(cfg.groups))
    elif cfg.source == "youtube":
        expand_paths(list(cfg.inputs))
    elif cfg.source == "activitynet":
        expand_paths(list(cfg.annotations))
        expand_paths([spec.rpartition("=")[2] for spec in cfg.split_files])
        if cfg.video_dir is not None:
            index_video_dir(cfg.video_dir)
    else:
        find_videos(list(cfg.inputs))
    if cfg.text_opts.asr != "off":
        from lfvila_data.text.asr import AsrModelError, check_model

        try:
            check_model(cfg.text_opts.asr_config)
        except AsrModelError as e:
            raise InputError(str(e)) from None
    out = OutputDir(cfg.output)
    check_output(out)
    return out


def reset_stale_journal(out: OutputDir, plan: PlanSummary, cfg: PlanConfig) -> dict[str, tuple[str, dict]]:
    """The journal of earlier runs of this plan. A new plan means journaled results may
    name samples that no longer exist: start a new journal; files of unchanged samples are
    still found on disk and reused."""
    reuse_or_clear(out, f"{Journal.DIR}/PLAN", fingerprint(asdict(plan) | {"plan": content(cfg)}),
                   remove_dir(out, Journal.DIR))
    return read_journal(out)


def finished_videos(previous: dict[str, tuple[str, dict]], retry_failed: bool) -> set[str]:
    """Videos a rerun skips: done ones, and failed ones unless --retry-failed (which also
    retries done videos that lost samples or clips)."""
    return {vid for vid, (status, payload) in previous.items()
            if status == DONE and not (retry_failed and payload["failures"])
            or status == FAILED and not retry_failed}


def run_journaled(cfg: BuildConfig, out: OutputDir, plan: PlanSummary,
                  previous: dict[str, tuple[str, dict]]) -> BuildProgress:
    """Fetch and cut every unfinished video, journaling each result as it arrives."""
    skip = finished_videos(previous, cfg.retry_failed)
    progress = BuildProgress(videos_total=max(plan.videos_with_samples - len(skip & set(previous)), 0))
    journal = Journal(out)

    def on_result(r: VideoResult) -> None:
        journal.add(r)
        if r.status == DONE:
            progress.videos_done += 1
        else:
            progress.videos_failed += 1
        progress.samples_written += len(r.rows)
        progress.samples_failed += len({f.get("key") or f.get("clip_id") for f in r.failures})
        progress.bytes_downloaded += sum(r.downloads.values())

    if previous:
        print(f"build: resuming, {len(skip)} videos already finished", file=sys.stderr)
    # a benchmark sample is the whole video: trimmed to a short file, it keeps any clip left
    min_clips = 1 if cfg.source == "activitynet" else cfg.plan.min_clips
    jobs = iter_jobs(cfg.output, skip, min_clips, cfg.retry_failed)
    try:
        run_videos(jobs, cfg.task_context(), cfg.run, on_result, progress.tick)
    finally:
        journal.flush()
    progress.tick(force=True)
    return progress


def build_record(cfg: BuildConfig, plan: PlanSummary, counts: dict, progress: BuildProgress,
                 elapsed: float) -> dict:
    """build.json: the settings, the plan and the counts, so a build explains itself."""
    task = cfg.task_context()
    return {
        "source": task.source, "metadata": list(cfg.metadata), "text": list(cfg.text),
        "groups": list(cfg.groups), "annotations": list(cfg.annotations), "video_dir": cfg.video_dir,
        "split_files": list(cfg.split_files),
        "inputs": list(cfg.inputs), "text_options": asdict(cfg.text_opts),
        "output": cfg.output, "plan_config": asdict(cfg.plan), "fetch": asdict(task.fetch),
        "cut": asdict(task.cut), "run": asdict(cfg.run), "plan": asdict(plan),
        "counts": counts, "versions": _versions(),
        "last_run": {"seconds": round(elapsed, 2), "videos_processed": progress.videos_done
                     + progress.videos_failed, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                           time.gmtime())},
    }


def print_build_summary(cfg: BuildConfig, plan: PlanSummary, counts: dict, progress: BuildProgress,
                        elapsed: float) -> None:
    print_summary(f"build of {cfg.output}", [
        ("samples planned", f"{plan.samples:,}"),
        ("samples written", f"{counts['samples_written']:,}"),
        ("hours written", f"{counts['hours_written']:,.3f}"),
        ("videos processed this run", f"{progress.videos_done + progress.videos_failed:,}"),
        ("videos failed this run", f"{progress.videos_failed:,}"),
        ("downloaded (all runs)", human_bytes(counts["download_bytes"])),
        ("sample video bytes", human_bytes(counts["video_bytes"])),
        ("ledger rows", ", ".join(f"{k}: {v}" for k, v in counts["failures_by_stage"].items()) or "none"),
        ("time", human_time(elapsed)),
    ])


def run_build(cfg: BuildConfig) -> dict:
    """The whole build; returns the counts written to build.json."""
    started = time.time()
    out = preflight(cfg)
    init_ray(cfg.ray_address)
    plan = _plan(cfg)
    if cfg.plan_only:
        print_summary(f"plan of {cfg.output}", _plan_rows(plan))
        return asdict(plan)
    previous = reset_stale_journal(out, plan, cfg.plan)
    progress = run_journaled(cfg, out, plan, previous)
    counts = finalize(out, read_journal(out), read_plan_failures(cfg.output))
    elapsed = time.time() - started
    record = build_record(cfg, plan, counts, progress, elapsed)
    out.write_json("build.json", record)
    print_build_summary(cfg, plan, counts, progress, elapsed)
    return record
