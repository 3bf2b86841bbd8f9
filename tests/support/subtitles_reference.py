"""Today's subtitle parser before it streamed (the whole file decoded, every cue and word
held), kept as the reference the streaming parser in `lfvila_data.text.subtitles` must
equal cue for cue and word for word. Only the parts that streaming rewrote are here; the
per-line cleaning and timing helpers they share are imported."""
from __future__ import annotations

import io

import srt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from lfvila_data.text.subtitles import (
    _DUPLICATE_GAP_SECONDS,
    _MAX_WORD_SECONDS,
    _MIN_WORD_SECONDS,
    _SECONDS_PER_CHAR,
    SubtitleError,
    Word,
    _Cue,
    _normalise_fmt,
    _rolling_new_words,
    _spread,
    clean_line,
    detect_kind,
)


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


def _auto_caption_words(cues: list[_Cue]) -> list[Word]:
    """The new words of each rolling cue (the per-cue de-rolling streaming did not change),
    then their ends as the whole word list gave them."""
    return _estimate_onset_ends(list(_rolling_new_words(cues)))


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


def parse_subtitles(data: bytes, fmt: str | None = None) -> list[Word]:
    """The word stream of a subtitle file; SubtitleError when it has no usable text.

    `fmt` is a format name or file extension ("vtt", ".srt"); None sniffs the content."""
    text = decode_subtitle_bytes(data)
    kind = _normalise_fmt(fmt, lambda: [text])  # the name check is unchanged
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
