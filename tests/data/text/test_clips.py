"""Clip lengths: what `--min-clip-seconds`, `--max-clip-seconds`, `--max-join-gap` and
`--fps` guarantee (README, "Building from your own videos"), on hand-written cues and on
every real subtitle file, with every word still accounted for."""
from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from lfvila_data.plan.join import DROP_REASONS, PlanConfig, dropped_by_reason
from lfvila_data.text.clips import MIN_FRAMES, ClipConfig, plan_subtitled_video
from tests.data.text.test_word_account import REAL_FILES, vtt, words_in

# min_clips=1 and a wide max_gap: every clip planning keeps is in a sample, so the
# samples show all clips the text stage made.
SHOW_ALL = PlanConfig(min_clips=1, max_gap=1e9)
SPEECH = "This is a sentence of our talk."  # 7 words


def plan(data: bytes, clip: ClipConfig | None = None, fmt: str = ".vtt"):
    clip = clip or ClipConfig()
    stats: Counter = Counter()
    samples, _ = plan_subtitled_video("v", "u", data, fmt, None, SHOW_ALL, clip, stats=stats)
    clips = [c for s in samples for c in s.clips]
    dropped = dropped_by_reason(stats)
    assert set(dropped) <= set(DROP_REASONS)
    assert stats["words_in_samples"] == words_in(samples)
    assert stats["words_in_samples"] + sum(d["words"] for d in dropped.values()) == stats["words_parsed"]
    assert len(clips) + sum(d["clips"] for d in dropped.values()) == stats["clips_total"]
    return clips, dropped, stats


def test_a_long_cue_without_word_timings_is_dropped_as_unaligned_text():
    # A debate cue held on screen for 250 s with 11 words: where they were said is unknown.
    stale = "Et nous avons dit que cela ne suffirait pas du tout."
    data = vtt([(0, 9, SPEECH), (10, 260, stale), (262, 271, SPEECH)])
    clips, dropped, stats = plan(data)
    assert [c.text for c in clips] == [SPEECH, SPEECH]
    assert dropped == {"unaligned_text": {"runs": 0, "clips": 0, "words": 11, "hours": round(250 / 3600, 6)}}
    assert stats["words_parsed"] == 25


def auto_captions(start: float, end: float, onsets: list[float], words: list[str]) -> bytes:
    """One YouTube automatic-caption cue whose words carry their own onsets."""
    def t(s: float) -> str:
        ms = round(s * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    assert onsets[0] == start
    line = words[0] + "".join(f"<{t(o)}><c> {w}</c>" for o, w in zip(onsets[1:], words[1:]))
    return f"WEBVTT\nKind: captions\nLanguage: en\n\n{t(start)} --> {t(end)}\n{line}\n".encode()


def test_a_long_cue_with_word_timings_is_split_so_every_clip_fits():
    # The same 250 s cue, but its 11 words carry their own onsets: one sentence said at a
    # steady pace over 14 s. With --max-clip-seconds 10 it must become clips of <= 10 s
    # (the sentence stage alone caps sentences at 15 s), every word kept.
    words = ["We", "will", "now", "talk", "about", "the", "fiscal", "revolution", "in", "France", "today."]
    onsets = [100 + 1.4 * i for i in range(len(words))]
    clip = ClipConfig(min_duration=5.0, max_duration=10.0)
    clips, dropped, stats = plan(auto_captions(100, 350, onsets, words), clip)
    assert len(clips) >= 2 and all(c.end - c.start <= 10.0 for c in clips)
    assert " ".join(c.text for c in clips).split() == words
    assert dropped == {} and stats["words_in_samples"] == 11


def test_a_one_word_clip_joins_its_neighbour_or_is_dropped():
    # "Okay." lasts 0.06 s: 0-1 frames at 3 fps. Half a second after a clip it joins that
    # clip; 5 s from any other text it is dropped and counted.
    data = vtt([(0, 9, SPEECH), (9.5, 9.56, "Okay."), (15, 24, SPEECH), (29, 29.06, "Okay."),
                (34, 43, SPEECH)])
    clips, dropped, stats = plan(data)
    assert [c.text for c in clips] == [f"{SPEECH} Okay.", SPEECH, SPEECH]
    assert (clips[0].start, clips[0].end) == (0, 9.56)
    assert dropped == {"short_clip": {"runs": 0, "clips": 1, "words": 1, "hours": round(0.06 / 3600, 6)}}
    assert stats["clips_total"] == 4


def test_the_shortest_clip_follows_the_frame_rate():
    # 0.5 s of speech alone: kept at 30 fps (15 frames), dropped at 3 fps (1-2 frames).
    data = vtt([(0, 9, SPEECH), (20, 20.5, "Right."), (31, 40, SPEECH)])
    assert [c.text for c in plan(data, ClipConfig(fps=30.0))[0]] == [SPEECH, "Right.", SPEECH]
    assert "short_clip" in plan(data, ClipConfig(fps=3.0))[1]
    with pytest.raises(ValueError, match="frames"):
        ClipConfig(max_duration=2.0, min_duration=1.0, fps=1.0)


def assert_clip_guarantees(clips, cfg: ClipConfig) -> None:
    """What the README promises about every clip of a video, in order."""
    for i, c in enumerate(clips):
        assert c.end - c.start <= cfg.max_duration, c
        assert c.end - c.start >= MIN_FRAMES / cfg.fps, c
        sentences = c.timed_sentences()
        assert c.start == sentences[0].start and c.end == sentences[-1].end
        assert all(b.start - a.end <= cfg.join_gap for a, b in pairwise(sentences)), c
        if c.end - c.start < cfg.min_duration and i + 1 < len(clips):
            nxt = clips[i + 1]
            # shorter than min only where the text pauses or the next sentence would not fit
            assert (nxt.start - c.end > cfg.join_gap
                    or nxt.timed_sentences()[0].end - c.start > cfg.max_duration), (c, nxt)


@pytest.mark.skipif(not REAL_FILES, reason="no real subtitle files")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("cfg", [ClipConfig(), ClipConfig(min_duration=4.0, max_duration=6.0, join_gap=0.5)],
                         ids=["default", "short"])
def test_every_clip_of_a_real_subtitle_file_keeps_the_length_guarantees(path, cfg):
    clips, _, _ = plan(path.read_bytes(), cfg, path.suffix)
    assert_clip_guarantees(clips, cfg)
