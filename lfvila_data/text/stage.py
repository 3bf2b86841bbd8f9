"""The text stage of sources that bring videos but no clip spans (`youtube`, `local`), and
of `hdvila --asr`: subtitles, or speech recognition where there are none, become timed
words, then sentences, clips and samples, written as the plan the fetch and cut stages
read.

Each video's outcome is journaled (`_text/`), so a rerun neither asks YouTube for
subtitles again nor re-transcribes; the plan is rewritten from the journal at the end."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from lfvila_data.executor.base import TaskMap, crash_line, local_map
from lfvila_data.media.cut import media_duration
from lfvila_data.media.fetch import FetchConfig, Fetcher, FetchError, with_retries
from lfvila_data.media.guard import ByteMeter
from lfvila_data.output.fingerprint import SPEED, content, fingerprint, remove_dir, reuse_or_clear
from lfvila_data.output.write import (
    DONE,
    FAILED,
    RETRY,
    Journal,
    OutputDir,
    iter_journal,
    journal_status,
    payload_fetched_bytes,
)
from lfvila_data.plan.join import (
    PlanConfig,
    PlanSummary,
    PlanWriter,
    count_drop,
    iter_plan_parts,
    read_plan_failures,
)
from lfvila_data.progress import ThrottledPrinter, human_time
from lfvila_data.records import Clip, Failure, FailureCode, PlannedSample, Stage, TimedText
from lfvila_data.schemas import plan_row_to_sample, sample_to_row
from lfvila_data.sources.local import find_subtitles, find_videos, local_video_id
from lfvila_data.sources.youtube import VideoRef, fetch_subtitles, read_video_list
from lfvila_data.text.clips import ClipConfig, count_words, plan_from_words, plan_subtitled_video
from lfvila_data.text.language import normalise_language
from lfvila_data.text.sentences import SentenceConfig, split_sentences
from lfvila_data.text.subtitles import Word

TEXT_DIR = "_text"
ASR_MODES = ("off", "auto", "always")
# (AsrJobs, AsrConfig, resolve) -> AsrResults as they finish; on a cluster
# `executor.asr.transcribe_on_ray`, in this process `text.asr.transcribe_all`
Transcriber = Callable[[Iterable, object, Callable[[str, ByteMeter], str]], Iterator]


@dataclass(frozen=True)
class TextOptions:
    """How text is found: subtitle languages, when to transcribe, clip sizes."""

    langs: tuple[str, ...] = ("en",)
    asr: str = "off"              # off | auto (videos without usable subtitles) | always
    asr_config: object | None = None  # lfvila_data.asr.AsrConfig (imported only when used)
    clip: ClipConfig = ClipConfig()
    check_language: bool = True
    concurrency: int = field(default=16, metadata=SPEED)  # subtitle look-ups at once
    # a clip text longer than this is a ledger row (the plan's copy, PlanConfig.max_text_bytes, decides)
    max_text_bytes: int = 64 * 1024
    # a subtitle file larger than this is not parsed: a ledger row instead of gigabytes in memory
    max_subtitle_bytes: int = 50 * 1024 * 1024

    def __post_init__(self):
        if self.asr not in ASR_MODES:
            raise ValueError(f"asr must be one of {ASR_MODES}, got {self.asr!r}")
        if self.asr != "off" and self.asr_config is None:
            raise ValueError("speech recognition needs an AsrConfig")
        if self.max_text_bytes < 1 or self.max_subtitle_bytes < 1:
            raise ValueError("--max-text-bytes and --max-subtitle-bytes must be >= 1")


@dataclass
class TextOutcome:
    """One video after its subtitles were looked at."""

    video_id: str
    url: str
    samples: list[PlannedSample] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    status: str = DONE
    asr_reason: str | None = None  # set: transcribe this video (why: no usable subtitles...)
    counts: Counter = field(default_factory=Counter)  # planning's: words parsed, dropped by reason
    fetched_bytes: int = 0  # the text stage's network bytes for the video (look-ups, audio), all runs

    def to_result(self):
        from lfvila_data.output.write import VideoResult

        return VideoResult(self.video_id, self.status, [sample_to_row(s) for s in self.samples],
                           [f.to_row() for f in self.failures], {}, counts=dict(self.counts),
                           fetched_bytes=self.fetched_bytes)


# ------------------------------------------------------------------ per-video text look-up


def _from_subtitles(vid: str, url: str, data: bytes | Path, fmt: str | None, lang: str | None, kind: str | None,
                    duration: float | None, plan: PlanConfig, opts: TextOptions) -> TextOutcome:
    counts: Counter = Counter()
    samples, failures = plan_subtitled_video(vid, url, data, fmt, lang, plan, opts.clip, stats=counts,
                                             kind=kind, duration=duration, check_language=opts.check_language)
    if not samples and opts.asr == "auto":  # transcribed instead: the transcript's words count
        return TextOutcome(vid, url, samples, failures,
                           asr_reason="; ".join(f.reason for f in failures) or "subtitles gave no samples")
    return TextOutcome(vid, url, samples, failures, counts=counts)


def local_text(video: Path, plan: PlanConfig, opts: TextOptions) -> TextOutcome:
    """A local video's sidecar subtitles, or a request to transcribe it."""
    vid, url = local_video_id(video), str(video)
    if opts.asr == "always":
        return TextOutcome(vid, url, asr_reason="--asr always")
    sub = find_subtitles(video, list(opts.langs))
    if sub is None:
        reason = (f"no subtitles next to {video.name} (looked for "
                  f"{video.stem}[.{'|.'.join(opts.langs)}].vtt/.srt)")
        if opts.asr == "auto":
            return TextOutcome(vid, url, asr_reason=reason)
        return TextOutcome(vid, url, failures=[Failure(vid, None, Stage.TEXT.value, FailureCode.NO_SUBTITLES,
                                                       reason + "; use --asr auto to transcribe")])
    path, lang = sub
    try:
        if (size := path.stat().st_size) > opts.max_subtitle_bytes:
            return TextOutcome(vid, url, failures=[subtitle_too_large(vid, path.name, size, opts.max_subtitle_bytes)])
        with path.open("rb"):  # the parser reads it a window at a time; unreadable is a row here
            pass
    except OSError as e:
        return TextOutcome(vid, url, failures=[Failure(vid, None, Stage.TEXT.value, FailureCode.UNUSABLE_SUBTITLES,
                                                       f"cannot read {path.name}: {e}")])
    return _from_subtitles(vid, url, path, path.suffix, lang or (opts.langs[0] if opts.langs else None),
                           None, media_duration(video), plan, opts)


