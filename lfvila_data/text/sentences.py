"""A word stream to sentences with time spans, the unit the text stage aligns to clips.

Punctuated text (human subtitles, modern auto-captions) is split where a sentence-boundary
library (pysbd, rule-based, offline) puts the ends; its sentences are mapped back onto our
words by character position, so every word keeps its own timing. Unpunctuated ASR text
is split at pauses, and any sentence longer than `max_duration` is cut at its widest gap,
so that no sentence outruns the clips it must describe. A caller may plug in a
punctuation-restoration model (`Punctuator`) to get sentence ends for such text instead.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import pysbd

from lfvila_data.text.subtitles import Word

# words -> the same words as one punctuated string (e.g. a restoration model by path).
Punctuator = Callable[[Sequence[Word]], str]

_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’»)\]]*$")
# pysbd is superlinear in text length; it sees chunks of about this many words, cut at
# unambiguous sentence ends (a long word with a final stop, then a capital).
_CHUNK_WORDS = 200
_SAFE_END = re.compile(r"(?:\w{4,}[.!?…]|[!?])[\"'”’»)\]]*$")
# At least one sentence end per this many words for the text to count as punctuated.
_MAX_WORDS_PER_END = 40


@dataclass(frozen=True)
class Sentence:
    """A sentence and the span of its words in seconds of source time."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...]


@dataclass(frozen=True)
class SentenceConfig:
    """How to split: pysbd language, pause and duration limits, optional punctuator."""

    language: str = "en"
    pause: float = 0.8
    max_duration: float = 15.0
    punctuator: Punctuator | None = None


def is_punctuated(words: Sequence[Word]) -> bool:
    """Whether sentence ends can be trusted: ASR streams have none or a stray few."""
    if not words:
        return False
    ends = sum(1 for w in words if _SENTENCE_END.search(w.text))
    return ends >= 1 and ends * _MAX_WORDS_PER_END >= len(words)


def split_sentences(words: Sequence[Word], config: SentenceConfig = SentenceConfig()) -> list[Sentence]:
    """Sentences covering every word exactly once, in order."""
    words = list(words)
    if not words:
        return []
    if config.punctuator is not None:
        groups = _groups_from_text(words, config.punctuator(words), config.language)
    elif is_punctuated(words):
        groups = _repair_boundaries(
            [g for chunk in _chunks(words)
             for g in _groups_from_text(chunk, " ".join(w.text for w in chunk), config.language)])
    else:
        groups = split_by_pauses(words, config.pause)
    return [_sentence(g) for group in groups for g in split_long(group, config.max_duration)]


def split_by_pauses(words: list[Word], pause: float) -> list[list[Word]]:
    """Groups of words separated by silences of at least `pause` seconds."""
    groups: list[list[Word]] = [[words[0]]]
    for prev, word in pairwise(words):
        if word.start - prev.end >= pause:
            groups.append([])
        groups[-1].append(word)
    return groups


def split_long(words: list[Word], max_duration: float, least: float = 0.0) -> list[list[Word]]:
    """Cut a group at its widest gap until each part lasts at most `max_duration`; cuts
    that leave a part shorter than `least` seconds are taken only when no other exists."""
    if len(words) < 2 or words[-1].end - words[0].start <= max_duration:
        return [words]
    gaps = [words[i + 1].start - words[i].end for i in range(len(words) - 1)]
    cuts = [i for i in range(len(gaps)) if words[i].end - words[0].start >= least
            and words[-1].end - words[i + 1].start >= least] or range(len(gaps))
    # Widest gap wins; among equal gaps the most central cut keeps the parts balanced.
    mid = (len(words) - 2) / 2
    cut = max(cuts, key=lambda i: (gaps[i], -abs(i - mid))) + 1
    return split_long(words[:cut], max_duration, least) + split_long(words[cut:], max_duration, least)


def _sentence(words: list[Word]) -> Sentence:
    return Sentence(" ".join(w.text for w in words), words[0].start, words[-1].end, tuple(words))


# ----------------------------------------------------------------------------- punctuation


def _chunks(words: list[Word], size: int = _CHUNK_WORDS) -> list[list[Word]]:
    """Pieces of about `size` words for pysbd, ended where no sentence can continue."""
    chunks: list[list[Word]] = [[]]
    for i, word in enumerate(words):
        chunks[-1].append(word)
        nxt = words[i + 1].text if i + 1 < len(words) else ""
        safe = bool(_SAFE_END.search(word.text)) and nxt[:1].isupper()
        if nxt and (len(chunks[-1]) >= size and safe or len(chunks[-1]) >= 4 * size):
            chunks.append([])
    return chunks


@lru_cache(maxsize=8)
def _segmenter(language: str) -> pysbd.Segmenter:
    """pysbd compiles its rules per language; building one per call costs more than splitting."""
    return pysbd.Segmenter(language=language, clean=False)


def _groups_from_text(words: list[Word], text: str, language: str) -> list[list[Word]]:
    """Split `text` into sentences and give each word to the sentence holding its first letter."""
    sentences = _segmenter(language).segment(text)
    sentence_of_char = [i for i, s in enumerate(sentences) for ch in s if not ch.isspace()]
    text_chars = "".join(ch for s in sentences for ch in s if not ch.isspace())
    word_chars, first_char = _word_char_index(words)
    owner = _map_chars(word_chars, text_chars)
    groups: list[list[Word]] = []
    last_sentence = -1
    for word, pos in zip(words, first_char):
        mapped = owner[pos] if pos < len(owner) else None
        sentence = sentence_of_char[mapped] if mapped is not None else last_sentence
        if not groups or sentence > last_sentence:
            groups.append([])
            last_sentence = max(sentence, last_sentence)
        groups[-1].append(word)
    return groups


def _repair_boundaries(groups: list[list[Word]]) -> list[list[Word]]:
    """Keep only boundaries after a sentence-final word of the text itself.

    pysbd reads "number 1. Next" as a numbered list and ends the sentence before "1.";
    such a stranded first word goes back to the sentence it ends, and any other boundary
    with no final punctuation before it is undone."""
    fixed: list[list[Word]] = []
    for group in groups:
        group = list(group)
        if fixed and not _SENTENCE_END.search(fixed[-1][-1].text):
            if _SENTENCE_END.search(group[0].text):
                fixed[-1].append(group.pop(0))
            else:
                fixed[-1].extend(group)
                group = []
        if group:
            fixed.append(group)
    return fixed


def _word_char_index(words: list[Word]) -> tuple[str, list[int]]:
    """The words' non-space characters as one string and where each word starts in it."""
    chars: list[str] = []
    first: list[int] = []
    for w in words:
        first.append(len(chars))
        chars.extend(ch for ch in w.text if not ch.isspace())
    return "".join(chars), first


def _map_chars(source: str, target: str) -> list[int | None]:
    """For each character of `source`, its position in `target` (None where unmatched).

    pysbd keeps characters as they are, so the strings are usually equal; a punctuation
    model may add or change some, so fall back to an alignment that tolerates edits."""
    if source == target:
        return list(range(len(source)))
    mapping: list[int | None] = [None] * len(source)
    matcher = difflib.SequenceMatcher(None, source.lower(), target.lower(), autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            mapping[a + k] = b + k
    return _fill_forward(mapping)


def _fill_forward(mapping: list[int | None]) -> list[int | None]:
    """Unmatched characters follow the last matched one, so a word never jumps back."""
    last: int | None = None
    for i, m in enumerate(mapping):
        if m is None:
            mapping[i] = last
        else:
            last = m
    return mapping
