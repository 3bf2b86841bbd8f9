"""The text stage for sources without HD-VILA spans: subtitle words → sentences → clips,
made the way HD-VILA made its clips (one sentence per clip, short sentences merged), so
the same long-form grouping (`plan.group_runs`) turns them into samples."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .plan import PlanConfig, group_runs
from .records import Clip, Failure, PlannedSample, Stage, TimedText
from .sentences import Sentence, SentenceConfig, split_sentences
from .source_hdvila import VideoMeta
from .subtitles import SubtitleError, detect_kind, parse_subtitles


@dataclass(frozen=True)
class ClipConfig:
    """Clip durations. HD-VILA's clips average 13.4 s: sentences shorter than
    `min_duration` are merged with the next ones, up to `max_duration`."""

    min_duration: float = 8.0
    max_duration: float = 20.0
    join_gap: float = 1.5  # sentences further apart than this are never merged


def sentences_to_clips(sentences: list[Sentence], video_id: str, cfg: ClipConfig) -> list[Clip]:
    """Consecutive sentences merged into clips (k from 1); a clip spans its words."""
    clips: list[Clip] = []
    group: list[Sentence] = []

    def close() -> None:
        if group:
            k = len(clips) + 1
            clips.append(Clip(f"{video_id}.{k}.mp4", k, group[0].start, group[-1].end,
                              " ".join(s.text for s in group),
                              tuple(TimedText(s.text, s.start, s.end) for s in group)))
            group.clear()

    for s in sentences:
        if group and (s.start - group[-1].end > cfg.join_gap
                      or s.end - group[0].start > cfg.max_duration
                      or group[-1].end - group[0].start >= cfg.min_duration):
            close()
        group.append(s)
    close()
    return clips


def plan_subtitled_video(video_id: str, url: str, subtitles: bytes, fmt: str | None,
                         language: str | None, plan: PlanConfig, clip_cfg: ClipConfig = ClipConfig(),
                         sentence_cfg: SentenceConfig = SentenceConfig(),
                         stats: Counter | None = None) -> tuple[list[PlannedSample], list[Failure]]:
    """Samples of one video from its subtitle file; a bad file is a ledger row."""
    try:
        words = parse_subtitles(subtitles, fmt)
    except SubtitleError as e:
        return [], [e.to_failure(video_id)]
    kind = detect_kind(subtitles)
    sentences = split_sentences(words, sentence_cfg)
    clips = sentences_to_clips(sentences, video_id, clip_cfg)
    if stats is not None:
        stats["clips_total"] += len(clips)
    meta = VideoMeta(video_id, url, tuple(Clip(c.clip_id, c.k, c.start, c.end) for c in clips))
    samples, failures = group_runs(meta, {c.clip_id: c.text for c in clips}, plan, stats)
    text_source = "auto_captions" if kind == "auto_captions" else "subtitles"
    by_id = {c.clip_id: c for c in clips}  # group_runs keeps clip texts, not sentences
    samples = [PlannedSample(s.key, s.video_id, s.url, s.start, s.end,
                             tuple(by_id[c.clip_id] for c in s.clips), text_source, language)
               for s in samples]
    if not samples and not failures:
        failures.append(Failure(video_id, None, Stage.TEXT.value,
                                f"subtitles give {len(clips)} clips, no run of {plan.min_clips} "
                                f"consecutive clips within {plan.max_gap} s of each other"))
    return samples, failures