def youtube_text(ref: VideoRef, plan: PlanConfig, opts: TextOptions, fetch: FetchConfig) -> TextOutcome:
    """A video's subtitles through yt-dlp, or a request to transcribe it; with the bytes
    its look-ups fetched (every attempt, failed ones included)."""
    meter = ByteMeter()
    outcome = _youtube_text(ref, plan, opts, fetch, meter)
    outcome.fetched_bytes = meter.received
    return outcome


def _youtube_text(ref: VideoRef, plan: PlanConfig, opts: TextOptions, fetch: FetchConfig,
                  meter: ByteMeter) -> TextOutcome:
    if opts.asr == "always":
        return TextOutcome(ref.video_id, ref.url, asr_reason="--asr always")
    try:  # transient errors are retried with backoff, like video downloads
        got = with_retries(lambda: fetch_subtitles(ref, fetch, list(opts.langs), opts.max_subtitle_bytes, meter),
                           fetch)
    except FetchError as e:
        return TextOutcome(ref.video_id, ref.url, status=FAILED if e.permanent else RETRY,
                           failures=[Failure(ref.video_id, None, Stage.DOWNLOAD.value, e.code, e.reason,
                                             e.permanent)])
    if got.track is None or got.data is None:
        offered = ", ".join(got.available) or "none"
        reason = f"no subtitles or automatic captions in {'/'.join(opts.langs)} (the video offers: {offered})"
        if opts.asr == "auto":
            return TextOutcome(ref.video_id, ref.url, asr_reason=reason)
        return TextOutcome(ref.video_id, ref.url, failures=[
            Failure(ref.video_id, None, Stage.TEXT.value, FailureCode.NO_SUBTITLES,
                    reason + "; use --asr auto to transcribe")])
    t = got.track
    return _from_subtitles(ref.video_id, ref.url, got.data, t.ext, t.lang.removesuffix("-orig"), t.kind,
                           got.duration, plan, opts)


