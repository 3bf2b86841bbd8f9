"""`lfvila-data build --source hdvila`: plan, then fetch and cut every planned sample,
then write the manifest, the failure ledger and build.json.

Rerunning the same command resumes: the plan is reused when inputs and settings are
unchanged, videos the journal records as finished are skipped, and sample files already
on disk are reused instead of being downloaded and cut again."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lfvila_data import __version__
from lfvila_data.executor.base import RunConfig, Shuffle, TaskMap, local_shuffle, raise_if_signalled, stop_on_signals
from lfvila_data.executor.threads import ThreadTasks, run_videos_local
from lfvila_data.inputs import InputError, expand_paths
from lfvila_data.media.task import TaskContext, VideoJob
from lfvila_data.output.fingerprint import content, fingerprint, remove_dir, reuse_or_clear
from lfvila_data.output.lease import OutputLease
from lfvila_data.output.resume import Resume, read_resume
from lfvila_data.output.write import (
    DONE,
    Journal,
    OutputDir,
    OutputStopped,
    VideoResult,
    finalize,
    is_output_error,
    iter_journal,
    journal_fetched_bytes,
)
from lfvila_data.plan.join import (
    PlanConfig,
    PlanSummary,
    _input_listing,
    _read_success,
    build_plan,
    iter_plan_parts,
    load_plan_summary,
    read_plan_failures,
    word_account_rows,
)
from lfvila_data.progress import (
    BuildProgress,
    CutProgress,
    fetched_split,
    human_bytes,
    human_time,
    print_summary,
)
from lfvila_data.records import FailureCode, PlannedSample
from lfvila_data.schemas import plan_row_to_sample
from lfvila_data.sources.activitynet import ACTIVITYNET
from lfvila_data.sources.activitynet_qa import ACTIVITYNET_QA
from lfvila_data.sources.benchmark import index_video_dir, plan_benchmark
from lfvila_data.sources.condensed_movies import CONDENSED_MOVIES
from lfvila_data.sources.didemo import DIDEMO
from lfvila_data.sources.how2qa import HOW2QA
from lfvila_data.sources.local import find_videos
from lfvila_data.sources.queryd import QUERYD
from lfvila_data.sources.violin import VIOLIN
from lfvila_data.text.stage import (
    TEXT_DIR,
    TextOptions,
    _asr_marker,
    plan_local_text,
    plan_youtube,
    retext_plan_with_asr,
)

if TYPE_CHECKING:  # Ray is imported only by builds that run on it
    from lfvila_data.executor.cluster import RayStart

# the benchmark sources by --source name: their parsers; everything after parsing is shared
BENCHMARKS = {f.name: f for f in (ACTIVITYNET, DIDEMO, QUERYD, CONDENSED_MOVIES, HOW2QA, VIOLIN, ACTIVITYNET_QA)}


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
    rebuild: bool = False  # redo the samples when their settings changed (else refused)
    annotations: tuple[str, ...] = ()  # benchmark sources: annotation files
    video_dir: str | None = None       # benchmark sources: local videos named by id (else fetched)
    split_files: tuple[str, ...] = ()  # benchmark sources: [NAME=]FILE lists of the videos to build
    video_base_url: str | None = None  # benchmark sources: fetch BASE/<YouTube id>.mp4, not from YouTube

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


def iter_jobs(output: str, skip: pa.Array, min_clips: int, retry_failed: bool = False,
              stamps: dict[str, dict[str, str]] | None = None,
              on_skip: Callable[[int], None] | None = None) -> Iterator[VideoJob]:
    """Stream the plan, one job per video, part by part (never the whole plan at once);
    `skip` are the ids of videos not to run (`Resume.skip`); `stamps` are each video's
    journaled sample files, which the task trusts if unchanged; `on_skip` gets the number
    of planned samples of each part's skipped videos."""
    for table in iter_plan_parts(output):
        by_video: dict[str, list[PlannedSample]] = defaultdict(list)
        rows = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=skip))).to_pylist()
        for row in rows:
            by_video[row["video_id"]].append(plan_row_to_sample(row))
        if on_skip is not None:
            on_skip(table.num_rows - len(rows))
        for vid in sorted(by_video):
            samples = sorted(by_video[vid], key=lambda s: s.start)
            yield VideoJob(vid, samples[0].url, tuple(samples), min_clips, retry_failed,
                           tuple(sorted((stamps or {}).get(vid, {}).items())))


