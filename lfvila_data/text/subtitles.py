"""Subtitle files (WebVTT, SRT) to a time-ordered word stream, the input of the text stage.

The container formats are parsed by maintained libraries (`webvtt-py`, `srt`); this module
only decodes bytes, repairs the few real-world deviations those parsers cannot take, and
turns cue text into words with times. Two kinds of files need different handling:

* ``"auto_captions"`` — YouTube automatic captions. Each line is shown twice while it
  scrolls (rolling duplicates plus 10 ms "snapshot" cues), and the first showing carries
  per-word onsets (``word<00:00:01.234><c> next</c>``). Lines with timing tags are always
  new text; an untimed line is new only where it does not repeat the tail of the previous
  cue (YouTube leaves one-word lines untimed). That keeps every word exactly once.
* ``"subtitles"`` — ordinary cues. A cue's words are spread over its span in proportion
  to their length, and a cue that repeats the previous cue's text while touching or
  overlapping it is merged into it.
"""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from typing import Literal

import srt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from lfvila_data.records import Failure, FailureCode, Stage, TimedText

SubtitleKind = Literal["auto_captions", "subtitles"]

# `<00:00:01.234>` (hours optional, as WebVTT allows) — YouTube's per-word onset tag.
_TIMING_TAG = re.compile(r"<((?:\d+:)?\d{1,2}:\d{2}\.\d{1,3})>")
# A word-timing tag directly followed by a class span marks YouTube automatic captions.
_AUTO_MARK = re.compile(r"<(?:\d+:)?\d{1,2}:\d{2}\.\d{1,3}>\s*<c[.>]")
_ANY_TAG = re.compile(r"<[^<>\n]*>")
# Non-speech annotations: [Music], [Alba] (speaker), (applause), ♪ lyrics markers.
_SOUND_TAG = re.compile(r"\[[^\[\]\n]*\]|\([^()\n]*\)|[♪♫♬]")
_SPEAKER_DASH = re.compile(r"^\s*[-–—]+\s*")
# Tokens with no letters that carry nothing we keep: YouTube ">>" speaker turns, dashes.
_JUNK_TOKEN = re.compile(r"^[-–—<>=*~_|/\\#]+$")
_OPENERS = set("«¿¡\"'“‘([{")
_CLOSERS = set(".,;:!?…»\"'”’)]}")

# Limits of an estimated word duration, for YouTube words that only carry an onset.
_SECONDS_PER_CHAR = 0.08
_MIN_WORD_SECONDS = 0.2
_MAX_WORD_SECONDS = 1.0
# Identical neighbouring cues closer than this are one cue re-emitted, not a repeat.
_DUPLICATE_GAP_SECONDS = 0.001


# One spoken word with its span in seconds of source time: the same record as a sentence.
Word = TimedText


@dataclass(frozen=True)
class _Cue:
    start: float
    end: float
    lines: tuple[str, ...]  # raw lines, tags still in