def subtitle_too_large(video_id: str, name: str, size: int, limit: int) -> Failure:
    """The ledger row of a subtitle file over --max-subtitle-bytes (left unread)."""
    return Failure(video_id, None, Stage.TEXT.value, FailureCode.SUBTITLE_TOO_LARGE,
                   f"subtitle file {name} is {size} bytes, more than --max-subtitle-bytes {limit}")


# ------------------------------------------------------------------ speech recognition


class AudioResolver:
    """Picklable: turns a video URL into what ffmpeg reads for its audio, in the ASR actor."""

    def __init__(self, fetch: FetchConfig):
        self.fetch = fetch
        self.guard_limits = fetch.guard_limits()  # what the audio read through the guard may do

    def __call__(self, url: str, meter: ByteMeter | None = None) -> str:
        # a FetchError keeps `permanent`, so a 404 is not retried on every rerun
        return Fetcher(self.fetch, Path(".")).media_url(url, meter)


def transcribe(jobs: Iterable, opts: TextOptions, fetch: FetchConfig,
               on_result: Callable[[object], None], transcriber: Transcriber) -> None:
    """Run `transcriber` over `jobs` (AsrJob, possibly a lazy stream), calling
    `on_result` per video; starts no actor when there is nothing to transcribe."""
    from itertools import chain

    jobs = iter(jobs)
    first = next(jobs, None)
    if first is None:
        return
    jobs = chain([first], jobs)
    for result in transcriber(jobs, opts.asr_config, AudioResolver(fetch)):
        on_result(result)


def asr_outcome(result, url: str, plan: PlanConfig, opts: TextOptions, why: str | None) -> TextOutcome:
    """Samples from one video's transcript, or its ledger row; with the bytes it fetched."""
    outcome = _asr_outcome(result, url, plan, opts, why)
    outcome.fetched_bytes = result.fetched_bytes
    return outcome


def _asr_outcome(result, url: str, plan: PlanConfig, opts: TextOptions, why: str | None) -> TextOutcome:
    vid = result.video_id
    if result.failure is not None:
        reason = result.failure.reason if not why else f"{why}; speech recognition failed: {result.failure.reason}"
        return TextOutcome(vid, url, status=DONE if result.failure.permanent else RETRY,
                           failures=[Failure(vid, None, Stage.ASR.value, result.failure.code, reason,
                                                   result.failure.permanent)])
    if not result.words:
        return TextOutcome(vid, url, failures=[Failure(vid, None, Stage.ASR.value, FailureCode.ASR_NO_WORDS,
                                                       f"speech recognition heard no words in "
                                                       f"{result.audio_seconds:.0f} s of audio")])
    spoken = normalise_language(result.language)
    wanted = {normalise_language(lang) for lang in opts.langs}
    if opts.check_language and spoken and opts.asr_config.language is None and spoken not in wanted:
        heard = count_words(result.words)
        counts = Counter(words_parsed=heard)
        count_drop(counts, "wrong_language", words=heard)
        return TextOutcome(vid, url, counts=counts, failures=[
            Failure(vid, None, Stage.ASR.value, FailureCode.WRONG_LANGUAGE,
                    f"speech recognition detected {spoken!r} speech; asked for {'/'.join(opts.langs)}")])
    counts: Counter = Counter()
    samples, failures = plan_from_words(vid, url, list(result.words), "asr", result.language, plan,
                                        opts.clip, SentenceConfig(), counts)
    return TextOutcome(vid, url, samples, failures, counts=counts)


# ------------------------------------------------------------------ orchestration


def _journal_for(out: OutputDir, settings: dict, plan: PlanConfig, opts: TextOptions) -> dict[str, str]:
    """Each video's status in the text journal of earlier runs with the same content
    settings (the journal is cleared when they differ; layout and speed settings, and
    videos added to a list or a folder, keep it: outcomes are journaled per video)."""
    value = fingerprint(settings | {"plan": content(plan), "opts": content(opts)})
    reuse_or_clear(out, f"{TEXT_DIR}/SETTINGS", value, remove_dir(out, TEXT_DIR))
    return journal_status(out, TEXT_DIR)


