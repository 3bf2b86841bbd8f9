"""The work done for one source video, in two steps that Ray schedules separately:
`fetch_video` (network bound) and `cut_video` (CPU bound, on the node holding the files).

Both run without Ray too, which is how the unit tests call them."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lfvila_data.media.cut import CutConfig, MediaError, Probe, Span, cut_spans, probe, probe_written
from lfvila_data.media.fetch import FetchConfig, Fetched, Fetcher, FetchError, Section
from lfvila_data.output.write import (
    DONE,
    FAILED,
    RETRY,
    OutputDir,
    VideoResult,
    is_output_error,
    output_space_problem,
)
from lfvila_data.progress import CutProgress
from lfvila_data.records import Failure, FailureCode, PlannedSample, Stage, sample_key
from lfvila_data.schemas import manifest_row

END_TOLERANCE = 0.5  # seconds a clip may run past the last frame (span rounding)


@dataclass(frozen=True)
class TaskContext:
    """Everything a video task needs, small enough to ship to every Ray task."""

    output: str
    fetch: FetchConfig = FetchConfig()
    cut: CutConfig = CutConfig()
    source: str = "hdvila"
    workdir: str | None = None

    def scratch(self) -> Path:
        """Node-local scratch space for downloads (never the possibly remote output), one
        folder per output: two builds on one machine fetching the same video id into
        different outputs must not share (and delete) each other's downloads."""
        root = Path(self.workdir or Path(tempfile.gettempdir()) / "lfvila-work")
        return root / hashlib.sha1(self.output.rstrip("/").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    url: str
    samples: tuple[PlannedSample, ...]
    min_clips: int  # PlanConfig.min_clips: the fewest clips a sample trimmed to a short video keeps
    retry_failed: bool = False  # samples once trimmed to a short video are downloaded again
    # (file, stamp) of each sample file the journal recorded: one changed since is redone
    stamps: tuple[tuple[str, str], ...] = ()


@dataclass
class FetchOutcome:
    """What the fetch step hands to the cut step."""

    job: VideoJob
    node_id: str | None
    fetched: Fetched | None = None
    # planned key -> the media end its existing file was fitted to (inf: not trimmed)
    existing: dict[str, float] = field(default_factory=dict)
    # planned key -> the probe of its existing file (checked against the plan)
    probes: dict[str, Probe] = field(default_factory=dict)
    failure: Failure | None = None
    fetched_bytes: int = 0  # from the network for this video, failed attempts included


def fit_to_media(sample: PlannedSample, media_end: float, min_clips: int,
                 tol: float = END_TOLERANCE) -> tuple[PlannedSample | None, list[Failure]]:
    """Drop the clips that end after the video does; keep the run if long enough."""
    keep = [c for c in sample.clips if c.end <= media_end + tol]
    if len(keep) == len(sample.clips):
        return sample, []
    # by end, not position: benchmark clips may overlap, so a clip past the end can sit
    # between clips that are kept
    fails = [Failure(sample.video_id, c.clip_id, Stage.PROBE.value, FailureCode.PAST_MEDIA_END,
                     f"clip span {c.start:.3f}-{c.end:.3f} s is beyond the end of the video "
                     f"data at {media_end:.3f} s (video shorter than its metadata, or truncated)")
             for c in sample.clips if c.end > media_end + tol]
    if len(keep) < min_clips:
        return None, fails
    key = sample_key(sample.video_id, keep[0].k, keep[-1].k)
    return replace(sample, key=key, clips=tuple(keep), end=min(max(c.end for c in keep), media_end)), fails


def fit_rel(video_id: str, planned_key: str) -> str:
    """Where a sample trimmed to a short video records that video's end: its file has the
    fitted key, which only the end decides, so a rerun can find it without a download."""
    return f"_fit/{video_id[:2]}/{planned_key}.json"


def file_stamp(info: dict) -> str:
    """Size and modification time (or ETag) of an output file as its filesystem lists it:
    a file truncated or overwritten after it was journaled has another stamp."""
    when = next((info[k] for k in ("mtime", "ETag", "etag", "LastModified", "updated") if info.get(k)), "")
    return f"{info['size']}:{when}"


def reuse_problem(found: Probe, sample: PlannedSample, cut: CutConfig) -> str | None:
    """Why an existing sample file does not match its plan, or None when it does: cut
    short (a truncated file has fewer packets), another frame size or rate. Compares
    packet counts, decodes nothing."""
    planned = sample.end - sample.start
    slack = END_TOLERANCE + 1.0 / cut.fps  # the last clip may end this far past the media
    if found.duration < planned - slack:
        return f"lasts {found.duration:.3f} s of the {planned:.3f} s planned"
    if cut.copy:
        return None
    if found.height != cut.height:
        return f"is {found.height} px high, not {cut.height}"
    frames = planned * cut.fps
    if not frames - slack * cut.fps <= (found.nb_frames or 0) <= frames + 2:
        return f"has {found.nb_frames} frames, not the {frames:.0f} of {cut.fps:g} fps"
    return None


def _probe_output(out: OutputDir, rel: str) -> Probe:
    if out.is_local:
        return probe_written(out.local_path(rel))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "v.mp4"
        out.fs.get_file(out.path(rel), str(local))
        return probe_written(local)


def reusable(out: OutputDir, sample: PlannedSample, ctx: TaskContext,
             stamps: dict[str, str]) -> Probe | None:
    """The probe of the sample's file when it can be reused, else None (no file, or one
    changed since it was journaled, unreadable or unlike its plan: removed, so the sample
    is made again and no reader ever gets the bad file)."""
    rel = out.video_rel(sample.video_id, sample.key)
    try:
        info = out.fs.info(out.path(rel))
    except FileNotFoundError:
        return None
    recorded = stamps.get(rel)
    if recorded is None or recorded == file_stamp(info):
        try:
            found = _probe_output(out, rel)
        except MediaError:
            found = None
        if found is not None and reuse_problem(found, sample, ctx.cut) is None:
            return found
    out.fs.rm(out.path(rel))
    return None


def finished_until(out: OutputDir, sample: PlannedSample, min_clips: int, ctx: TaskContext,
                   stamps: dict[str, str], retry_trimmed: bool = False) -> tuple[float, Probe | None] | None:
    """The media end an already written sample was fitted to (inf when it was not
    trimmed) and its file's probe (None: trimmed to nothing), or None when the sample
    still has to be made."""
    found = reusable(out, sample, ctx, stamps)
    if found is not None:
        return math.inf, found
    marker = fit_rel(sample.video_id, sample.key)
    if retry_trimmed or not out.exists(marker):
        return None
    end = float(json.loads(out.fs.cat_file(out.path(marker)))["media_end"])
    fit, _ = fit_to_media(sample, end, min_clips)
    if fit is None:
        return end, None
    found = reusable(out, fit, ctx, stamps)
    return None if found is None else (end, found)


def fetch_video(job: VideoJob, ctx: TaskContext) -> FetchOutcome:
    """Download what the video's unfinished samples need."""
    out = OutputDir(ctx.output)
    stamps = dict(job.stamps)
    outcome = FetchOutcome(job, None)  # the executor sets the node
    for s in job.samples:
        done = finished_until(out, s, job.min_clips, ctx, stamps, job.retry_failed)
        if done is not None:
            outcome.existing[s.key] = done[0]
            if done[1] is not None:
                outcome.probes[s.key] = done[1]
    todo = [s for s in job.samples if s.key not in outcome.existing]
    if not todo:
        return outcome
    try:
        outcome.fetched = Fetcher(ctx.fetch, ctx.scratch())(
            job.video_id, job.url, [(s.start, s.end) for s in todo])
        outcome.fetched_bytes = outcome.fetched.wire_bytes
    except FetchError as e:
        outcome.failure = Failure(job.video_id, None, Stage.DOWNLOAD.value, e.code, e.reason, e.permanent)
        outcome.fetched_bytes = e.wire_bytes
    return outcome


def _existing_row(out: OutputDir, sample: PlannedSample, found: Probe, ctx: TaskContext) -> dict:
    rel = out.video_rel(sample.video_id, sample.key)
    return manifest_row(sample, rel, found, out.fs.info(out.path(rel))["size"], ctx.source)


@dataclass
class CutTally:
    """What a cut task has finished of its video so far, reported after each step (a
    group of samples cut, a section that failed) so that the build's progress moves
    while a long video is cut, not only when all of it is done."""

    video_id: str
    report: Callable[[CutProgress], None] | None = None
    samples: int = 0
    written: int = 0
    seconds: float = 0.0

    def add(self, samples: int, rows: Iterable[dict] = (), cut: bool = True) -> None:
        """`samples` planned samples finished, `rows` of them written (`cut`: by this task,
        so their seconds count as cut; else reused from an earlier run)."""
        rows = list(rows)
        self.samples += samples
        self.written += len(rows)
        self.seconds += sum(r["end"] - r["start"] for r in rows) if cut else 0.0
        if self.report is not None and samples:
            self.report(CutProgress(self.video_id, self.samples, self.written, round(self.seconds, 3)))


def cut_video(outcome: FetchOutcome, ctx: TaskContext,
              report: Callable[[CutProgress], None] | None = None) -> VideoResult:
    """Cut every unfinished sample of the video from its downloaded sections, telling
    `report` how far it is after each group of samples."""
    job, out = outcome.job, OutputDir(ctx.output)
    rows: list[dict] = []
    failures: list[Failure] = []
    downloads: dict[str, int] = {}
    tally = CutTally(job.video_id, report)
    try:
        if outcome.failure is not None:
            status = FAILED if outcome.failure.permanent else RETRY
            return VideoResult(job.video_id, status, [], [outcome.failure.to_row()], {},
                               fetched_bytes=outcome.fetched_bytes)
        for s in job.samples:
            if s.key in outcome.existing:
                fit, fails = fit_to_media(s, outcome.existing[s.key], job.min_clips)
                failures.extend(fails)
                if fit is not None:
                    rows.append(_existing_row(out, fit, outcome.probes[s.key], ctx))
                    downloads[fit.key] = 0
        tally.add(len(outcome.existing), rows, cut=False)  # files of an earlier run
        if outcome.fetched is not None:
            todo = [s for s in job.samples if s.key not in outcome.existing]
            _cut_all(job, todo, outcome.fetched, out, ctx, rows, failures, downloads, tally)
        transient = any(not f.permanent for f in failures)
        status = RETRY if transient else DONE
        stamps = {r["video"]: file_stamp(out.fs.info(out.path(r["video"]))) for r in rows}
        return VideoResult(job.video_id, status, rows, [f.to_row() for f in failures], downloads,
                           node=outcome.node_id, stamps=stamps, fetched_bytes=outcome.fetched_bytes)  # cut where it was fetched
    except OSError as e:
        if not is_output_error(e):
            raise
        return VideoResult(job.video_id, RETRY, [], [Failure(job.video_id, None, Stage.WRITE.value,
                                                             FailureCode.OUTPUT_FULL, str(e), False).to_row()], {},
                           fetched_bytes=outcome.fetched_bytes)  # fetched all the same
    finally:
        if outcome.fetched is not None and not outcome.fetched.local:
            shutil.rmtree(ctx.scratch() / job.video_id, ignore_errors=True)


def _cut_all(job: VideoJob, todo: list[PlannedSample], fetched: Fetched, out: OutputDir,
             ctx: TaskContext, rows: list[dict], failures: list[Failure],
             downloads: dict[str, int], tally: CutTally) -> None:
    share = _byte_shares(fetched, todo)
    by_section: dict[Section, list[PlannedSample]] = {}
    for sample in todo:
        section = next((sec for sec in fetched.sections
                        if sec.covers(sample.start, sample.end)), None)
        if section is None:  # cannot happen with sections made from these samples
            raise AssertionError(f"no downloaded section covers {sample.key}")
        by_section.setdefault(section, []).append(sample)
    for section, samples in by_section.items():
        try:  # a section we downloaded is an MP4 we wrote, most often: read from its boxes
            media = (probe if fetched.local else probe_written)(Path(section.path))
        except MediaError as e:
            where = "" if fetched.local else f"downloaded section {section.start:.3f}-{section.end:.3f} s: "
            failures.extend(Failure(job.video_id, None, Stage.PROBE.value, FailureCode.PROBE_FAILED,
                                    f"{where}{e} (corrupt file, or the video ends before "
                                    f"{s.start:.3f} s)", True, key=s.key) for s in samples)
            tally.add(len(samples))
            continue
        fitted = []
        for sample in samples:
            fit, fails = fit_to_media(sample, media.end, job.min_clips)
            failures.extend(fails)
            if fails:  # trimmed: its file, if any, has another key (see finished_until)
                out.write_json(fit_rel(sample.video_id, sample.key), {"media_end": media.end})
            if fit is not None:
                fitted.append((sample.key, fit))
        tally.add(len(samples) - len(fitted))  # trimmed away whole by the video's end
        for group in adjacent_groups(fitted):
            written = len(rows)
            for planned_key, fit, result in _cut_group(Path(section.path), group, media, out, ctx):
                full = isinstance(result, MediaError) and (
                    str(result) if is_output_error(result) else output_space_problem(out))
                if full:  # the disk, not the video
                    failures.append(Failure(job.video_id, None, Stage.WRITE.value, FailureCode.OUTPUT_FULL,
                                            full, False, key=fit.key))
                elif isinstance(result, MediaError):
                    failures.append(Failure(job.video_id, None, Stage.CUT.value, FailureCode.CUT_FAILED, str(result),
                                            True, key=fit.key))
                else:
                    rows.append(result)
                    downloads[fit.key] = share.get(planned_key, 0)
            tally.add(len(group), rows[written:])


GROUP_GAP = 5.0   # samples closer than this share one decode pass (cheaper than a re-seek)
GROUP_MAX = 8     # outputs per ffmpeg run


def adjacent_groups(samples: list[tuple[str, PlannedSample]]) -> list[list[tuple[str, PlannedSample]]]:
    """Runs of (planned key, sample), in time order, close enough to cut in one pass."""
    groups: list[list[tuple[str, PlannedSample]]] = []
    for item in sorted(samples, key=lambda kv: kv[1].start):
        if groups and len(groups[-1]) < GROUP_MAX and \
                item[1].start - groups[-1][-1][1].end <= GROUP_GAP:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _cut_group(src: Path, group: list[tuple[str, PlannedSample]], media: Probe, out: OutputDir,
               ctx: TaskContext) -> list[tuple[str, PlannedSample, dict | MediaError]]:
    """Cut a group of samples from one file; a manifest row or an error per sample."""
    rels = [out.video_rel(fit.video_id, fit.key) for _, fit in group]
    scratch = ctx.scratch()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        dsts = [out.local_path(rel) if out.is_local else Path(tmp) / f"{i}.mp4"
                for i, rel in enumerate(rels)]
        spans = [Span(fit.start, min(fit.end, media.end), dst) for (_, fit), dst in zip(group, dsts)]
        done = []
        for (key, fit), rel, dst, res in zip(group, rels, dsts, cut_spans(src, spans, ctx.cut, media)):
            if isinstance(res, MediaError):
                done.append((key, fit, res))
                continue
            size = dst.stat().st_size
            if not out.is_local:
                out.put_file(dst, rel)
            done.append((key, fit, manifest_row(fit, rel, res, size, ctx.source)))
        return done


def _byte_shares(fetched: Fetched, samples: list[PlannedSample]) -> dict[str, int]:
    """Split each downloaded section's bytes over its samples by duration."""
    shares: dict[str, int] = {}
    for sec in fetched.sections:
        if fetched.local:
            continue
        inside = [s for s in samples if sec.covers(s.start, s.end)]
        total = sum(s.duration for s in inside) or 1.0
        size = Path(sec.path).stat().st_size if Path(sec.path).exists() else 0
        for s in inside:
            shares[s.key] = int(size * s.duration / total)
    return shares
