"""The text stage for sources without HD-VILA spans: subtitle words → sentences → clips,
made the way HD-VILA made its clips (one sentence per clip, short sentences merged), so
the same long-form grouping (`plan.group_runs`) turns them into samples."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from pysbd.languages import LANGUAGE_CODES

from lfvila_data.inputs import require
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
from lfvila_data.text.sentences import Sentence, SentenceConfig, split_long, split_sentences
from lfvila_data.text.subtitles import SubtitleError, Word, detect_kind, parse_subtitles

END_SLACK = 1.0  # seconds subtitles may run past the video's reported duration
# languages pysbd has rules for (others split with its English rules)
_PYSBD_LANGS = frozenset(LANGUAGE_CODES)


# No clip is shorter than this many frames of the sample video (3 frames at the default
# 3 fps is 1 s): a clip of 0-1 frames pairs its text with nothing to see.
MIN_FRAMES = 3


@dataclass(frozen=True)
class ClipConfig:
    """Clip durations. HD-VILA's clips average 13.4 s: sentences shorter than
    `min_duration` are merged with the next ones, up to `max_duration`, never across a
    pause longer than `join_gap` (a pause that long is usually a change of speaker or
    scene). `fps` is the sample videos' frame rate (`--fps`): a clip shorter than
    MIN_FRAMES frames is merged into a neighbour or dropped."""

    min_duration: float = 8.0
    max_duration: float = 20.0
    join_gap: float = 1.5
    fps: float = 3.0  # the cutter's default --fps

    def __post_init__(self) -> None:
        require(0 < self.min_duration <= self.max_duration,
                f"need 0 < min clip seconds <= max clip seconds, got {self.min_duration}, {self.max_duration}")
        require(self.join_gap >= 0, f"--max-join-gap must be >= 0 seconds, got {self.join_gap}")
        require(self.fps > 0 and self.shortest <= self.max_duration,
                f"at {self.fps} fps a clip of at most {self.max_duration} s cannot hold {MIN_FRAMES} "
                f"frames; raise --fps or --max-clip-seconds")

    @property
    def shortest(self) -> float:
        """Seconds of the shortest clip kept: MIN_FRAMES frames at `fps`."""
        return MIN_FRAMES / self.fps


def count_words(words: list[Word]) -> int:
    """Words as the manifest's texts count them (whitespace-separated, whatever a Word holds)."""
    return sum(words_of(w.text) for w in words)


def drop_unaligned(words: list[Word], max_duration: float,
                   stats: Counter | None = None) -> list[Word]:
    """The words that can be placed in clips of at most `max_duration`; the others are
    counted as `unaligned_text`.

    A cue without word timings has its words laid end to end at one pace (the subtitle
    parser spreads them in proportion to their length). When such a stretch lasts longer
    than a clip may, where each of its words was spoken is unknown (a 250 s cue of 11
    words): no cut of it into clips that fit would say which footage the text goes with.
    A word with its own timing is a stretch of one, dropped only when it alone is too long."""
    kept: list[Word] = []
    for stretch in _even_stretches(words):
        if stretch[-1].end - stretch[0].start > max_duration:
            count_drop(stats, "unaligned_text", words=count_words(stretch),
                       seconds=stretch[-1].end - stretch[0].start)
        else:
            kept.extend(stretch)
    return kept


def _even_stretches(words: list[Word]) -> list[list[Word]]:
    """Consecutive words that touch and share one pace (seconds per character)."""
    stretches: list[list[Word]] = []
    for w in words:
        if stretches and _continues(stretches[-1][-1], w):
            stretches[-1].append(w)
        else:
            stretches.append([w])
    return stretches


def _continues(prev: Word, word: Word) -> bool:
    def pace(w: Word) -> float:
        return (w.end - w.start) / max(len(w.text), 1)

    return (math.isclose(prev.end, word.start, abs_tol=1e-6)
            and math.isclose(pace(prev), pace(word), rel_tol=1e-6, abs_tol=1e-9))