def earlier_fetched(out: OutputDir) -> dict[str, int]:
    """The bytes earlier runs fetched for each video a rerun redoes (journaled `retry`):
    its new entry carries them on, so the latest entries sum to every run's bytes, and a
    video whose transcript is reused (not redone) is not fetched, nor counted, again.
    Only the `retry` entries' payloads are parsed."""
    import pyarrow.compute as pc

    earlier: dict[str, int] = {}
    for table in iter_journal(out, TEXT_DIR).tables():
        redo = table.filter(pc.equal(table.column("status"), RETRY))
        for vid, n in zip(redo.column("video_id").to_pylist(),
                          payload_fetched_bytes(redo.column("payload")).to_pylist()):
            if n:
                earlier[vid] = n
    return earlier


class TextJournal:
    """The text journal of this run: each outcome with its earlier runs' bytes added."""

    def __init__(self, out: OutputDir, previous: dict[str, str]):
        self.journal = Journal(out, dir=TEXT_DIR)
        self.earlier = earlier_fetched(out) if RETRY in previous.values() else {}

    def add(self, o: TextOutcome) -> None:
        o.fetched_bytes += self.earlier.get(o.video_id, 0)
        self.journal.add(o.to_result())

    def flush(self) -> None:
        self.journal.flush()


class TextProgress:
    def __init__(self, total: int, every_s: float = 2.0):
        self.total = total
        self.counts: Counter = Counter()
        self.started = time.monotonic()
        self._printer = ThrottledPrinter(every_s, last=self.started)

    def finished(self, outcome: TextOutcome, transcribed: bool) -> None:
        """Count one video whose text is settled (journaled), then maybe print."""
        c = self.counts
        c["done"] += 1
        c["asr_done"] += transcribed
        c["samples"] += len(outcome.samples)
        c["failed"] += not outcome.samples
        c["subtitles"] += bool(outcome.samples) and not transcribed
        self.tick()

    def tick(self, force: bool = False) -> None:
        self._printer(self.line, force)

    def line(self) -> str:
        c = self.counts
        return (f"text: videos {c['done']}/{self.total} | subtitles {c['subtitles']} | "
                f"asr queued {c['asr_queued']}, done {c['asr_done']} | failed {c['failed']} | "
                f"samples {c['samples']} | elapsed {human_time(time.monotonic() - self.started)}")


def run_text_stage(items: list, look_up: Callable[..., TextOutcome], look_ups: TaskMap, out_dir: str,
                   plan: PlanConfig, opts: TextOptions, fetch: FetchConfig, settings: dict,
                   inputs: dict, list_failures: list[Failure] = (), *,
                   transcriber: Transcriber) -> PlanSummary:
    """Look up text for every item (`look_up(item)`, run by `look_ups`), transcribe the
    ones that asked for it, journal each outcome, then write the plan from the journal."""
    out = OutputDir(out_dir)
    previous = _journal_for(out, settings, plan, opts)
    journal = TextJournal(out, previous)
    progress = TextProgress(len(items))
    asr_jobs, asr_why, urls, looked_up = [], {}, {}, {}

    def key(item) -> str:
        return item.video_id if isinstance(item, VideoRef) else local_video_id(item)

    todo = [it for it in items if previous.get(key(it), RETRY) == RETRY]
    progress.counts["done"] = len(items) - len(todo)

    def record(o: TextOutcome) -> None:
        if o.asr_reason is not None:
            from lfvila_data.text.asr import AsrJob

            asr_jobs.append(AsrJob(o.video_id, o.url))
            asr_why[o.video_id] = None if o.asr_reason == "--asr always" else o.asr_reason
            urls[o.video_id] = o.url
            looked_up[o.video_id] = o.fetched_bytes  # the subtitle look-up's, before the audio's
            progress.counts["asr_queued"] += 1
            return
        journal.add(o)
        progress.finished(o, transcribed=False)

    try:
        for done in look_ups(look_up, todo):
            record(done.value if done.error is None else _crashed(key(done.item), str(done.item), done.error))

        def on_asr(result) -> None:
            o = asr_outcome(result, urls[result.video_id], plan, opts, asr_why.get(result.video_id))
            o.fetched_bytes += looked_up.get(result.video_id, 0)
            journal.add(o)
            progress.finished(o, transcribed=True)

        transcribe(asr_jobs, opts, fetch, on_asr, transcriber)
    finally:
        journal.flush()
    progress.tick(force=True)
    return _write_plan_from_journal(out, out_dir, plan, inputs, list(list_failures),
                                    Counter(videos=len(items)), {key(it) for it in items})


