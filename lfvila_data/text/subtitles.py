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

import codecs
import html
import io
import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

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


_T = TypeVar("_T")
_END = object()  # the end of an iterator, where None may be an item

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

# A file is read in windows of this many bytes, and the container parsers see the cues in
# pieces of about this many characters: memory follows the window and the largest cue.
WINDOW = 1 << 16
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
# The longest tail of text kept between windows while looking for the auto-caption mark.
_MARK_CARRY = 4096
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class _Source:
    """A subtitle file as bytes in memory or a path, opened anew for every pass over it."""

    data: bytes | Path
    window: int = WINDOW

    def chunks(self) -> Iterator[bytes]:
        with (io.BytesIO(self.data) if isinstance(self.data, bytes) else open(self.data, "rb")) as f:
            while chunk := f.read(self.window):
                yield chunk

    def whole(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else self.data.read_bytes()


@dataclass(frozen=True)
class _Encoding:
    """How the bytes decode; `text` is set only where charset detection decoded them whole."""

    codec: str
    errors: str = "strict"
    text: str | None = None


def _decodes(src: _Source, codec: str) -> bool:
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        for chunk in src.chunks():
            decoder.decode(chunk)
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True


def _choose_encoding(src: _Source) -> _Encoding:
    """Real files come in UTF-8, UTF-16 and cp1252: a BOM's codec, UTF-8, then detection.

    Each candidate is checked over the whole file in windows; only a file that is no
    UTF is read whole, because charset detection needs all of it."""
    head = next(src.chunks(), b"")[:4]
    for bom, codec in _BOMS:
        if head.startswith(bom):
            if _decodes(src, codec):
                return _Encoding(codec)
            break
    if _decodes(src, "utf-8-sig"):
        return _Encoding("utf-8-sig")
    try:
        import charset_normalizer
    except ImportError:  # optional: cp1252 is what non-UTF-8 subtitles mostly are
        charset_normalizer = None
    if charset_normalizer is not None:
        best = charset_normalizer.from_bytes(src.whole()).best()
        if best is not None:
            return _Encoding(best.encoding, text=str(best).lstrip("\ufeff"))
    return _Encoding("cp1252", "replace")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _text_windows(src: _Source, enc: _Encoding) -> Iterator[str]:
    """The decoded text with normalised newlines, window by window (a CR that ends a
    window waits for the next one, which may start with its LF)."""
    if enc.text is not None:
        raw: Iterable[str] = (enc.text[i:i + src.window] for i in range(0, len(enc.text), src.window))
    else:
        decoder = codecs.getincrementaldecoder(enc.codec)(enc.errors)
        raw = itertools.chain((decoder.decode(c) for c in src.chunks()), [decoder.decode(b"", True)])
    held = ""
    for piece in raw:
        piece, held = held + piece, ""
        if piece.endswith("\r"):
            piece, held = piece[:-1], "\r"
        if piece:
            yield _normalise_newlines(piece)
    if held:
        yield "\n"


def _lines(windows: Iterable[str]) -> Iterator[str]:
    """Lines with their newline (the last may have none), as iterating the whole text gives."""
    partial: list[str] = []
    for window in windows:
        parts = window.split("\n")
        if len(parts) == 1:
            partial.append(window)
            continue
        yield "".join(partial) + parts[0] + "\n"
        partial = [parts[-1]] if parts[-1] else []
        for part in parts[1:-1]:
            yield part + "\n"
    if partial:
        yield "".join(partial)


def sniff_format(text: str) -> str:
    """'vtt' when the text opens with the WebVTT signature, otherwise 'srt'."""
    return "vtt" if text.lstrip("\ufeff \t\n").startswith("WEBVTT") else "srt"


def _sniff_windows(windows: Iterable[str]) -> str:
    head = ""
    for window in windows:
        head = (head + window).lstrip("\ufeff \t\n")
        if len(head) >= len("WEBVTT"):
            break
    return sniff_format(head)


def _normalise_fmt(fmt: str | None, windows: Callable[[], Iterable[str]]) -> str:
    if fmt is None:
        return _sniff_windows(windows())
    name = fmt.lower().rsplit(".", 1)[-1]
    if name in ("vtt", "webvtt"):
        return "vtt"
    if name == "srt":
        return "srt"
    raise SubtitleError("unknown_format", f"format {fmt!r} is not vtt or srt")


def _has_auto_mark(windows: Iterable[str]) -> bool:
    """`_AUTO_MARK` anywhere in the text, looked for window by window.

    Whitespace runs are squeezed to one space first (the mark's only whitespace is a
    `\\s*`, so this finds the same marks), and a window passes on its tail from the
    second-last `<`: a mark holds two, so one cut by the window starts at one of those."""
    carry = ""
    for window in windows:
        text = carry + _SPACES.sub(" ", window)
        if _AUTO_MARK.search(text):
            return True
        last = text.rfind("<")
        second = text.rfind("<", 0, last) if last > 0 else -1
        start = second if second >= 0 else last
        if start >= 0 and len(text) - start > _MARK_CARRY:
            start = last if len(text) - last <= _MARK_CARRY else -1
        carry = text[start:] if start >= 0 else ""
    return False


# ----------------------------------------------------------------------------- cue reading


def _repaired(lines: Iterator[str]) -> Iterator[str]:
    """Give a cue body back its first line where an exporter blanked it.

    YouTube writes a one-space line right after the timing line; some tools strip it to
    an empty line, which ends the cue for a WebVTT parser and orphans the words after it.
    Looks ahead at most one block."""
    ahead: deque[str] = deque()
    previous: str | None = None
    while True:
        line = ahead.popleft() if ahead else next(lines, None)
        if line is None:
            return
        body = line.rstrip("\n")
        if body == "" and previous is not None and "-->" in previous and _orphaned_body_follows(lines, ahead):
            line = " " + line
        yield line
        previous = body


def _orphaned_body_follows(lines: Iterator[str], ahead: deque[str]) -> bool:
    """True when the next lines start with cue text (not a new cue, note or id) ending a block."""
    k = 0
    while True:
        if k == len(ahead):
            nxt = next(lines, None)
            if nxt is None:
                break
            ahead.append(nxt)
        if not ahead[k].strip():
            break
        if "-->" in ahead[k]:
            return False
        k += 1
    return k > 0 and not ahead[0].startswith(("NOTE", "STYLE", "REGION"))


def _pieces(lines: Iterable[str], window: int, cut_before: Callable[[str, str, str | None], bool]) -> Iterator[str]:
    """Consecutive lines joined into pieces of about `window` characters, each cut where
    `cut_before(previous, line, next)` says the container parser may start afresh."""
    it = iter(lines)
    piece: list[str] = []
    size = 0
    previous = ""
    line = next(it, None)
    while line is not None:
        following = next(it, None)
        if piece and size >= window and cut_before(previous, line, following):
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
        previous, line = line, following
    if piece:
        yield "".join(piece)


def _after_blank_line(previous: str, line: str, following: str | None) -> bool:
    """WebVTT: an empty line ends every block, so the parser can start after any."""
    return previous == "\n"


_SRT_INDEX = re.compile(r"[0-9]+\n")
_SRT_TIMINGS = re.compile(rf"{srt.RGX_TIMESTAMP} *-[ -] *> *{srt.RGX_TIMESTAMP}")


def _at_srt_cue(previous: str, line: str, following: str | None) -> bool:
    """SRT: after an empty line, at an index line followed by a timing line. `srt`'s cue
    pattern ends the cue before at that empty line (its look-ahead sees index and timing),
    and nothing before the empty line can reach past it, so the pieces parse as the whole."""
    return (previous == "\n" and _SRT_INDEX.fullmatch(line) is not None
            and following is not None and _SRT_TIMINGS.match(following) is not None)


def _read_vtt(lines: Iterable[str], window: int) -> Iterator[_Cue]:
    """Cues by webvtt-py, piece by piece; a later piece gets a bare header, which leaves the
    parser where it was after the first block (regions and comments we do not read)."""
    first = True
    for piece in _pieces(_repaired(iter(lines)), window, _after_blank_line):
        try:
            parsed = webvtt.from_buffer(io.StringIO(piece if first else "WEBVTT\n\n" + piece))
            cues = [_Cue(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000,
                         tuple(c.lines)) for c in parsed.captions]
        except (MalformedFileError, MalformedCaptionError, ValueError, IndexError,
                OverflowError) as err:
            raise SubtitleError("malformed", f"WebVTT: {err}") from None
        first = False
        yield from cues


def _read_srt(lines: Iterable[str], window: int) -> Iterator[_Cue]:
    for piece in _pieces(lines, window, _at_srt_cue):
        try:
            cues = [_Cue(s.start.total_seconds(), s.end.total_seconds(), tuple(s.content.split("\n")))
                    for s in srt.parse(piece, ignore_errors=True)]
        except (srt.SRTParseError, ValueError, IndexError, OverflowError) as err:
            raise SubtitleError("malformed", f"SRT: {err}") from None
        yield from cues


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


def detect_kind(data: bytes | str | Path) -> SubtitleKind:
    """Auto captions carry per-word onset tags; they need de-rolling, not spreading."""
    if isinstance(data, str):
        return "auto_captions" if _AUTO_MARK.search(data) else "subtitles"
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    src = _Source(data if isinstance(data, bytes) else Path(data))
    windows = itertools.chain((decoder.decode(c) for c in src.chunks()), [decoder.decode(b"", True)])
    return "auto_captions" if _has_auto_mark(windows) else "subtitles"


def _auto_caption_words(cues: Iterable[_Cue]) -> Iterator[Word]:
    """The new words of each rolling cue, timed by their onset tags."""
    return _estimate_onset_ends(_rolling_new_words(cues))


def _rolling_new_words(cues: Iterable[_Cue]) -> Iterator[Word]:
    previous: list[str] = []
    for cue in cues:
        lines = [ln for ln in cue.lines if " ".join(clean_line(ln)) or _TIMING_TAG.search(ln)]
        keys = [" ".join(clean_line(ln)) for ln in lines]
        skip = _repeated_prefix(lines, keys, previous)
        for line in lines[skip:]:
            if _TIMING_TAG.search(line):
                yield from _timed_line_words(line, cue)
            else:
                yield from _spread(clean_line(line), cue.start, cue.end)
        if keys:
            previous = keys


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


def _with_next(items: Iterable[_T]) -> Iterator[tuple[_T, _T | None]]:
    """Each item with the one after it (None after the last): a look-ahead of one."""
    it = iter(items)
    item = next(it, _END)
    while item is not _END:
        following = next(it, _END)
        yield item, (None if following is _END else following)
        item = following


def _estimate_onset_ends(words: Iterable[Word]) -> Iterator[Word]:
    """End a word at the next onset or after a length-based estimate, whichever is first.

    YouTube gives onsets only; holding each word until the next one would hide every
    pause, and pauses are what the sentence stage splits unpunctuated captions on."""
    for w, following in _with_next(words):
        estimate = min(max(len(w.text) * _SECONDS_PER_CHAR, _MIN_WORD_SECONDS), _MAX_WORD_SECONDS)
        end = min(w.end, w.start + estimate)
        if following is not None:
            end = min(end, max(following.start, w.start))
        yield Word(w.text, w.start, max(end, w.start))


def _subtitle_words(cues: Iterable[_Cue]) -> Iterator[Word]:
    """Ordinary cues (in time order): merge re-emitted duplicates, lay overlaps end to end,
    spread words."""
    texts = ((c.start, c.end, ws) for c in cues if (ws := [w for ln in c.lines for w in clean_line(ln)]))
    floor = 0.0
    for (start, end, ws), following in _with_next(_merge_duplicates(texts)):
        start = max(start, floor)
        if following is not None and following[0] > start:
            end = min(end, following[0])
        end = max(end, start)
        yield from _spread(ws, start, end)
        floor = end


def _merge_duplicates(cues: Iterable[tuple[float, float, list[str]]]) -> Iterator[tuple[float, float, list[str]]]:
    """Cues in (start, end) order, a cue repeating the one before while touching it merged in."""
    held: tuple[float, float, list[str]] | None = None
    for start, end, ws in cues:
        if held is not None and held[2] == ws and start <= held[1] + _DUPLICATE_GAP_SECONDS:
            held = (held[0], max(held[1], end), ws)
        else:
            if held is not None:
                yield held
            held = (start, end, ws)
    if held is not None:
        yield held


def _monotonic(words: Iterable[Word]) -> Iterator[Word]:
    """Guarantee start <= end and no word starting before the previous one ends."""
    floor = 0.0
    for w in words:
        start = max(w.start, floor)
        end = max(w.end, start)
        yield w if (start, end) == (w.start, w.end) else Word(w.text, start, end)
        floor = end


# ----------------------------------------------------------------------------- entry point


def _order_key(auto: bool) -> Callable[[_Cue], tuple[float, ...]]:
    """The order cues are read in: auto captions by start, others by start then end."""
    return (lambda c: (c.start,)) if auto else (lambda c: (c.start, c.end))


def _survey(cues: Iterable[_Cue], key: Callable[[_Cue], tuple[float, ...]],
            last: tuple[float, ...] | None = None) -> tuple[int, bool]:
    """How many cues, and whether they are in reading order (after the key `last`)."""
    count, in_order = 0, True
    for cue in cues:
        count += 1
        k = key(cue)
        in_order = in_order and (last is None or last <= k)
        last = k
    return count, in_order


def _ordered_cues(cues: Callable[[], Iterator[_Cue]], key: Callable[[_Cue], tuple[float, ...]],
                  hold: int) -> tuple[int, Iterator[_Cue]]:
    """The cues in reading order, and how many. A file of at most `hold` cues is read once
    and held; a longer one is read once to count and check the order, then again as the
    words are made. Cues out of order (rare) are held, as cues, and sorted."""
    first = cues()
    held = list(itertools.islice(first, hold + 1))
    count, in_order = _survey(held, key)
    if count <= hold:
        return count, iter(held if in_order else sorted(held, key=key))
    last = key(held[-1])
    del held
    more, rest_in_order = _survey(first, key, last)
    if in_order and rest_in_order:
        return count + more, cues()
    return count + more, iter(sorted(cues(), key=key))


def iter_subtitle_words(source: bytes | Path, fmt: str | None = None, *, window: int = WINDOW) -> Iterator[Word]:
    """The word stream of a subtitle file in memory that follows its largest cue, not its
    size; SubtitleError (before the first word) when it has no usable text.

    `source` is the file's bytes or its path; `fmt` a format name or file extension ("vtt",
    ".srt"), None sniffs the content. The file is read several times, `window` bytes at a
    time: the encoding is checked, the format and kind found, then the cues read (held when
    there are at most `window // 4` of them, else read twice: to count them and check their
    order, then to make the words). Cues out of time order (rare) are held, as cues, to be
    sorted; a file that is no UTF is held whole for charset detection."""
    src = _Source(source if isinstance(source, bytes) else Path(source), window)
    if not any(chunk.strip() for chunk in src.chunks()):
        raise SubtitleError("empty", "no bytes")
    enc = _choose_encoding(src)
    if not any(text.strip() for text in _text_windows(src, enc)):
        raise SubtitleError("empty", "only whitespace")
    kind = _normalise_fmt(fmt, lambda: _text_windows(src, enc))
    read = _read_vtt if kind == "vtt" else _read_srt
    auto = kind == "vtt" and _has_auto_mark(_text_windows(src, enc))

    def cues() -> Iterator[_Cue]:
        return (c for c in read(_lines(_text_windows(src, enc)), window) if c.end >= c.start >= 0)

    count, ordered = _ordered_cues(cues, _order_key(auto), window // 4)
    if not count:
        raise SubtitleError("no_cues", f"no timed cues in the {kind} file")
    words = 0
    for word in _monotonic(_auto_caption_words(ordered) if auto else _subtitle_words(ordered)):
        words += 1
        yield word
    if not words:
        raise SubtitleError("no_words", f"{count} cues but no spoken words")


def parse_subtitles(data: bytes | Path, fmt: str | None = None) -> list[Word]:
    """The word stream of a subtitle file as a list; SubtitleError when it has no usable text.

    `fmt` is a format name or file extension ("vtt", ".srt"); None sniffs the content."""
    return list(iter_subtitle_words(data, fmt))