# hdvila inputs up to this size are planned in the driver while Ray starts: on Ray the
# map tasks would first wait for Ray and then for worker processes to import us
IN_PROCESS_PLAN_BYTES = 16 << 20


def plans_in_process(cfg: BuildConfig) -> bool:
    """Whether planning needs no Ray: annotations, or small HD-VILA inputs without ASR."""
    if cfg.source in BENCHMARKS:
        return True
    if cfg.source != "hdvila" or cfg.text_opts.asr == "always":
        return False
    paths = expand_paths(list(cfg.metadata)) + expand_paths(list(cfg.text)) + expand_paths(list(cfg.groups))
    return sum(size for _, size in _input_listing(paths)) <= IN_PROCESS_PLAN_BYTES


EXECUTORS = ("auto", "ray", "local")


def choose_executor(cfg: BuildConfig) -> str:
    """"ray" or "local" (threads in the driver, no Ray started). `auto` is local on one
    machine (no --ray-address) when the driver plans anyway: fetching and cutting are
    subprocesses, as parallel on threads as in Ray's workers, and Ray's start and stop
    would be most of a small build's time. Ray stays for speech recognition (a Whisper
    model per worker process) and for HD-VILA inputs large enough to plan on Ray."""
    choice = cfg.run.executor
    if choice not in EXECUTORS:
        raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {choice!r}")
    if cfg.ray_address:
        if choice == "local":
            raise InputError("--executor local runs without Ray; it cannot be combined with --ray-address")
        return "ray"
    if choice != "auto":
        return choice
    if cfg.text_opts.asr != "off":
        return "ray"
    return "local" if cfg.source in ("local", "youtube") or plans_in_process(cfg) else "ray"