def _crashed(video_id: str, url: str, err: Exception) -> TextOutcome:
    return TextOutcome(video_id, url, status=RETRY, failures=[
        Failure(video_id, None, Stage.TEXT.value, FailureCode.TASK_CRASHED, f"text task failed: {crash_line(err)}",
                False)])


def _write_plan_from_journal(out: OutputDir, out_dir: str, plan: PlanConfig, inputs: dict,
                             failures: list[Failure], counts: Counter, wanted: set[str]) -> PlanSummary:
    """The plan of every wanted video's journaled outcome, streamed part by part."""
    writer = PlanWriter(out_dir, plan)
    writer.add([], failures)
    count_clips = "clips_total" not in counts  # else: known from the plan this one rewrites
    for vid, _status, payload in iter_journal(out, TEXT_DIR):
        if vid in wanted:
            samples = [plan_row_to_sample(r) for r in payload["rows"]]
            planned = Counter(payload.get("counts") or {})  # journals before words were counted: none
            if count_clips:
                counts["clips_total"] += planned.pop("clips_total", sum(len(s.clips) for s in samples))
            counts.update({k: v for k, v in planned.items() if k != "clips_total"})
            writer.add(samples, [Failure.from_row(r) for r in payload["failures"]])
    return writer.close(inputs, counts)


def plan_local_text(inputs: list[str], out_dir: str, plan: PlanConfig, opts: TextOptions,
                    fetch: FetchConfig, *, transcriber: Transcriber) -> PlanSummary:
    """`--source local`: sidecar subtitles (read here, cheap), then ASR where asked."""
    videos = find_videos(inputs)
    listing = [[str(v), v.stat().st_size] for v in videos]
    return run_text_stage(videos, partial(local_text, plan=plan, opts=opts), local_map, out_dir, plan, opts,
                          fetch, {"source": "local"}, {"local": listing, "langs": list(opts.langs)},
                          transcriber=transcriber)


def plan_youtube(lists: list[str], out_dir: str, plan: PlanConfig, opts: TextOptions,
                 fetch: FetchConfig, *, look_ups: TaskMap, transcriber: Transcriber) -> PlanSummary:
    """`--source youtube`: yt-dlp subtitle look-ups through `look_ups`, then ASR where asked."""
    from lfvila_data.inputs import expand_paths
    from lfvila_data.plan.join import _input_listing

    refs, bad = read_video_list(lists)
    listing = _input_listing(expand_paths(lists))
    look_up = partial(youtube_text, plan=plan, opts=opts, fetch=fetch)
    return run_text_stage(refs, look_up, look_ups, out_dir, plan, opts, fetch, {"source": "youtube"},
                          {"youtube": listing, "langs": list(opts.langs)}, bad, transcriber=transcriber)


# ------------------------------------------------------------------ hdvila --asr


