"""Sentence splitting: punctuation when present, pauses and a duration cap otherwise."""
from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.text.sentences import (
    Sentence,
    SentenceConfig,
    is_punctuated,
    split_by_pauses,
    split_long,
    split_sentences,
)
from lfvila_data.text.subtitles import Word, parse_subtitles
from tests.support.realdata import SUBTITLES as REAL


def _stream(text: str, step: float = 0.3, pauses: dict[int, float] | None = None) -> list[Word]:
    """Words 0.25 s long every `step` s; `pauses` adds extra silence before word i."""
    words, t = [], 0.0
    for i, token in enumerate(text.split()):
        t += (pauses or {}).get(i, 0.0)
        words.append(Word(token, t, t + 0.25))
        t += step
    return words


def _assert_partition(words: Sequence[Word], sentences: list[Sentence]) -> None:
    assert [w for s in sentences for w in s.words] == list(words)
    for s in sentences:
        assert s.words and s.text == " ".join(w.text for w in s.words)
        assert (s.start, s.end) == (s.words[0].start, s.words[-1].end)


def test_punctuated_text_splits_at_sentence_ends() -> None:
    words = _stream("Hello there. Mr. Smith went to Washington. Did he? Yes!")
    sentences = split_sentences(words)
    assert [s.text for s in sentences] == [
        "Hello there.", "Mr. Smith went to Washington.", "Did he?", "Yes!"]
    assert sentences[1].start == words[2].start and sentences[1].end == words[6].end
    _assert_partition(words, sentences)


def test_punctuated_split_ignores_pauses() -> None:
    words = _stream("One long sentence that pauses here and goes on. Then another.", pauses={4: 3.0})
    assert [s.text for s in split_sentences(words)] == [
        "One long sentence that pauses here and goes on.", "Then another."]


def test_unpunctuated_text_splits_at_pauses() -> None:
    words = _stream("so yeah my name is travis what i'm going to do is talk", pauses={6: 1.2, 9: 0.5})
    assert not is_punctuated(words)
    sentences = split_sentences(words, SentenceConfig(pause=0.8))
    assert [s.text for s in sentences] == [
        "so yeah my name is travis", "what i'm going to do is talk"]
    _assert_partition(words, sentences)


def test_unpunctuated_text_respects_max_duration() -> None:
    words = _stream(" ".join(f"w{i}" for i in range(100)), step=0.3, pauses={37: 0.4})
    sentences = split_sentences(words, SentenceConfig(pause=1.0, max_duration=10.0))
    assert all(s.end - s.start <= 10.0 for s in sentences)
    assert "w36" in [s.words[-1].text for s in sentences]  # the widest gap is cut first
    _assert_partition(words, sentences)


def test_split_helpers() -> None:
    words = _stream("a b c d", pauses={2: 2.0})
    assert [[w.text for w in g] for g in split_by_pauses(words, 1.0)] == [["a", "b"], ["c", "d"]]
    assert split_long(words[:1], 0.1) == [words[:1]]


def test_is_punctuated() -> None:
    assert is_punctuated(_stream("This is it. Really."))
    assert not is_punctuated(_stream("this is it really"))
    assert not is_punctuated([])
    long_asr = _stream(" ".join(["word"] * 200) + " end.")
    assert not is_punctuated(long_asr)


def test_punctuator_hook_gives_sentence_ends() -> None:
    words = _stream("so yeah thanks for coming today we will talk about batteries")

    def punctuate(ws: Sequence[Word]) -> str:
        return "So yeah, thanks for coming today. We will talk about batteries."

    sentences = split_sentences(words, SentenceConfig(punctuator=punctuate))
    assert [s.text for s in sentences] == [
        "so yeah thanks for coming today", "we will talk about batteries"]
    _assert_partition(words, sentences)


def test_empty_stream() -> None:
    assert split_sentences([]) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b.", "Mr.", "why?", "ok!", "x,", "“Quote.”", "e.g."]),
                          st.floats(0, 3)), min_size=1, max_size=60),
       st.floats(0.1, 2.0), st.floats(0.5, 20.0))
def test_every_word_in_exactly_one_sentence(tokens: list[tuple[str, float]], pause: float,
                                            max_duration: float) -> None:
    words, t = [], 0.0
    for text, gap in tokens:
        t += gap
        words.append(Word(text, t, t + 0.2))
        t += 0.2
    _assert_partition(words, split_sentences(words, SentenceConfig(pause=pause, max_duration=max_duration)))


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real subtitles not present")
@pytest.mark.parametrize("name, language, punctuated", [
    ("yt-auto_en_macbook-air-cooling.en.vtt", "en", False),
    ("yt-auto_en_does-fast-charging-hurt-the-battery.vtt", "en", True),
    ("yt-manual_en_upwork-proposals.en.vtt", "en", True),
    ("jlm_fr_2017-02-21.faire-la-revolution-fiscale-edcc15.fr.vtt", "fr", True),
])
def test_real_files_partition(name: str, language: str, punctuated: bool) -> None:
    words = parse_subtitles((REAL / name).read_bytes())
    assert is_punctuated(words) is punctuated
    sentences = split_sentences(words, SentenceConfig(language=language))
    _assert_partition(words, sentences)
    assert all(s.end - s.start <= 15.0 or len(s.words) == 1 for s in sentences)
    if punctuated:
        assert sum(s.text.endswith((".", "?", "!")) for s in sentences) > 0.7 * len(sentences)


def test_numbers_before_a_full_stop_stay_in_their_sentence() -> None:
    # pysbd alone reads "number 1. This" as a list item and splits before "1."
    words = _stream("This is sentence number 1. This is sentence number 2. It was 5 p.m. when we left.")
    assert [s.text for s in split_sentences(words)] == [
        "This is sentence number 1.", "This is sentence number 2.", "It was 5 p.m. when we left."]