def _plan(cfg: BuildConfig, ray: RayStart | None = None) -> PlanSummary:
    """The plan; `ray` is waited for first unless this plan needs no Ray (joining a named
    cluster is quick, and one it refuses should be the only thing said). Without `ray`
    (the local executor) everything runs in this process."""
    in_process = plans_in_process(cfg) or ray is None
    if ray is not None and (cfg.ray_address or not in_process):
        ray.wait()
    fetch = cfg.task_context().fetch
    if ray is not None:  # Ray's modules take seconds to import: only when Ray runs
        from lfvila_data.executor.asr import transcribe_on_ray as transcriber
        from lfvila_data.executor.pool import RayShuffle, RayTasks

        look_ups: TaskMap = RayTasks(max_in_flight=cfg.text_opts.concurrency, num_cpus=0, max_retries=1)
        shuffle: Shuffle = local_shuffle if in_process else RayShuffle()
    else:
        from lfvila_data.text.asr import transcribe_all as transcriber

        look_ups, shuffle = ThreadTasks(cfg.text_opts.concurrency), local_shuffle
    if cfg.source in BENCHMARKS:  # annotations are small: re-planned on every run, in one process
        return plan_benchmark(BENCHMARKS[cfg.source], list(cfg.annotations), cfg.output, cfg.plan,
                              video_dir=cfg.video_dir, split_files=list(cfg.split_files),
                              video_base_url=cfg.video_base_url)
    # text-first sources journal each video's text, so re-planning redoes only what is missing
    if cfg.source == "local":
        return plan_local_text(list(cfg.inputs), cfg.output, cfg.plan, cfg.text_opts, fetch,
                               transcriber=transcriber)
    if cfg.source == "youtube":
        return plan_youtube(list(cfg.inputs), cfg.output, cfg.plan, cfg.text_opts, fetch,
                            look_ups=look_ups, transcriber=transcriber)
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
        summary = build_plan(list(cfg.metadata), list(cfg.text), cfg.output, cfg.plan,
                             shuffle=shuffle, groups=list(cfg.groups))
    return (retext_plan_with_asr(cfg.output, cfg.plan, cfg.text_opts, fetch, transcriber=transcriber)
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
    elif cfg.source in BENCHMARKS:
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
    if not cfg.plan_only:
        check_media_settings(out, cfg)
    return out


MEDIA_SETTINGS = "_media/SETTINGS.json"
# the build option that sets each setting a sample file depends on, for the refusal
_FLAGS = {"preset": "--x264-preset"}
# settings added after builds were made, and the value those builds were made with
_UNRECORDED = {"x264_params": ""}


def media_settings(task: TaskContext) -> dict:
    """What every sample file depends on: the content fields of fetch and cut."""
    return {"cut": content(task.cut), "fetch": content(task.fetch)}


def recorded_media_settings(out: OutputDir) -> dict | None:
    """The settings the sample files on disk were made with: the marker, or build.json
    for an output made before there was one (None: no files were made yet)."""
    for rel in (MEDIA_SETTINGS, "build.json"):
        if out.exists(rel):
            record = json.loads(out.fs.cat_file(out.path(rel)))
            return {k: record.get(k) or {} for k in ("cut", "fetch")}
    return None


def _flag(name: str, value: object) -> str:
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if isinstance(value, str):
        return f"{flag} {shlex.quote(value)}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def media_setting_changes(have: dict, want: dict) -> list[tuple[str, str]]:
    """(old, new) of each setting that differs, as build options; one per option (fetch
    height and audio are set by the same flags as cut's)."""
    changes: dict[str, tuple[str, str]] = {}
    for stage in ("cut", "fetch"):
        for name, new in want[stage].items():
            # a setting older builds did not record: the value they were made with
            old = have.get(stage, {}).get(name, _UNRECORDED.get(name, new))
            if old != new and name not in changes:
                changes[name] = (_flag(name, old), _flag(name, new))
    return list(changes.values())


def check_media_settings(out: OutputDir, cfg: BuildConfig) -> list[tuple[str, str]]:
    """Refuse, before anything is touched, a rerun whose sample settings differ from those
    the files on disk were made with (unless --rebuild): it would skip them and describe
    them with values they were not made with. Returns the changes --rebuild redoes."""
    have = recorded_media_settings(out)
    changes = media_setting_changes(have, media_settings(cfg.task_context())) if have else []
    if changes and not cfg.rebuild:
        raise InputError(f"{out.url} was built with {' '.join(old for old, _ in changes)}; this run "
                         f"asks {' '.join(new for _, new in changes)}. Use a new --output, or "
                         "--rebuild to redo the affected samples")
    return changes


# what the sample settings decide: the media journal, the files and what lists them;
# the text journal and the plan do not depend on them and are kept
MEDIA_OUTPUTS = (Journal.DIR, "videos", "_fit", "manifest", "failures", "downloads",
                 "manifest.parquet", "failures.parquet", "downloads.parquet", "build.json")


def record_media_settings(out: OutputDir, cfg: BuildConfig) -> None:
    """With --rebuild and changed settings, remove what the old ones made; then record
    the settings before any sample file is made (a crash in between clears again)."""
    changes = check_media_settings(out, cfg)
    if changes:
        print(f"build: --rebuild: removing the samples made with {' '.join(o for o, _ in changes)}",
              file=sys.stderr)
        for rel in MEDIA_OUTPUTS:
            if out.exists(rel):
                out.fs.rm(out.path(rel), recursive=True)
    out.write_json(MEDIA_SETTINGS, media_settings(cfg.task_context()))


def reset_stale_journal(out: OutputDir, plan: PlanSummary, cfg: PlanConfig,
                        retry_failed: bool = False) -> Resume:
    """What earlier runs of this plan left for this one (`output/resume.py`: streamed,
    never the whole journal in memory). A new plan means journaled results may name
    samples that no longer exist: start a new journal; files of unchanged samples are
    still found on disk and reused."""
    reuse_or_clear(out, f"{Journal.DIR}/PLAN", fingerprint(asdict(plan) | {"plan": content(cfg)}),
                   remove_dir(out, Journal.DIR))
    return read_resume(out, retry_failed)


# jobs, task context, run config, on_result, tick, on_progress, seconds between a cut's reports
VideoRunner = Callable[[Iterable[VideoJob], TaskContext, RunConfig, Callable[[VideoResult], None],
                        Callable[[], None], Callable[[CutProgress], None], float], None]


def run_journaled(cfg: BuildConfig, out: OutputDir, plan: PlanSummary,
                  previous: Resume | None, lease: OutputLease | None = None,
                  runner: VideoRunner = run_videos_local, progress_every_s: float = 2.0) -> BuildProgress:
    """Fetch and cut every unfinished video, journaling each result as it arrives; stop at
    the first result that says the output itself failed (every later video would too).
    Progress lines at most every `progress_every_s`, moving while a video is cut.
    `previous` is `reset_stale_journal`'s, read with the same --retry-failed (None: a
    fresh output)."""
    previous = previous or Resume()
    skip = previous.skip
    progress = BuildProgress(videos_total=max(plan.videos_with_samples - len(skip), 0),
                             every_s=progress_every_s, samples_total=plan.samples)
    journal = Journal(out, guard=lease.check if lease else None)

    def on_skip(samples: int) -> None:
        progress.samples_total -= samples

    def started(jobs: Iterable[VideoJob]) -> Iterator[VideoJob]:
        for job in jobs:
            progress.video_started(job.video_id, len(job.samples))
            yield job

    def on_result(r: VideoResult) -> None:
        fetched_now = r.fetched_bytes
        r.fetched_bytes += previous.fetched.get(r.video_id, 0)  # all runs
        journal.add(r)
        progress.video_finished(r.video_id)
        full = next((f for f in r.failures if f["code"] == FailureCode.OUTPUT_FULL.value), None)
        if full is not None:
            raise OutputStopped(output_failed(cfg.output, full["reason"]))
        if r.status == DONE:
            progress.videos_done += 1
        else:
            progress.videos_failed += 1
        progress.samples_written += len(r.rows)
        progress.samples_failed += len({f.get("key") or f.get("clip_id") for f in r.failures})
        progress.bytes_downloaded += fetched_now

    if previous.journaled:
        print(f"build: resuming, {len(skip)} videos already finished", file=sys.stderr)
    # a benchmark sample is the whole video: trimmed to a short file, it keeps any clip left
    min_clips = 1 if cfg.source in BENCHMARKS else cfg.plan.min_clips
    jobs = iter_jobs(cfg.output, skip, min_clips, cfg.retry_failed, previous.stamps, on_skip)
    try:
        runner(started(jobs), cfg.task_context(), cfg.run, on_result, progress.tick,
               progress.cut_progress, progress_every_s)
    finally:
        journal.flush()
    progress.tick(force=True)
    return progress


def with_text_bytes(counts: dict, text_bytes: int) -> dict:
    """`finalize`'s counts with the text stage's bytes (subtitle look-ups, speech
    recognition's audio): `fetched_bytes` becomes every byte fetched, `text_fetched_bytes`
    the text stage's part."""
    return counts | {"fetched_bytes": counts["fetched_bytes"] + text_bytes, "text_fetched_bytes": text_bytes}


def text_fetched_bytes(cfg: BuildConfig, out: OutputDir) -> int:
    """What the text stage fetched for this plan (subtitle look-ups, speech recognition's
    audio), all runs (the text journal's latest entries). An HD-VILA plan made without
    speech recognition has none, whatever journal an earlier
    `--asr always` plan of the output left."""
    if cfg.source in ("local", "youtube") or (cfg.source == "hdvila" and cfg.text_opts.asr == "always"):
        return journal_fetched_bytes(out, TEXT_DIR)
    return 0


def build_record(cfg: BuildConfig, plan: PlanSummary, counts: dict, progress: BuildProgress,
                 elapsed: float) -> dict:
    """build.json: the settings, the plan and the counts, so a build explains itself."""
    task = cfg.task_context()
    return {
        "source": task.source, "metadata": list(cfg.metadata), "text": list(cfg.text),
        "groups": list(cfg.groups), "annotations": list(cfg.annotations), "video_dir": cfg.video_dir,
        "split_files": list(cfg.split_files), "video_base_url": cfg.video_base_url,
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
        ("downloaded (all runs)", (f"{human_bytes(counts['fetched_bytes'])}"
                                   f"{fetched_split(counts['fetched_bytes'], counts.get('text_fetched_bytes', 0))} "
                                   f"(written samples needed {human_bytes(counts['download_bytes'])})")),
        ("sample video bytes", human_bytes(counts["video_bytes"])),
        ("ledger rows", ", ".join(f"{k}: {v}" for k, v in counts["failures_by_stage"].items()) or "none"),
        ("time", human_time(elapsed)),
    ])