def retext_video(samples: list[PlannedSample], words: list[Word], language: str | None,
                 plan: PlanConfig, stats: Counter | None = None) -> tuple[list[PlannedSample], list[Failure]]:
    """HD-VILA samples of one video with their clip texts replaced by the transcript: each
    word goes to the clip holding its midpoint and keeps its time; clips that heard nothing
    break their run, as a clip without text does in planning. `stats` gets the words
    heard, in samples and dropped by reason (words heard outside every clip, in the
    transcribed margins and gaps, as `outside_clips`), which add up as for subtitles."""
    from bisect import bisect_right

    from lfvila_data.plan.join import group_runs
    from lfvila_data.records import VideoMeta

    vid, url = samples[0].video_id, samples[0].url
    clips = sorted({c.clip_id: c for s in samples for c in s.clips}.values(), key=lambda c: c.start)
    starts = [c.start for c in clips]
    heard: dict[str, list[Word]] = defaultdict(list)
    outside: list[Word] = []
    for w in words:
        mid = (w.start + w.end) / 2
        i = bisect_right(starts, mid) - 1
        if i >= 0 and mid <= clips[i].end:  # clamped: a sentence never leaves its clip
            c = clips[i]
            heard[c.clip_id].append(Word(w.text, max(w.start, c.start), min(w.end, c.end)))
        else:
            outside.append(w)
    if stats is not None:
        stats["words_parsed"] += count_words(words)
    if outside:
        count_drop(stats, "outside_clips", words=count_words(outside),
                   seconds=sum(w.end - w.start for w in outside))
    new_clips, texts = [], {}
    for c in clips:
        sentences = split_sentences(heard.get(c.clip_id, []))
        timed = tuple(TimedText(s.text, s.start, s.end) for s in sentences)
        new_clips.append(Clip(c.clip_id, c.k, c.start, c.end, None, timed))
        if timed:
            texts[c.clip_id] = " ".join(t.text for t in timed)
    got, fails = group_runs(VideoMeta(vid, url, tuple(new_clips)), texts, plan, stats)
    fails = [Failure(f.video_id, f.clip_id, Stage.ASR.value, FailureCode.ASR_NO_WORDS, "speech recognition "
                     "heard no words in this clip", True) if f.code is FailureCode.NO_TEXT else f for f in fails]
    return [replace(s, text_source="asr", language=language) for s in got], fails


def retext_plan_with_asr(out_dir: str, plan: PlanConfig, opts: TextOptions, fetch: FetchConfig, *,
                         transcriber: Transcriber) -> PlanSummary:
    """`--source hdvila --asr always`: transcribe the planned spans of every video (not the
    whole video) and rewrite the plan with the transcript as text. The plan is streamed
    into the actor pool; only videos in flight are held in memory."""
    from lfvila_data.media.fetch import section_spans
    from lfvila_data.plan.join import _read_success
    from lfvila_data.text.asr import AsrJob

    done = _read_success(out_dir)
    out = OutputDir(out_dir)
    plan_failures = [Failure.from_row(r) for r in read_plan_failures(out_dir).to_pylist()]
    previous = _journal_for(out, {"hdvila_plan": done["summary"]}, plan, opts)
    journal = TextJournal(out, previous)
    progress = TextProgress(done["summary"]["videos_with_samples"])
    in_flight: dict[str, list[PlannedSample]] = {}
    planned: set[str] = set()

    def jobs():
        for table in iter_plan_parts(out_dir):
            by_video: dict[str, list[PlannedSample]] = defaultdict(list)
            for row in table.to_pylist():
                by_video[row["video_id"]].append(plan_row_to_sample(row))
            for vid, samples in sorted(by_video.items()):
                planned.add(vid)
                if previous.get(vid, RETRY) != RETRY:
                    progress.counts["done"] += 1
                    continue
                in_flight[vid] = samples
                progress.counts["asr_queued"] += 1
                spans = section_spans([(s.start, s.end) for s in samples], margin=0.5, merge_gap=5.0)
                yield AsrJob(vid, samples[0].url, tuple(spans))

    def on_asr(result) -> None:
        samples = in_flight.pop(result.video_id)
        if result.failure is not None:
            o = TextOutcome(result.video_id, samples[0].url, status=DONE if result.failure.permanent else RETRY,
                            failures=[result.failure])
        else:
            counts: Counter = Counter()
            got, fails = retext_video(samples, list(result.words), result.language, plan, counts)
            o = TextOutcome(result.video_id, samples[0].url, got, fails, counts=counts)
        o.fetched_bytes = result.fetched_bytes
        journal.add(o)
        progress.finished(o, transcribed=True)

    try:
        transcribe(jobs(), opts, fetch, on_asr, transcriber)
    finally:
        journal.flush()
    progress.tick(force=True)
    counts: Counter = Counter(videos=done["summary"]["videos"], clips_total=done["summary"]["clips_total"],
                              dropped_short_runs=done["summary"]["dropped_short_runs"])
    summary = _write_plan_from_journal(out, out_dir, plan, done["inputs"] | {"asr": _asr_marker(opts)},
                                       plan_failures, counts, planned)
    return summary


def _asr_marker(opts: TextOptions) -> str | None:
    """What the plan's text came from, so a rerun with other ASR settings re-plans."""
    return None if opts.asr == "off" else fingerprint(content(opts))