def sentences_to_clips(sentences: list[Sentence], video_id: str, cfg: ClipConfig,
                       stats: Counter | None = None) -> list[Clip]:
    """Consecutive sentences merged into clips (k from 1); a clip spans its words.

    A sentence longer than `max_duration` is first cut at its widest pauses (its words
    must each fit: `drop_unaligned`); a clip shorter than `cfg.shortest` is merged into a
    neighbour or dropped and counted as `short_clip`; `stats` gets `clips_total`, the
    clips made with those dropped."""
    pieces = [p for s in sentences for p in _fit(s, cfg)]
    groups, short = _merge_short(_group(pieces, cfg), cfg)
    for g in short:
        count_drop(stats, "short_clip", clips=1, words=sum(count_words(list(s.words)) for s in g),
                   seconds=g[-1].end - g[0].start)
    if stats is not None:
        stats["clips_total"] += len(groups) + len(short)
    return [Clip(f"{video_id}.{k}.mp4", k, g[0].start, g[-1].end, " ".join(s.text for s in g),
                 tuple(TimedText(s.text, s.start, s.end) for s in g))
            for k, g in enumerate(groups, 1)]


def _fit(sentence: Sentence, cfg: ClipConfig) -> list[Sentence]:
    """A sentence in parts that fit a clip, none shorter than a clip should be if it can help."""
    if sentence.end - sentence.start <= cfg.max_duration:
        return [sentence]
    least = min(cfg.min_duration, cfg.max_duration / 2)
    return [Sentence(" ".join(w.text for w in part), part[0].start, part[-1].end, tuple(part))
            for part in split_long(list(sentence.words), cfg.max_duration, least)]


def _group(sentences: list[Sentence], cfg: ClipConfig) -> list[list[Sentence]]:
    """HD-VILA's rule: merge the next sentence while the clip is under `min_duration`,
    the pause before it at most `join_gap` and the clip stays within `max_duration`."""
    groups: list[list[Sentence]] = []
    for s in sentences:
        g = groups[-1] if groups else None
        if (g is None or s.start - g[-1].end > cfg.join_gap or s.end - g[0].start > cfg.max_duration
                or g[-1].end - g[0].start >= cfg.min_duration):
            groups.append([s])
        else:
            g.append(s)
    return groups


def _merge_short(groups: list[list[Sentence]],
                 cfg: ClipConfig) -> tuple[list[list[Sentence]], list[list[Sentence]]]:
    """Clips of fewer than MIN_FRAMES frames go into the nearer neighbour that stays within
    `max_duration` and `join_gap` of them; with none, they are dropped: (kept, dropped)."""
    out: list[list[Sentence]] = []
    dropped: list[list[Sentence]] = []
    carried: list[Sentence] = []  # a short clip joining the next one
    for i, group in enumerate(groups):
        g, carried = carried + group, []
        if g[-1].end - g[0].start >= cfg.shortest:
            out.append(g)
            continue
        nxt = groups[i + 1] if i + 1 < len(groups) else None
        options = []
        if out and g[-1].end - out[-1][0].start <= cfg.max_duration and g[0].start - out[-1][-1].end <= cfg.join_gap:
            options.append((g[0].start - out[-1][-1].end, "previous"))
        if nxt and nxt[-1].end - g[0].start <= cfg.max_duration and nxt[0].start - g[-1].end <= cfg.join_gap:
            options.append((nxt[0].start - g[-1].end, "next"))
        if not options:
            dropped.append(g)
        elif min(options)[1] == "previous":
            out[-1] = out[-1] + g
        else:
            carried = g
    return out, dropped


def plan_subtitled_video(video_id: str, url: str, subtitles: bytes | Path, fmt: str | None,
                         language: str | None, plan: PlanConfig, clip_cfg: ClipConfig = ClipConfig(),
                         sentence_cfg: SentenceConfig = SentenceConfig(),
                         stats: Counter | None = None, *, kind: str | None = None,
                         duration: float | None = None,
                         check_language: bool = True) -> tuple[list[PlannedSample], list[Failure]]:
    """Samples of one video from its subtitle file (bytes, or a path read a window at a
    time); a bad file is a ledger row.

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
    sentences = split_sentences(drop_unaligned(words, clip_cfg.max_duration, stats), sentence_cfg)
    clips = sentences_to_clips(sentences, video_id, clip_cfg, stats)
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