class SubtitleError(Exception):
    """A subtitle file we cannot use; `reason` is from a closed set, counted by name."""

    REASONS = frozenset({"empty", "undecodable", "unknown_format", "malformed", "no_cues", "no_words"})

    def __init__(self, reason: str, message: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown SubtitleError reason {reason!r}")
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message

    def to_failure(self, video_id: str | None, clip_id: str | None = None) -> Failure:
        """The ledger row for this error, so a pipeline records it instead of raising.

        A bad file stays bad on a rerun, hence permanent."""
        return Failure(video_id=video_id, clip_id=clip_id, stage=Stage.TEXT.value,
                       code=FailureCode.UNUSABLE_SUBTITLES,
                       reason=f"unusable subtitles ({self.reason}): {self.message or self.reason}",
                       permanent=True)


# ----------------------------------------------------------------------------- decoding


def decode_subtitle_bytes(data: bytes) -> str:
    """Bytes to text with normalised newlines; real files come in UTF-8, UTF-16 and cp1252."""
    if not data or not data.strip():
        raise SubtitleError("empty", "no bytes")
    text = _decode(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not text.strip():
        raise SubtitleError("empty", "only whitespace")
    return text


def _decode(data: bytes) -> str:
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        import charset_normalizer
    except ImportError:  # optional: cp1252 is what non-UTF-8 subtitles mostly are
        charset_normalizer = None
    if charset_normalizer is not None:
        best = charset_normalizer.from_bytes(data).best()
        if best is not None:
            return str(best).lstrip("\ufeff")
    return data.decode("cp1252", errors="replace")


def sniff_format(text: str) -> str:
    """'vtt' when the text opens with the WebVTT signature, otherwise 'srt'."""
    return "vtt" if text.lstrip("\ufeff \t\n").startswith("WEBVTT") else "srt"


def _normalise_fmt(fmt: str | None, text: str) -> str:
    if fmt is None:
        return sniff_format(text)
    name = fmt.lower().rsplit(".", 1)[-1]
    if name in ("vtt", "webvtt"):
        return "vtt"
    if name == "srt":
        return "srt"
    raise SubtitleError("unknown_format", f"format {fmt!r} is not vtt or srt")


# ----------------------------------------------------------------------------- cue reading


def _repair_vtt(text: str) -> str:
    """Give a cue body back its first line where an exporter blanked it.

    YouTube writes a one-space line right after the timing line; some tools strip it to
    an empty line, which ends the cue for a WebVTT parser and orphans the words after it.
    """
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        if (line == "" and i > 0 and "-->" in lines[i - 1]
                and _orphaned_body_follows(lines, i + 1)):
            line = " "
        out.append(line)
    return "\n".join(out)


def _orphaned_body_follows(lines: list[str], j: int) -> bool:
    """True when lines[j:] start with cue text (not a new cue, note or id) ending a block."""
    k = j
    while k < len(lines) and lines[k].strip():
        if "-->" in lines[k]:
            return False
        k += 1
    return k > j and not lines[j].startswith(("NOTE", "STYLE", "REGION"))


def _read_vtt(text: str) -> list[_Cue]:
    text = _repair_vtt(text)
    try:
        parsed = webvtt.from_buffer(io.StringIO(text))
        return [_Cue(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000,
                     tuple(c.lines)) for c in parsed.captions]
    except (MalformedFileError, MalformedCaptionError, ValueError, IndexError,
            OverflowError) as err:
        raise SubtitleError("malformed", f"WebVTT: {err}") from None


def _read_srt(text: str) -> list[_Cue]:
    try:
        return [_Cue(s.start.total_seconds(), s.end.total_seconds(),
                     tuple(s.content.split("\n")))
                for s in srt.parse(text, ignore_errors=True)]
    except (srt.SRTParseError, ValueError, IndexError, OverflowError) as err:
        raise SubtitleError("malformed", f"SRT: {err}") from None


# ----------------------------------------------------------------------------- text cleaning


def clean_line(line: str) -> list[str]:
    """Spoken words of one cue line: no tags, entities, sound tags or speaker dashes."""
    text = html.unescape(_ANY_TAG.sub("", line))
    text = _SOUND_TAG.sub(" ", text)
    text = _SPEAKER_DASH.sub("", text).replace("<", " ").replace(">", " ")
    return _attach_punctuation([t for t in text.split() if not _JUNK_TOKEN.match(t)])


def _attach_punctuation(tokens: list[str]) -> list[str]:
    """Glue lone punctuation (French "Non !", "« Oui »") to its word; "&" or "%" stay words."""
    out: list[str] = []
    pending = ""
    for tok in tokens:
        if out and all(ch in _CLOSERS for ch in tok):
            out[-1] += tok
        elif all(ch in _OPENERS for ch in tok):
            pending += tok
        else:
            out.append(pending + tok)
            pending = ""
    if pending:
        if out:
            out[-1] += pending
        else:
            out.append(pending)
    return out


def _spread(words: list[str], start: float, end: float) -> list[Word]:
    """Words over [start, end], each taking time in proportion to its length."""
    if not words:
        return []
    weights = [max(len(w), 1) for w in words]
    total = sum(weights)
    span = max(end - start, 0.0)
    out: list[Word] = []
    acc = 0
    for word, weight in zip(words, weights):
        w_start = start + span * acc / total
        acc += weight
        out.append(Word(word, w_start, start + span * acc / total))
    return out


# ----------------------------------------------------------------------------- kinds


def detect_kind(data: bytes | str) -> SubtitleKind:
    """Auto captions carry per-word onset tags; they need de-rolling, not spreading."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return "auto_captions" if _AUTO_MARK.search(text) else "subtitles"


def _auto_caption_words(cues: list[_Cue]) -> list[Word]:
    """The new words of each rolling cue, timed by their onset tags."""
    words: list[Word] = []
    previous: list[str] = []
    for cue in cues:
        lines = [ln for ln in cue.lines if " ".join(clean_line(ln)) or _TIMING_TAG.search(ln)]
        keys = [" ".join(clean_line(ln)) for ln in lines]
        skip = _repeated_prefix(lines, keys, previous)
        for line in lines[skip:]:
            if _TIMING_TAG.search(line):
                words.extend(_timed_line_words(line, cue))
            else:
                words.extend(_spread(clean_line(line), cue.start, cue.end))
        if keys:
            previous = keys
    return _estimate_onset_ends(words)


def _repeated_prefix(lines: list[str], keys: list[str], previous: list[str]) -> int:
    """How many leading untimed lines repeat the tail of the previous cue (rolling)."""
    for k in range(min(len(lines), len(previous)), 0, -1):
        if keys[:k] == previous[-k:] and not any(_TIMING_TAG.search(ln) for ln in lines[:k]):
            return k
    return 0


def _timed_line_words(line: str, cue: _Cue) -> list[Word]:
    """Words of `word<t1><c> word</c><t2>...`: the first at the cue start, others at tags."""
    parts = _TIMING_TAG.split(line)
    onsets = [cue.start] + [_tag_seconds(t) for t in parts[1::2]]
    segments = parts[0::2]
    words: list[Word] = []
    for i, (segment, onset) in enumerate(zip(segments, onsets)):
        following = onsets[i + 1] if i + 1 < len(onsets) else cue.end
        words.extend(_spread(clean_line(segment), onset, max(following, onset)))
    return words


def _tag_seconds(stamp: str) -> float:
    parts = [float(p) for p in stamp.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def _estimate_onset_ends(words: list[Word]) -> list[Word]:
    """End a word at the next onset or after a length-based estimate, whichever is first.

    YouTube gives onsets only; holding each word until the next one would hide every
    pause, and pauses are what the sentence stage splits unpunctuated captions on."""
    out: list[Word] = []
    for i, w in enumerate(words):
        estimate = min(max(len(w.text) * _SECONDS_PER_CHAR, _MIN_WORD_SECONDS), _MAX_WORD_SECONDS)
        end = min(w.end, w.start + estimate)
        if i + 1 < len(words):
            end = min(end, max(words[i + 1].start, w.start))
        out.append(Word(w.text, w.start, max(end, w.start)))
    return out


def _subtitle_words(cues: list[_Cue]) -> list[Word]:
    """Ordinary cues: merge re-emitted duplicates, lay overlaps end to end, spread words."""
    texts = [(cue, [w for ln in cue.lines for w in clean_line(ln)]) for cue in cues]
    merged = _merge_duplicates([(c.start, c.end, ws) for c, ws in texts if ws])
    words: list[Word] = []
    floor = 0.0
    for i, (start, end, ws) in enumerate(merged):
        start = max(start, floor)
        if i + 1 < len(merged) and merged[i + 1][0] > start:
            end = min(end, merged[i + 1][0])
        end = max(end, start)
        words.extend(_spread(ws, start, end))
        floor = end
    return words


def _merge_duplicates(cues: list[tuple[float, float, list[str]]]) -> list[tuple[float, float, list[str]]]:
    out: list[tuple[float, float, list[str]]] = []
    for start, end, ws in sorted(cues, key=lambda c: (c[0], c[1])):
        if out and out[-1][2] == ws and start <= out[-1][1] + _DUPLICATE_GAP_SECONDS:
            out[-1] = (out[-1][0], max(out[-1][1], end), ws)
        else:
            out.append((start, end, ws))
    return out


def _monotonic(words: list[Word]) -> list[Word]:
    """Guarantee start <= end and no word starting before the previous one ends."""
    out: list[Word] = []
    floor = 0.0
    for w in words:
        start = max(w.start, floor)
        end = max(w.end, start)
        out.append(w if (start, end) == (w.start, w.end) else Word(w.text, start, end))
        floor = end
    return out


# ----------------------------------------------------------------------------- entry point


def parse_subtitles(data: bytes, fmt: str | None = None) -> list[Word]:
    """The word stream of a subtitle file; SubtitleError when it has no usable text.

    `fmt` is a format name or file extension ("vtt", ".srt"); None sniffs the content."""
    text = decode_subtitle_bytes(data)
    kind = _normalise_fmt(fmt, text)
    cues = _read_vtt(text) if kind == "vtt" else _read_srt(text)
    cues = [c for c in cues if c.end >= c.start >= 0]
    if not cues:
        raise SubtitleError("no_cues", f"no timed cues in the {kind} file")
    if kind == "vtt" and detect_kind(text) == "auto_captions":
        words = _auto_caption_words(sorted(cues, key=lambda c: c.start))
    else:
        words = _subtitle_words(cues)
    if not words:
        raise SubtitleError("no_words", f"{len(cues)} cues but no spoken words")
    return _monotonic(words)