def output_failed(url: str, reason: str) -> str:
    fix = ("rerun the same command to resume once the storage answers again" if "://" in url
           else "free space (or fix the disk) and rerun the same command to resume")
    return f"the output {url} cannot be written ({reason}); the build stopped: {fix}"


def remove_junk(out: OutputDir, ctx: TaskContext) -> None:
    """What a killed job leaves (this output is leased, so no live job owns it): temporary
    files of interrupted writes in the output, and this output's scratch on this machine."""
    for rel in ("", Journal.DIR):
        for name in out.list(rel, ".tmp"):
            try:
                out.fs.rm(name)
            except FileNotFoundError:
                pass  # gone meanwhile (a write of the killed job's last worker finishing)
    shutil.rmtree(ctx.scratch(), ignore_errors=True)


def run_build(cfg: BuildConfig, progress_every_s: float = 2.0) -> dict:
    """The whole build under the output's lease; returns the counts written to build.json.
    SIGINT and SIGTERM stop Ray (or the local executor's subprocesses) and remove this
    job's scratch and lease before exiting. Progress lines go to stderr at most every
    `progress_every_s`."""
    started = time.time()
    local = choose_executor(cfg) == "local"
    out = preflight(cfg)
    with OutputLease(out, "lfvila-data build") as lease:
        remove_junk(out, cfg.task_context())
        # Ray starts while the driver plans; a plan-only run that plans here needs none,
        # unless a cluster was named (joining it is then part of what the run checks)
        local_plan_only = cfg.plan_only and not cfg.ray_address and plans_in_process(cfg)
        ray = None
        if not (local or local_plan_only):
            from lfvila_data.executor.cluster import RayStart, processes_file

            ray = RayStart(cfg.ray_address, processes=processes_file(cfg.task_context().scratch()))
        try:
            if cfg.ray_address:  # a cluster: a killed job's scratch on the workers too
                from lfvila_data.executor.cluster import remove_on_every_node

                ray.wait()
                remove_on_every_node(cfg.task_context().scratch())
            stop_on_signals()
            if not cfg.plan_only:
                record_media_settings(out, cfg)  # may remove files (--rebuild): under the lease
            return _run_leased(cfg, out, lease, started, progress_every_s, ray)
        except KeyboardInterrupt:
            if ray is not None:
                ray.stop()  # its workers must not outlive the driver, nor write to the output
            raise
        except OSError as e:
            if is_output_error(e):
                raise OutputStopped(output_failed(cfg.output, str(e))) from None
            raise
        finally:
            shutil.rmtree(cfg.task_context().scratch(), ignore_errors=True)


def _run_leased(cfg: BuildConfig, out: OutputDir, lease: OutputLease, started: float,
                progress_every_s: float, ray: RayStart | None) -> dict:
    plan = _plan(cfg, ray)
    if ray is not None:
        ray.wait()  # a plan-only run with --ray-address reports a cluster it cannot join
    if cfg.plan_only:
        print_summary(f"plan of {cfg.output}", _plan_rows(plan))
        return asdict(plan)
    previous = reset_stale_journal(out, plan, cfg.plan, cfg.retry_failed)
    runner = run_videos_local
    if ray is not None:
        from lfvila_data.executor.runner import run_videos as runner
    progress = run_journaled(cfg, out, plan, previous, lease, runner, progress_every_s)
    raise_if_signalled()  # not finalized: the rerun the signal's message asks for does it
    lease.check()
    counts = with_text_bytes(finalize(out, iter_journal(out), read_plan_failures(cfg.output)),
                            text_fetched_bytes(cfg, out))
    elapsed = time.time() - started
    record = build_record(cfg, plan, counts, progress, elapsed)
    out.write_json("build.json", record)
    print_build_summary(cfg, plan, counts, progress, elapsed)
    return record
