"""The text stage for sources without HD-VILA spans: subtitle words → sentences → clips,
made the way HD-VILA made its clips (one sentence per clip, short sentences merged), so
the same long-form grouping (`plan.group_runs`) turns them into samples."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from pysbd.languages import LANGUAGE_CODES

from lfvila_data.plan.join import PlanConfig, count_drop, group_runs
from lfvila_data.records import (
    Clip,
    Failure,
    FailureCode,
    PlannedSample,
    Stage,
    TimedText,
    VideoMeta,
    words_of,
)
from lfvila_data.text.language import language_mismatch
from lfvila_data.text.sentences import Sentence, SentenceConfig, split_sentences
from lfvila_data.text.subtitles import SubtitleError, Word, detect_kind, parse_subtitles

END_SLACK = 1.0  # seconds subtitles may run past the video's reported duration
# languages pysbd has rules for (others split with its English rules)
_PYSBD_LANGS = frozenset(LANGUAGE_CODES)


@dataclass(frozen=True)
class ClipConfig:
    """Clip durations. HD-VILA's clips average 13.4 s: sentences shorter than
    `min_duration` are merged with the next ones, up to `max_duration`."""

    min_duration: float = 8.0
    max_duration: float = 20.0
    join_gap: float = 1.5  # sentences further apart than this are never merged


def count_words(words: list[Word]) -> int:
    """Words as the manifest's texts count them (a cue without word timings is one Word)."""
    return sum(words_of(w.text) for w in words)


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
                         stats: Counter | None = None, *, kind: str | None = None,
                         duration: float | None = None,
                         check_language: bool = True) -> tuple[list[PlannedSample], list[Failure]]:
    """Samples of one video from its subtitle file; a bad file is a ledger row.

    `kind` ("subtitles" or "auto_captions") is what the source says the track is; without
    it the file's own markup decides. `duration` (seconds, when known) drops cues past the
    end of the video with a ledger row instead of planning clips that cannot be cut. With
    `check_language`, a file whose text is clearly in another language than `language` is
    rejected (a `.en.vtt` in French would teach the model the wrong pairs)."""
    try:
        words = parse_subtitles(subtitles, fmt)
    except SubtitleError as e:
        return [], [e.to_failure(video_id)]
    if check_language and language:
        wrong = language_mismatch(" ".join(w.text for w in words), language)
        if wrong:
            dropped = count_words(words)
            if stats is not None:
                stats["words_parsed"] += dropped
            count_drop(stats, "wrong_language", words=dropped,
                       seconds=words[-1].end - words[0].start if words else 0.0)
            return [], [Failure(video_id, None, Stage.TEXT.value, FailureCode.WRONG_LANGUAGE, wrong)]
    if kind is None:
        kind = "auto_captions" if detect_kind(subtitles) == "auto_captions" else "subtitles"
    return plan_from_words(video_id, url, words, kind, language, plan, clip_cfg, sentence_cfg,
                           stats, duration=duration)


def plan_from_words(video_id: str, url: str, words: list[Word], text_source: str,
                    language: str | None, plan: PlanConfig, clip_cfg: ClipConfig = ClipConfig(),
                    sentence_cfg: SentenceConfig = SentenceConfig(), stats: Counter | None = None,
                    *, duration: float | None = None) -> tuple[list[PlannedSample], list[Failure]]:
    """Samples of one video from its timed words (subtitles or speech recognition); `stats`
    gets the words parsed, in samples and dropped by reason, which add up (DROP_REASONS)."""
    failures: list[Failure] = []
    if stats is not None:
        stats["words_parsed"] += count_words(words)
    if duration is not None and words and words[-1].end > duration + END_SLACK:
        past = [w for w in words if w.end > duration + END_SLACK]
        count_drop(stats, "past_video_end", words=count_words(past),
                   seconds=max(w.end for w in past) - duration)
        failures.append(Failure(video_id, None, Stage.TEXT.value, FailureCode.SUBTITLES_PAST_END,
                                f"{len(past)} of {len(words)} subtitle words lie past the end of the "
                                f"video ({past[0].start:.1f} s onwards, video is {duration:.1f} s): "
                                f"subtitles longer than the video; they were dropped"))
        words = [w for w in words if w.end <= duration + END_SLACK]
    if language and sentence_cfg.language != language.split("-")[0] and language.split("-")[0] in _PYSBD_LANGS:
        sentence_cfg = replace(sentence_cfg, language=language.split("-")[0])
    sentences = split_sentences(words, sentence_cfg)
    clips = sentences_to_clips(sentences, video_id, clip_cfg)
    if stats is not None:
        stats["clips_total"] += len(clips)
    samples, fails = group_runs(VideoMeta(video_id, url, tuple(clips)),
                                {c.clip_id: c.text for c in clips}, plan, stats)
    failures += fails
    samples = [replace(s, text_source=text_source, language=language) for s in samples]
    if not samples and not fails:
        what = "speech recognition gives" if text_source == "asr" else "subtitles give"
        failures.append(Failure(video_id, None, Stage.TEXT.value, FailureCode.NO_RUN,
                                f"{what} {len(clips)} clips, no run of {plan.min_clips} "
                                f"consecutive clips within {plan.max_gap} s of each other"))
    return samples, failures
