"""`lfvila-data`: the command line. Flags become the stage config dataclasses here and
nowhere else; errors that stop a job are one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import inspect
import ipaddress
import sys
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

import typer

from lfvila_data.executor.base import RunConfig
from lfvila_data.inputs import InputError, storage_problem
from lfvila_data.media.cut import X264_PARAMS, CutConfig, x264_params_problem
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.guard import ALLOW_ENV
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from lfvila_data.text.clips import ClipConfig
from lfvila_data.text.stage import TextOptions

if TYPE_CHECKING:
    from lfvila_data.build import BuildConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build long-form video-paragraph datasets (LF-VILA) on Ray.")


class Source(str, Enum):
    hdvila = "hdvila"
    youtube = "youtube"
    local = "local"
    activitynet = "activitynet"
    didemo = "didemo"
    queryd = "queryd"
    condensed_movies = "condensed-movies"
    how2qa = "how2qa"
    violin = "violin"
    activitynet_qa = "activitynet-qa"


BENCHMARK_SOURCES = (Source.activitynet, Source.didemo, Source.queryd, Source.condensed_movies, Source.how2qa,
                     Source.violin, Source.activitynet_qa)


class Asr(str, Enum):
    off = "off"
    auto = "auto"
    always = "always"


class Executor(str, Enum):
    auto = "auto"
    ray = "ray"
    local = "local"


# `shard --executor auto` writes this many shards or fewer on threads: seconds of work,
# against 4-7 s for Ray's own start; more, and Ray's worker processes scale past one GIL
LOCAL_SHARDS = 16


@app.callback()
def _group() -> None:
    """Build long-form video-paragraph datasets (LF-VILA) on Ray."""


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"lfvila-data: error: {msg}", err=True)
    raise typer.Exit(code)


STOPPED = 3  # exit code of a job that stopped part-way (output full or failing, lease lost)


def _grouped_values(groups: tuple[Callable, ...], params: dict) -> list:
    """Each group's settings from the parsed options; a bad value is the usual one-line error."""
    try:
        return [g(**{n: params[n] for n in inspect.signature(g).parameters}) for g in groups]
    except (InputError, ValueError) as e:
        _fail(str(e))


def _option_groups(*groups: Callable) -> Callable[[Callable], Callable]:
    """Give a command the options of every group, in order, and call it with what each
    group returns: a group is a function of typer options (one help panel) that checks
    them and builds its stage's settings, so no command takes dozens of parameters."""
    params = [p.replace(annotation=eval(p.annotation, g.__globals__))  # noqa: S307 - our own annotations
              for g in groups for p in inspect.signature(g).parameters.values()]

    def wrap(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(**kwargs: object) -> None:
            command(*_grouped_values(groups, kwargs))

        run.__signature__ = inspect.Signature(params)  # what typer reads the options from
        run.__annotations__ = {p.name: p.annotation for p in params}  # not the command's own (*groups)
        return run

    return wrap


@dataclass(frozen=True)
class AsrChoice:
    """--asr and, unless it is off, the Whisper settings."""

    mode: str
    config: object | None  # lfvila_data.text.asr.AsrConfig, imported only when used


@dataclass(frozen=True)
class RunOptions:
    """How the build runs, never what it makes (cut CPUs come from --cut-threads)."""

    run: RunConfig
    ray_address: str | None
    retry_failed: bool
    workdir: str | None
    rebuild: bool = False


_INPUT, _TEXT, _ASR, _PLAN = "Input and output", "Subtitles and clips", "Speech recognition", "Planning"
_FETCH, _CUT, _RUN = "Download", "Cutting", "Running"
_BENCH = "Benchmark datasets"


def input_options(
    source: Source = typer.Option(Source.hdvila, help="Where videos and text come from.", rich_help_panel=_INPUT),
    metadata: List[str] = typer.Option([], help="HD-VILA url/span jsonl files (paths, globs, s3://); repeatable.", rich_help_panel=_INPUT),
    text: List[str] = typer.Option([], help="HD-VILA clip text jsonl files; repeatable.", rich_help_panel=_INPUT),
    groups: List[str] = typer.Option([], help="--source hdvila: clip-id group files (LF-VILA-8M's lfvila8m_clipid.jsonl: a JSON list of clip ids per line); the plan is exactly these groups, one sample each. Repeatable.", rich_help_panel=_INPUT),
    input: List[str] = typer.Option([], "--input", help="--source youtube: URL/id lists (txt, csv, jsonl, parquet); --source local: video files, globs or directories (sidecar .vtt/.srt subtitles).", rich_help_panel=_INPUT),
    output: str = typer.Option(..., help="Output directory (local path or fsspec URL).", rich_help_panel=_INPUT),
) -> BuildConfig:
    """What is read and where the build goes; the other groups fill in the stages."""
    from lfvila_data.build import BuildConfig

    if source == Source.hdvila and (not metadata or not text):
        _fail("--metadata and --text are both required for --source hdvila")
    if source in (Source.local, Source.youtube) and not input:
        _fail(f"--input is required for --source {source.value}")
    if groups and source != Source.hdvila:
        _fail("--groups needs --source hdvila (the groups name HD-VILA clip ids)")
    return BuildConfig(metadata=tuple(metadata), text=tuple(text), output=output,
                       source=source.value, inputs=tuple(input), groups=tuple(groups))


@dataclass(frozen=True)
class BenchmarkInputs:
    """--annotations, --video-dir and --split-file of the benchmark sources."""

    annotations: tuple[str, ...]
    video_dir: str | None
    split_files: tuple[str, ...]
    video_base_url: str | None = None


def benchmark_options(
    annotations: List[str] = typer.Option([], help="Benchmarks: annotation files, repeatable: activitynet: ActivityNet Captions train.json, val_1.json; didemo: train_data.json, test_data.json; queryd: raw_captions_combined_filtered-v2.pkl and times_captions_combined_filtered-v2.pkl (or .json); condensed-movies: metadata/descriptions.csv; how2qa: how2qa_train_release.jsonl, the subtitles jsonl and how2_vid_mapping.json (vid_name -> YouTube id and segment); violin: violin_annotation.json; activitynet-qa: train_q.json and train_a.json.", rich_help_panel=_BENCH),
    video_dir: Optional[Path] = typer.Option(None, help="Benchmarks: local videos named by video id (activitynet: with or without v_; queryd: with or without video-; didemo: the Flickr name; how2qa: vid_name, or the YouTube id of a mapped segment; violin: file), any common container; without it videos are fetched by YouTube id (didemo: by the annotation's dl_link).", rich_help_panel=_BENCH),
    split_file: List[str] = typer.Option([], help="Benchmarks: [NAME=]FILE listing the videos to build, one id a line (collaborative-experts splits: train_list.txt, val_1_list.txt); the split NAME (default from the file: val1) is recorded per sample. Repeatable.", rich_help_panel=_BENCH),
    video_base_url: Optional[str] = typer.Option(None, help="Benchmarks: fetch the videos that would come from YouTube from URL/<YouTube id>.mp4 instead (a mirror you host); segments (How2QA) are still cut from the whole video.", rich_help_panel=_BENCH),
) -> BenchmarkInputs:
    """The benchmark sources' inputs (checked against --source in build_config)."""
    if video_dir is not None and not video_dir.is_dir():
        _fail(f"--video-dir {str(video_dir)!r} is not a directory")
    if video_base_url is not None and not video_base_url.startswith(("http://", "https://")):
        _fail(f"--video-base-url {video_base_url!r} is not an http(s) URL")
    return BenchmarkInputs(tuple(annotations), str(video_dir) if video_dir else None, tuple(split_file),
                           video_base_url)


def text_options(
    lang: List[str] = typer.Option(["en"], help="Subtitle languages in order of preference; repeatable. Human-made subtitles in any of them are preferred to automatic captions.", rich_help_panel=_TEXT),
    min_clip_seconds: float = typer.Option(8.0, help="Subtitles/ASR: sentences are merged into clips of at least this length...", rich_help_panel=_TEXT),
    max_clip_seconds: float = typer.Option(20.0, help="...and at most this length.", rich_help_panel=_TEXT),
    max_join_gap: float = typer.Option(1.5, help="Subtitles/ASR: sentences further apart than this many seconds are never in one clip.", rich_help_panel=_TEXT),
    language_check: bool = typer.Option(True, help="Reject subtitles whose text is clearly in another language than asked.", rich_help_panel=_TEXT),
    max_text_bytes: int = typer.Option(64 * 1024, help="Longest clip text in UTF-8 bytes; a longer one is a text_too_long ledger row and breaks its run. A clip's caption is a sentence or a few (HD-VILA: ~200 bytes); 64 KiB leaves room for 32 clips in a shard member verify accepts.", rich_help_panel=_TEXT),
    max_subtitle_bytes: int = typer.Option(50 * 1024 * 1024, help="Largest subtitle file in bytes; a larger one is a subtitle_too_large ledger row, never read (hours of speech are a few MB; parsing costs several times the file in memory).", rich_help_panel=_TEXT),
) -> TextOptions:
    """How subtitles become clips (speech recognition and concurrency are set later)."""
    if not 0 < min_clip_seconds <= max_clip_seconds:
        _fail("--min-clip-seconds must be positive and at most --max-clip-seconds")
    if max_text_bytes < 1 or max_subtitle_bytes < 1:
        _fail("--max-text-bytes and --max-subtitle-bytes must be at least 1")
    return TextOptions(langs=tuple(lang), check_language=language_check, max_text_bytes=max_text_bytes,
                       max_subtitle_bytes=max_subtitle_bytes, clip=ClipConfig(min_duration=min_clip_seconds, max_duration=max_clip_seconds,
                                       join_gap=max_join_gap))


def asr_options(
    asr: Asr = typer.Option(Asr.off, help="Speech recognition: 'auto' transcribes videos without usable subtitles, 'always' every video (hdvila: re-transcribes the planned spans).", rich_help_panel=_ASR),
    asr_model: str = typer.Option("openai/whisper-large-v3", help="Whisper model: hub id or local directory.", rich_help_panel=_ASR),
    asr_language: Optional[str] = typer.Option(None, help="Language Whisper transcribes in (default: detected).", rich_help_panel=_ASR),
    asr_timestamps: str = typer.Option("word", help="'word' (cross-attention alignment) or 'segment' timestamps.", rich_help_panel=_ASR),
    asr_batch_size: int = typer.Option(8, help="30-s audio windows per Whisper forward pass.", rich_help_panel=_ASR),
    asr_actors: Optional[int] = typer.Option(None, help="Whisper actors (default: one per GPU, else 1).", rich_help_panel=_ASR),
    asr_gpu: Optional[bool] = typer.Option(None, "--asr-gpu/--no-asr-gpu", help="Run Whisper on GPUs (default: when the cluster has them).", rich_help_panel=_ASR),
    asr_silence_db: float = typer.Option(-50.0, help="Audio windows quieter than this (RMS dBFS) are not transcribed (Whisper invents text for silence).", rich_help_panel=_ASR),
) -> AsrChoice:
    if asr_timestamps not in ("word", "segment"):
        _fail(f"--asr-timestamps must be 'word' or 'segment', got {asr_timestamps!r}")
    if asr == Asr.off:
        return AsrChoice(asr.value, None)
    from lfvila_data.text.asr import AsrConfig

    return AsrChoice(asr.value, AsrConfig(model=asr_model, language=asr_language, timestamps=asr_timestamps,
                                          batch_size=asr_batch_size, num_actors=asr_actors,
                                          use_gpu=asr_gpu, silence_db=asr_silence_db))


def plan_options(
    min_clips: int = typer.Option(4, help="Fewest consecutive clips in a sample.", rich_help_panel=_PLAN),
    max_clips: int = typer.Option(32, help="Most clips in a sample; longer runs are chunked.", rich_help_panel=_PLAN),
    max_gap: float = typer.Option(3.0, help="Largest gap in seconds between consecutive clips of a sample.", rich_help_panel=_PLAN),
    plan_buckets: Optional[int] = typer.Option(None, help="Partitions of the planning join (default: one per 256 MiB of input; more = less memory per task).", rich_help_panel=_PLAN),
    plan_only: bool = typer.Option(False, help="Stop after planning; print samples, clips, hours.", rich_help_panel=_PLAN),
) -> tuple[PlanConfig, bool]:
    """The plan's settings, and whether to stop after planning."""
    return PlanConfig(min_clips=min_clips, max_clips=max_clips, max_gap=max_gap,
                      num_buckets=plan_buckets), plan_only


def fetch_options(
    sections: bool = typer.Option(True, help="Download only the planned sections (--no-sections: whole files).", rich_help_panel=_FETCH),
    margin: float = typer.Option(1.0, help="Seconds downloaded around each planned span.", rich_help_panel=_FETCH),
    allow_local_files: bool = typer.Option(False, help="Accept local paths and file:// URLs as video URLs.", rich_help_panel=_FETCH),
    cookies: Optional[Path] = typer.Option(None, help="Netscape cookies file for yt-dlp.", rich_help_panel=_FETCH),
    proxy: Optional[str] = typer.Option(None, help="Proxy URL for downloads.", rich_help_panel=_FETCH),
    rate_limit: Optional[int] = typer.Option(None, help="Download rate limit in bytes/s (whole-file downloads).", rich_help_panel=_FETCH),
    max_filesize: int = typer.Option(2 * 1024**3, help="Size cap of one download in bytes.", rich_help_panel=_FETCH),
    socket_timeout: float = typer.Option(20.0, help="Network timeout in seconds.", rich_help_panel=_FETCH),
    retries: int = typer.Option(3, help="Retries of a transient download error (with backoff).", rich_help_panel=_FETCH),
    allow_private_addresses: bool = typer.Option(False, envvar=ALLOW_ENV, help="Fetch from loopback, private and link-local addresses too (refused by default: URLs are third-party input).", rich_help_panel=_FETCH),
    allow_network: Optional[List[str]] = typer.Option(None, help="A private network (CIDR) fetched from all the same, e.g. an internal mirror; repeatable.", rich_help_panel=_FETCH),
    max_page_bytes: int = typer.Option(32 * 1024**2, help="Bytes yt-dlp may read for a video's metadata (a page that is not a video stops here).", rich_help_panel=_FETCH),
    fetch_deadline: float = typer.Option(1800.0, help="Seconds one video may spend downloading, retries included.", rich_help_panel=_FETCH),
    min_rate: int = typer.Option(10_000, help="Bytes/s below which (for --slow-window seconds) a download stops as slow.", rich_help_panel=_FETCH),
    slow_window: float = typer.Option(60.0, help="Seconds over which --min-rate is measured.", rich_help_panel=_FETCH),
) -> FetchConfig:
    """Download settings (height and audio come from the cutting group)."""
    if cookies is not None and not cookies.is_file():
        _fail(f"cookies file not found: {cookies}")
    if proxy is not None and "://" not in proxy:
        proxy = f"http://{proxy}"
    if proxy is not None and not proxy.startswith("http://"):
        _fail(f"--proxy must be an http:// proxy (downloads pass the address guard first), got {proxy!r}")
    for net in allow_network or []:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            _fail(f"--allow-network must be a network like 10.0.0.0/8, got {net!r}")
    if fetch_deadline <= 0 or slow_window <= 0 or min_rate < 0 or max_page_bytes <= 0:
        _fail("--fetch-deadline, --slow-window and --max-page-bytes must be positive, --min-rate not negative")
    return FetchConfig(sections=sections, margin=margin, socket_timeout=socket_timeout, retries=retries,
                       max_filesize=max_filesize, cookies=str(cookies) if cookies else None,
                       proxy=proxy, rate_limit=rate_limit, allow_local_files=allow_local_files,
                       allow_private_addresses=allow_private_addresses, max_page_bytes=max_page_bytes,
                       deadline=fetch_deadline, min_rate=min_rate, slow_window=slow_window,
                       allowed_networks=tuple(allow_network or ()))


def cut_options(
    fps: float = typer.Option(3.0, help="Frame rate of sample videos.", rich_help_panel=_CUT),
    height: int = typer.Option(240, help="Height of sample videos (even); width keeps the aspect.", rich_help_panel=_CUT),
    copy: bool = typer.Option(False, "--copy", help="Stream-copy instead of re-encoding (fast, cuts on keyframes).", rich_help_panel=_CUT),
    audio: bool = typer.Option(False, "--audio", help="Keep the audio track.", rich_help_panel=_CUT),
    cut_threads: int = typer.Option(1, help="ffmpeg threads (and Ray CPUs) per cutting task.", rich_help_panel=_CUT),
    x264_preset: str = typer.Option("veryfast", help="x264 preset: ultrafast cuts 240p sources ~1.5x faster, files ~2x larger.", rich_help_panel=_CUT),
    crf: int = typer.Option(CutConfig.crf, help="x264 quality (0-51, lower is better and larger).", rich_help_panel=_CUT),
    x264_params: str = typer.Option(X264_PARAMS, help="x264 options on top of the preset; '' and --crf 23: what builds used before these defaults.", rich_help_panel=_CUT),
) -> CutConfig:
    if height <= 0 or height % 2:
        _fail(f"--height must be a positive even number, got {height}")
    presets = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
    if x264_preset not in presets:
        _fail(f"--x264-preset must be one of {', '.join(presets)}, got {x264_preset!r}")
    if cut_threads < 1:
        _fail(f"--cut-threads must be at least 1, got {cut_threads}")
    if fps <= 0:
        _fail(f"--fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        _fail(f"--crf must be between 0 and 51, got {crf}")
    problem = None if x264_params == X264_PARAMS else x264_params_problem(x264_params)
    if problem:
        _fail(f"--x264-params {x264_params!r}: {problem}")
    return CutConfig(fps=fps, height=height, copy=copy, audio=audio, threads=cut_threads, preset=x264_preset,
                     crf=crf, x264_params=x264_params)


def run_options(
    download_concurrency: int = typer.Option(8, help="Videos downloading at once (and subtitle look-ups at once).", rich_help_panel=_RUN),
    cut_concurrency: Optional[int] = typer.Option(None, help="Cutting tasks at once (default: cluster CPUs / cut threads).", rich_help_panel=_RUN),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster ('auto' or host:port); default a local Ray, or none (see --executor).", rich_help_panel=_RUN),
    executor: Executor = typer.Option(Executor.auto, help="Where fetching and cutting run: 'ray', or 'local' (threads of this process: no Ray to start). 'auto': local on one machine (no Ray address) unless speech recognition is on or HD-VILA inputs are over 16 MiB. The output is the same.", rich_help_panel=_RUN),
    retry_failed: bool = typer.Option(False, help="Also retry videos whose failure was permanent.", rich_help_panel=_RUN),
    workdir: Optional[str] = typer.Option(None, help="Node-local scratch directory for downloads.", rich_help_panel=_RUN),
    rebuild: bool = typer.Option(False, help="Redo every sample when cutting settings (--fps, --height, ...) differ from those the output was built with (else the rerun is refused); the plan and text are kept.", rich_help_panel=_RUN),
) -> RunOptions:
    return RunOptions(RunConfig(fetch_concurrency=download_concurrency, cut_concurrency=cut_concurrency,
                                executor=executor.value), ray_address, retry_failed, workdir, rebuild)


BUILD_OPTIONS = (input_options, benchmark_options, text_options, asr_options, plan_options, fetch_options,
                 cut_options, run_options)


def build_config(build: BuildConfig, bench: BenchmarkInputs, text: TextOptions, asr: AsrChoice,
                 plan: tuple[PlanConfig, bool],
                 fetch: FetchConfig, cut: CutConfig, run: RunOptions) -> BuildConfig:
    """The build's settings from its option groups; settings that more than one stage
    reads (height, audio, local files, concurrency, cut threads, fps) are wired here."""
    if build.source in BENCHMARK_SOURCES and not bench.annotations:
        _fail(f"--annotations is required for --source {build.source}")
    if build.source not in BENCHMARK_SOURCES and (bench.annotations or bench.video_dir or bench.split_files
                                                  or bench.video_base_url):
        _fail("--annotations, --video-dir, --video-base-url and --split-file need a benchmark --source "
              f"({', '.join(s.value for s in BENCHMARK_SOURCES)})")
    # local inputs are files
    allow_local_files = fetch.allow_local_files or build.source == "local" or bench.video_dir is not None
    plan_cfg, plan_only = plan
    try:
        clip = replace(text.clip, fps=cut.fps)  # the shortest clip is a number of frames
    except ValueError as e:
        _fail(str(e))
    return replace(
        build, annotations=bench.annotations, video_dir=bench.video_dir, split_files=bench.split_files,
        video_base_url=bench.video_base_url,
        plan=replace(plan_cfg, allow_local_files=allow_local_files, max_text_bytes=text.max_text_bytes),
        text_opts=replace(text, clip=clip, asr=asr.mode, asr_config=asr.config,
                          concurrency=run.run.fetch_concurrency),
        task=TaskContext(output=build.output, source=build.source, workdir=run.workdir, cut=cut,
                         fetch=replace(fetch, height=cut.height, audio=cut.audio,
                                       allow_local_files=allow_local_files)),
        run=replace(run.run, cut_cpus=float(cut.threads)),
        plan_only=plan_only, retry_failed=run.retry_failed, ray_address=run.ray_address,
        rebuild=run.rebuild)


@app.command()
@_option_groups(*BUILD_OPTIONS)
def build(*groups: object) -> None:
    """Plan long-form samples (HD-VILA metadata; YouTube or local videos with subtitles or
    speech recognition), then download, cut and record them."""
    from lfvila_data.build import run_build
    from lfvila_data.output.write import OutputStopped

    cfg = build_config(*groups)
    if cfg.source == "hdvila" and cfg.text_opts.asr == "auto":
        typer.echo("lfvila-data: note: HD-VILA metadata has text for every clip, so --asr auto "
                   "transcribes nothing; --asr always re-transcribes the planned spans", err=True)
    try:
        run_build(cfg)
    except (InputError, ValueError) as e:
        _fail(str(e))
    except OutputStopped as e:
        _fail(str(e), STOPPED)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume")


@app.command()
def shard(
    input: List[str] = typer.Option(..., "--input", help="Build directories (repeatable)."),
    output: str = typer.Option(..., help="Shard directory (local path or fsspec URL)."),
    val_fraction: float = typer.Option(0.01, help="Fraction of source videos in the val split."),
    val_count: Optional[int] = typer.Option(None, help="Samples in val (whole videos); overrides --val-fraction."),
    seed: int = typer.Option(0, help="Seed of the split and the shuffle."),
    samples_per_shard: Optional[int] = typer.Option(None, help="Most samples in a shard."),
    max_shard_bytes: int = typer.Option(1_000_000_000, help="Most bytes in a shard."),
    concurrency: Optional[int] = typer.Option(None, help="Shards written at once (default: cluster CPUs)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster ('auto' or host:port); default a local Ray."),
    executor: Executor = typer.Option(Executor.auto, help=f"Where shards are written: 'ray', or 'local' (threads of this process, no Ray started). 'auto': local without --ray-address when at most {LOCAL_SHARDS} shards are to be written (Ray's start would be most of the time)."),
) -> None:
    """Pack built samples into WebDataset shards (format: shards/README.md)."""
    import time

    from lfvila_data.executor.cluster import init_ray
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.executor.threads import ThreadTasks
    from lfvila_data.output.lease import OutputLease
    from lfvila_data.output.write import OutputDir, OutputStopped
    from lfvila_data.progress import ThrottledPrinter, human_bytes, human_time, print_summary
    from lfvila_data.shards.write import ShardConfig, run_shard

    started = time.monotonic()
    try:
        cfg = ShardConfig(val_fraction=val_fraction, val_count=val_count, seed=seed,
                          samples_per_shard=samples_per_shard, max_shard_bytes=max_shard_bytes)
        from lfvila_data.shards.write import read_manifests
        read_manifests(list(input))  # bad inputs fail before Ray starts
        if ray_address and executor == Executor.local:
            raise InputError("--executor local runs without Ray; it cannot be combined with --ray-address")
        with OutputLease(OutputDir(output), "lfvila-data shard") as lease:  # so does a busy output
            if ray_address or executor == Executor.ray:
                init_ray(ray_address)
            show = ThrottledPrinter(2.0)

            def progress(done: int, total: int, nbytes: int) -> None:
                rate = nbytes / max(time.monotonic() - started, 1e-6)
                show(f"shard: {done}/{total} shards, {human_bytes(nbytes)} ({human_bytes(rate)}/s)",
                     force=done == total)

            def write(fn, todo):  # the shards still to write, known once they are planned
                if executor == Executor.local or (executor == Executor.auto and not ray_address
                                                  and len(todo) <= LOCAL_SHARDS):
                    return ThreadTasks(concurrency)(fn, todo)
                init_ray(ray_address)
                return RayTasks(max_in_flight=concurrency, num_cpus=1, max_retries=1)(fn, todo)

            stats = run_shard(list(input), output, cfg, write=write, on_progress=progress)
            lease.check()
    except (InputError, ValueError) as e:
        _fail(str(e))
    except OutputStopped as e:
        _fail(str(e), STOPPED)
    rows = [("samples", f"{stats['samples']:,}"), ("videos", f"{stats['videos']:,}"),
            ("hours", f"{stats['hours']:,.3f}"), ("shards", f"{stats['shards']:,}"),
            ("bytes", human_bytes(stats["bytes"]))]
    rows += [(f"{k} split", f"{v['samples']:,} samples, {v['videos']:,} videos, {v['shards']} shards")
             for k, v in stats["splits"].items()]
    rows.append(("time", human_time(time.monotonic() - started)))
    print_summary(f"shards in {output}", rows)


@app.command("compare-plans")
def compare_plans(
    a: str = typer.Argument(..., help="A build directory (or its plan/ folder), e.g. built with --groups."),
    b: str = typer.Argument(..., help="Another plan of the same metadata, e.g. our rule."),
    output: str = typer.Option("compare-plans", help="Where compare.json and clips_per_sample.png go."),
) -> None:
    """Compare two plans: samples, clips and hours of each, clips in both or only one,
    samples with the same clip list, and histograms of clips per sample side by side."""
    from lfvila_data.plan.compare import compare_plans as compare
    from lfvila_data.plan.compare import report_rows, write_report
    from lfvila_data.progress import print_summary

    try:
        result = write_report(compare(a, b), output)
    except (InputError, FileNotFoundError) as e:
        _fail(str(e))
    print_summary("compare-plans", report_rows(result))


@app.command()
def verify(
    shard_dir: str = typer.Argument(..., help="Shard directory (local path or fsspec URL)."),
    decode: bool = typer.Option(True, help="Decode every mp4 (--no-decode: structure and checksums only)."),
) -> None:
    """Check every shard: tar integrity, members, json vs index and manifest, MD5, decoding."""
    from lfvila_data.shards.verify import verify_shards

    report = verify_shards(shard_dir, decode=decode)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def stats(
    directory: str = typer.Argument(..., help="A build or a shard directory."),
    out: Optional[str] = typer.Option(None, help="Where the plots and index.html go (default DIR/report)."),
) -> None:
    """Print the summary and write plots (PNG) and an HTML page of the distributions."""
    from lfvila_data.progress import print_summary
    from lfvila_data.shards.stats import StatsInputError, render_summary, write_report

    try:
        result = write_report(directory, out)
    except (StatsInputError, FileNotFoundError) as e:
        _fail(str(e))
    print_summary(f"{result['kind']} {directory}", render_summary(result))
    typer.echo(f"report: {result['report']}")


@app.command()
def demo(
    output: str = typer.Option("demo-out", help="Where the demo build is written."),
    videos: int = typer.Option(6, help="Generated videos in the corpus."),
    clips: int = typer.Option(16, help="Clips per video."),
    max_clips: int = typer.Option(8, help="Most clips in a sample."),
    train_steps: int = typer.Option(100, help="Training steps of the demo model config on the shards (0: build and shard only)."),
) -> None:
    """Build and shard the built-in demo corpus end to end (no internet needed), then train
    the tiny demo model a few steps on the shards and evaluate retrieval."""
    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.demo import make_corpus, train_demo
    from lfvila_data.executor.threads import ThreadTasks
    from lfvila_data.localserver import MediaServer
    from lfvila_data.progress import print_summary
    from lfvila_data.shards.write import ShardConfig, run_shard

    if train_steps < 0:
        _fail(f"--train-steps must be >= 0, got {train_steps}")
    root = Path(output) / "_corpus"
    (root / "www").mkdir(parents=True, exist_ok=True)
    try:
        with MediaServer(root / "www") as server:
            base = server.url("").rstrip("/")
            # distinct first windows: samples the retrieval eval can tell apart
            meta, text = make_corpus(root, base, videos=videos, clips=clips, distinct_every=max_clips)
            typer.echo(f"demo: {videos} generated videos served from {base}", err=True)
            run_build(BuildConfig(
                metadata=(str(meta),), text=(str(text),), output=output,
                plan=PlanConfig(max_clips=max_clips),
                task=TaskContext(output=output, fetch=FetchConfig(retries=1, allow_private_addresses=True))))
        shards = f"{output.rstrip('/')}/shards"
        stats = run_shard([output], shards, ShardConfig(val_count=2, samples_per_shard=4), write=ThreadTasks())
        print_summary(f"shards in {shards}", [
            (f"{k} split", f"{v['samples']} samples in {v['shards']} shards")
            for k, v in stats["splits"].items()])
        if train_steps:
            result = train_demo(output, train_steps, log=lambda m: typer.echo(m, err=True))
            rows = [("steps", result["steps"]),
                    ("loss", f"{result['loss_first']:.3f} -> {result['loss_last']:.3f} "
                             "(means of the first and last steps)")]
            for split, m in result["eval"].items():
                p2v, n = m["paragraph_to_video"], m["num_samples"]
                rows.append((f"{split} p->v", f"R@1 {p2v['R@1']:.1f}%  R@5 {p2v['R@5']:.1f}%  "
                                               f"(chance R@1 {100 / n:.1f}%, {n} samples)"))
            rows += [("checkpoint", result["checkpoint"]),
                     ("logs", f"{output.rstrip('/')}/train/logs/metrics.csv, {output.rstrip('/')}/train/eval.json")]
            print_summary(f"training in {output.rstrip('/')}/train", rows)
    except (InputError, ValueError) as e:
        _fail(str(e))
    except ImportError as e:
        _fail(f"training needs the model extra ({e}); --train-steps 0 skips it")


@app.command()
def browse(
    directory: str = typer.Argument(..., help="A build or a shard directory."),
    samples: int = typer.Option(20, help="Random samples on the page."),
    seed: int = typer.Option(0, help="Which samples: the same seed draws the same ones."),
    output: Optional[str] = typer.Option(None, help="Where index.html and thumbs/ go (default DIR/browse)."),
) -> None:
    """Write a static HTML page of random samples, one frame per clip at its middle with the
    clip's times and text under it: to check by eye that text and footage go together."""
    from lfvila_data.shards.browse import write_browse
    from lfvila_data.shards.stats import StatsInputError

    try:
        result = write_browse(directory, output, samples, seed)
    except (StatsInputError, InputError, FileNotFoundError) as e:
        _fail(str(e))
    missing = f" ({result.missing_images} clips without a frame)" if result.missing_images else ""
    typer.echo(f"browse: {result.samples} samples, {result.images} thumbnails{missing}: {result.page}")


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:
        # credentials, bucket or permission problems anywhere (inputs, output, mid-build):
        # one line the user can act on, not the traceback of s3fs and botocore
        problem = storage_problem(e)
        if problem is None:
            raise
        typer.echo(f"lfvila-data: error: {problem}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
