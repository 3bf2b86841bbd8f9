"""HD-VILA jsonl parsed a block at a time: Arrow's JSON reader and vectorised checks for
the lines they can vouch for, the strict per-line parsers of `hdvila.py` for the rest.

Why: the per-line path costs ~50 µs of Python per clip, most of a 10M-clip plan. Why it
is exact: a line takes the Arrow path only when every check below passes; anything else
(bad JSON, nulls, missing fields, unusual spans, URLs or ids, overlapping or duplicate
clips, invalid UTF-8, deep nesting) is parsed again by the per-line parser, so every bad
line is the same coded ledger row as before, and every good line the same row values.

 * Arrow only sees lines that start with `{` and end with `}` (a trailing CR aside). A
   JSON value cannot continue past such a line end (after `}`, a `{` is invalid inside
   any value), so Arrow's row count equals the line count exactly when each line is one
   object, and row i is line i. A piece Arrow rejects is halved until the bad lines are
   found, one line at a time at the end (at most `_MAX_REJECTS` rejected parses per
   piece, so a file of bad lines costs little more than the per-line parser alone).
 * Arrow does not check UTF-8 or nesting depth, where Python's `json` does (a bad byte
   anywhere in a line, or ~1000 nested brackets, make the line bad): pieces are UTF-8
   validated, and lines with more than `_MAX_BRACKETS` brackets go to the per-line parser.
 * Explicit schemas make Arrow reject mistyped fields (a number as text, an object as
   clip list); nulls, which Arrow also gives for missing fields, go to the per-line parser.
 * Before Arrow, clip-text lines of exactly json.dumps's shape whose clip id passes the
   checks and whose text is printable ASCII without quote or backslash, in single spaces
   (`_DIRECT_TEXT_RE`) are read from their bytes: for them json.loads gives the bytes
   themselves and the whitespace rule leaves the text as it is, so no parse is needed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from lfvila_data.records import Failure
from lfvila_data.sources.hdvila import _OVERLAP_EPS, parse_text_line, parse_video_line

VIDEO_COLUMNS = pa.schema([("video_id", pa.string()), ("url", pa.string()), ("offset", pa.int64())])
CLIP_COLUMNS = pa.schema([("video_id", pa.string()), ("offset", pa.int64()), ("clip_id", pa.string()),
                          ("k", pa.int32()), ("start", pa.float64()), ("end", pa.float64())])
TEXT_COLUMNS = pa.schema([("clip_id", pa.string()), ("text", pa.string()), ("offset", pa.int64())])
TEXT_VIEWS = pa.schema([("clip_id", pa.string_view()), ("text", pa.string_view()), ("offset", pa.int64())])

_VIDEO_JSON = pa.schema([("video_id", pa.string()), ("url", pa.string()), ("clip", pa.list_(pa.struct(
    [("clip_id", pa.string()), ("span", pa.list_(pa.string()))])))])
_TEXT_JSON = pa.schema([("clip_id", pa.string()), ("text", pa.string())])

# Stricter than records._VIDEO_ID / _CLIP_ID and hdvila._HMS (RE2's `$` is the end of the
# string; Python's also matches before a final newline): a miss only costs a per-line parse.
_VIDEO_ID_RE = r"^[A-Za-z0-9_-]{1,128}$"
_CLIP_ID_RE = r"^(?P<vid>[A-Za-z0-9_-]{1,128})\.(?P<k>[0-9]{1,7})\.mp4$"
_HMS_RE = r"^(?P<h>[0-9]{1,9}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9](?:\.[0-9]+)?)$"
# http(s) with a plain ASCII host: urlsplit gives a netloc and cannot raise on it
_HTTP_URL_RE = r"^https?://[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]*)?(?:[/?#][^\x00-\x20\x7f]*)?$"
# every character str.split() splits on (str.isspace()); a text without them, without
# leading, trailing or double spaces is already what " ".join(text.split()) makes of it
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
                 "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_NEEDS_SPLIT_RE = ("^ | $|  |[" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE if c != " ") + "]")

_PIECE_BYTES = 4 * 1024 * 1024  # one Arrow parse; also bounds the temporary arrays
_MAX_REJECTS = 64                # rejected Arrow parses per piece before the rest goes line by line
_MAX_BRACKETS = 400             # Python's json gives up near 1000 nested brackets
_READ = pj.ReadOptions(use_threads=False)  # a map task holds one CPU
_BLANK = b" \t\n\r\x0b\x0c"        # what bytes.strip() removes


@dataclass(frozen=True)
class VideoBlock:
    """The video lines of one byte range: videos and their clips (any row order), the
    ledger rows of bad lines and clips in line order, the count of non-blank lines and
    of those parsed one by one."""

    videos: pa.Table
    clips: pa.Table
    failures: list[Failure]
    lines: int
    per_line: int


@dataclass(frozen=True)
class TextBlock:
    """The clip-text lines of one byte range; `video_ids` names each text row's video."""

    texts: pa.Table
    video_ids: pa.Array
    failures: list[Failure]
    lines: int
    per_line: int


# ---------------------------------------------------------------------------------------
# the per-line path (the reference, and the fallback for lines Arrow cannot vouch for)


def parse_video_lines(lines: Iterable[tuple[int, bytes]], *, allow_local_files: bool) -> VideoBlock:
    """Parse (offset, line) pairs one by one with `parse_video_line`."""
    videos: dict[str, list] = {n: [] for n in VIDEO_COLUMNS.names}
    clips: dict[str, list] = {n: [] for n in CLIP_COLUMNS.names}
    failures: list[Failure] = []
    count = 0
    for offset, line in lines:
        count += 1
        video, fails = parse_video_line(line, allow_local_files=allow_local_files)
        failures.extend(fails)
        if video is None:
            continue
        for name, value in zip(VIDEO_COLUMNS.names, (video.video_id, video.url, offset)):
            videos[name].append(value)
        for c in video.clips:
            for name, value in zip(CLIP_COLUMNS.names, (video.video_id, offset, c.clip_id, c.k, c.start, c.end)):
                clips[name].append(value)
    return VideoBlock(pa.table(videos, schema=VIDEO_COLUMNS), pa.table(clips, schema=CLIP_COLUMNS),
                      failures, count, count)


def parse_text_lines(lines: Iterable[tuple[int, bytes]]) -> TextBlock:
    """Parse (offset, line) pairs one by one with `parse_text_line`."""
    texts: dict[str, list] = {n: [] for n in TEXT_COLUMNS.names}
    video_ids: list[str] = []
    failures: list[Failure] = []
    count = 0
    for offset, line in lines:
        count += 1
        parsed = parse_text_line(line)
        if isinstance(parsed, Failure):
            failures.append(parsed)
            continue
        clip_id, text = parsed
        texts["clip_id"].append(clip_id)
        texts["text"].append(text)
        texts["offset"].append(offset)
        video_ids.append(clip_id[:clip_id.index(".")])
    return TextBlock(pa.table(texts, schema=TEXT_COLUMNS), pa.array(video_ids, pa.string()), failures, count,
                     count)


# ---------------------------------------------------------------------------------------
# the block path


def parse_video_block(data: bytes, base: int, *, allow_local_files: bool) -> VideoBlock:
    """Parse the video lines of `data` (whole lines; `base` is the file offset of its first
    byte), exactly as `parse_video_lines` would."""
    fast, slow = _fast_and_slow(data, base, _VIDEO_JSON, _check_videos)
    per_line = parse_video_lines(slow, allow_local_files=allow_local_files)
    return VideoBlock(
        pa.concat_tables([v for v, _ in fast] + [per_line.videos]),
        pa.concat_tables([c for _, c in fast] + [per_line.clips]),
        per_line.failures, per_line.lines + sum(v.num_rows for v, _ in fast), per_line.lines)


def parse_text_block(data: bytes, base: int, *, views: bool = False) -> TextBlock:
    """Parse the clip-text lines of `data`, exactly as `parse_text_lines` would. With
    `views` the clip ids and texts are string views, most into `data` (alive as long as
    they are): a caller that reorders the rows copies the texts once, when it casts them."""
    fast, slow = _fast_and_slow(data, base, _TEXT_JSON, _check_texts, _direct_texts)
    per_line = parse_text_lines(slow)
    schema = TEXT_VIEWS if views else TEXT_COLUMNS
    return TextBlock(
        pa.concat_tables([t.cast(schema) for t, _ in fast] + [per_line.texts.cast(schema)]),
        pa.concat_arrays([v for _, v in fast] + [per_line.video_ids]),
        per_line.failures, per_line.lines + sum(t.num_rows for t, _ in fast), per_line.lines)


def _fast_and_slow(data: bytes, base: int, schema: pa.Schema, check: Callable, direct: Callable | None = None
                   ) -> tuple[list[tuple], list[tuple[int, bytes]]]:
    """`check(table, offsets)` (its outputs, then a mask of rows it rejects) of each piece
    Arrow parsed, and the (offset, line) pairs the per-line parser must see, in line order.
    `direct(data, base, starts, ends)` reads the lines it can vouch for straight from their
    bytes (the outputs `check` would give for them, then a mask of those lines); Arrow
    parses the others."""
    fast: list[tuple] = []
    slow: list[tuple[int, bytes]] = []
    for done, table, offsets, rejected in _pieces(data, base, schema, direct):
        if done is not None:
            fast.append(done)
        slow += rejected
        if table is None:
            continue
        *outputs, bad = check(table, offsets)
        fast.append(tuple(outputs))
        slow += [(int(o), _line_at(data, base, int(o))) for o in offsets[bad]]
    slow.sort()
    return fast, slow


def _line_at(data: bytes, base: int, offset: int) -> bytes:
    lo = offset - base
    hi = data.find(b"\n", lo)
    line = data[lo:] if hi < 0 else data[lo:hi]
    return line[:-1] if line.endswith(b"\r") else line


def _pieces(data: bytes, base: int, schema: pa.Schema, direct: Callable | None = None
            ) -> Iterator[tuple[tuple | None, pa.Table | None, np.ndarray, list[tuple[int, bytes]]]]:
    """(what `direct` read, table of the lines Arrow parsed, their file offsets, the other
    non-blank lines as (offset, line)) for each piece of about _PIECE_BYTES of whole lines."""
    lo, n = 0, len(data)
    while lo < n:
        hi = data.find(b"\n", min(lo + _PIECE_BYTES, n) - 1)
        hi = n if hi < 0 else hi + 1
        starts, ends = _line_bounds(data, lo, hi)
        done = None
        if direct is not None and len(starts):
            *outputs, taken = direct(data, base, starts, ends)
            if taken.any():
                done, starts, ends = tuple(outputs), starts[~taken], ends[~taken]
        simple = _simple_lines(data, starts, ends)
        rejected = [(base + int(s), data[s:e]) for s, e in zip(starts[~simple], ends[~simple])
                    if data[s:e].strip(_BLANK)]
        tables, offsets = _parse_halving(data, starts[simple], ends[simple], schema, rejected, base)
        rejected.sort()
        if tables:
            yield done, pa.concat_tables(tables), base + np.concatenate(offsets), rejected
        else:
            yield done, None, np.zeros(0, np.int64), rejected
        lo = hi


def _parse_halving(data: bytes, starts: np.ndarray, ends: np.ndarray, schema: pa.Schema,
                   rejected: list[tuple[int, bytes]], base: int) -> tuple[list[pa.Table], list[np.ndarray]]:
    """Tables of the lines Arrow accepts (with their line starts); a rejected set of lines
    is halved until the bad lines, which are added to `rejected`, stand alone."""
    tables: list[pa.Table] = []
    offsets: list[np.ndarray] = []
    todo = [(starts, ends)]
    rejects = 0
    while todo:
        s, e = todo.pop()
        table = _read_json(data, s, e, schema) if len(s) and rejects < _MAX_REJECTS else None
        if table is not None:
            tables.append(table)
            offsets.append(s)
        elif len(s) > 1 and rejects < _MAX_REJECTS:
            rejects += 1
            mid = len(s) // 2
            todo += [(s[mid:], e[mid:]), (s[:mid], e[:mid])]
        else:
            rejects += len(s) > 0
            rejected += [(base + int(a), data[a:b]) for a, b in zip(s, e)]
    return tables, offsets


def _line_bounds(data: bytes, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (without "\\n" and one trailing "\\r") of each line in data[lo:hi]."""
    buf = np.frombuffer(data, np.uint8, hi - lo, lo)
    nl = np.flatnonzero(buf == 10) + lo
    starts = np.concatenate([[lo], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [hi]]).astype(np.int64)
    keep = starts < hi
    starts, ends = starts[keep], ends[keep]
    if len(ends):
        whole = np.frombuffer(data, np.uint8)
        cr = (ends > starts) & (whole[np.maximum(ends - 1, 0)] == 13)
        ends = ends - cr
    return starts, ends


def _simple_lines(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines `{...}` with fewer than _MAX_BRACKETS brackets: the ones Arrow may parse."""
    if not len(starts):
        return np.zeros(0, bool)
    whole = np.frombuffer(data, np.uint8)
    nonempty = ends > starts
    simple = nonempty & (whole[starts] == ord("{")) & (whole[np.maximum(ends - 1, 0)] == ord("}"))
    span = whole[starts[0]:ends[-1]]
    brackets = np.flatnonzero((span == ord("[")) | (span == ord("{"))) + starts[0]
    count = np.searchsorted(brackets, ends) - np.searchsorted(brackets, starts)
    return simple & (count <= _MAX_BRACKETS)


def _read_json(data: bytes, starts: np.ndarray, ends: np.ndarray, schema: pa.Schema) -> pa.Table | None:
    """The lines as one table of `schema`, or None when Arrow rejects them, a byte is not
    UTF-8, or the rows are not one per line."""
    lo, hi = int(starts[0]), int(ends[-1])
    if data.count(b"\n", lo, hi) == len(starts) - 1:  # adjacent lines: no copy
        raw = pa.py_buffer(memoryview(data)[lo:hi])
    else:
        raw = pa.py_buffer(b"\n".join(data[s:e] for s, e in zip(starts, ends)))
    try:
        pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, raw.size], np.int32)), raw]
                              ).cast(pa.string())  # checks UTF-8, as json.loads does
        table = pj.read_json(pa.BufferReader(raw), read_options=pj.ReadOptions(
            use_threads=False, block_size=max(raw.size, 1)), parse_options=pj.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(starts) else None


def _matches(array: pa.ChunkedArray | pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(array, pattern), False).to_numpy(zero_copy_only=False)


def _check_texts(table: pa.Table, offsets: np.ndarray) -> tuple[pa.Table, pa.Array, np.ndarray]:
    """The rows that parse_text_line accepts unchanged (text whitespace normalised as it
    does) and a mask of the rows it must see itself."""
    clip_id = table.column("clip_id").combine_chunks()
    text = table.column("text").combine_chunks()
    parts = pc.extract_regex(clip_id, _CLIP_ID_RE)
    k = pc.cast(pc.struct_field(parts, "k"), pa.int32())
    good = pc.fill_null(pc.greater_equal(k, 1), False).to_numpy(zero_copy_only=False) & text.is_valid().to_numpy(
        zero_copy_only=False)
    bad = ~good
    keep = pa.array(good)
    if bad.any():
        clip_id, text, parts, offsets = (clip_id.filter(keep), text.filter(keep), parts.filter(keep),
                                         offsets[good])
    redo = _matches(text, _NEEDS_SPLIT_RE)
    if redo.any():
        fixed = pa.array([" ".join(t.split()) for t in text.filter(pa.array(redo)).to_pylist()], pa.string())
        text = pc.replace_with_mask(text, pa.array(redo), fixed)
    texts = pa.table({"clip_id": clip_id, "text": text, "offset": offsets}, schema=TEXT_COLUMNS)
    return texts, pc.struct_field(parts, "vid"), bad


# A clip-text line as json.dumps writes it, with a clip id `_check_texts` accepts (k without
# leading zeros) and a text of printable ASCII without quote or backslash, already
# whitespace-normalised: json.loads gives exactly its bytes, so no JSON parse is needed.
_DIRECT_TEXT_RE = (r'^\{"clip_id": "[A-Za-z0-9_-]{1,128}\.[1-9][0-9]{0,6}\.mp4", "text": '
                   r'"(?:[!#-\[\]-~]+(?: [!#-\[\]-~]+)*)?"\}\r?\n?$')
_TEXT_HEAD = len('{"clip_id": "')
_TEXT_MID = '", "text": "'


def _direct_texts(data: bytes, base: int, starts: np.ndarray, ends: np.ndarray
                  ) -> tuple[pa.Table, pa.Array, np.ndarray]:
    """What `_check_texts` gives for the lines of `_DIRECT_TEXT_RE`'s shape, read from
    their bytes (one regex pass and two substring searches instead of Arrow's JSON parse
    and the checks), and the mask of those lines. Most HD-VILA text lines have it."""
    if len(data) >= 2**31:  # string views address the data with int32 offsets
        return TEXT_VIEWS.empty_table(), pa.array([], pa.string()), np.zeros(len(starts), bool)
    bounds = np.append(starts, ends[-1]).astype(np.int32)  # each line up to the next one's start
    lines = pa.Array.from_buffers(pa.binary(), len(starts), [None, pa.py_buffer(bounds), pa.py_buffer(data)])
    taken = _matches(lines, _DIRECT_TEXT_RE)
    rows = np.flatnonzero(taken)
    if len(rows) < len(starts):
        lines = lines.filter(pa.array(taken))
    s, e = starts[rows], ends[rows]
    dot = pc.find_substring(lines, ".").to_numpy()  # the end of the video id
    mid = pc.find_substring(lines, _TEXT_MID).to_numpy()  # the end of the clip id
    clip_id = _string_views(data, s + _TEXT_HEAD, mid - _TEXT_HEAD)
    text = _string_views(data, s + mid + len(_TEXT_MID), e - s - mid - len(_TEXT_MID) - 2)
    texts = pa.table({"clip_id": clip_id, "text": text, "offset": base + s}, schema=TEXT_VIEWS)
    return texts, _string_views(data, s + _TEXT_HEAD, dot - _TEXT_HEAD).cast(pa.string()), taken


def _string_views(data: bytes, pos: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The strings data[pos:pos + length] (UTF-8, len(data) < 2**31) as Arrow string
    views built in numpy: no byte is copied until they are cast to strings."""
    n = len(pos)
    whole = np.frombuffer(data, np.uint8)
    if n and int(pos.max()) + 12 <= len(whole):
        head = np.lib.stride_tricks.sliding_window_view(whole, 12)[pos]  # each string's first 12 bytes
    else:  # some within 12 bytes of the end
        head = np.zeros((n, 12), np.uint8)
        inside = pos + 12 <= len(whole)
        if inside.any():
            head[inside] = np.lib.stride_tricks.sliding_window_view(whole, 12)[pos[inside]]
        for i in np.flatnonzero(~inside):
            head[i, :len(whole) - int(pos[i])] = whole[pos[i]:]
    head *= np.arange(12) < lengths[:, None]  # zero-padded
    views = np.zeros((n, 4), np.int32)  # length, then 12 bytes inline or 4-byte prefix, buffer 0, offset
    raw = views.view(np.uint8)
    raw[:, 4:16] = head
    short = lengths <= 12
    views[:, 0] = lengths
    views[:, 2] = np.where(short, views[:, 2], 0)
    views[:, 3] = np.where(short, views[:, 3], pos)
    return pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(raw), pa.py_buffer(data)])


# "HH:MM:SS.mmm": where each byte of the 12 must be a digit (or a digit up to 5), and the
# separators; HD-VILA writes every span so
_FIXED_DIGITS = np.array([0, 1, 3, 4, 6, 7, 9, 10, 11])
_FIXED_SEPARATORS = {2: ord(":"), 5: ord(":"), 8: ord(".")}


def _span_seconds(spans: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(valid, seconds) of each span string as `_HMS_RE` and `parse_span` read it. Spans
    of HD-VILA's fixed "HH:MM:SS.mmm" form are read from their bytes (a regex pass over
    every span cost more than Arrow's JSON parse of them); the others by the regex.
    Seconds are (SS * 1000 + mmm) / 1000, the float closest to the decimal, as
    `float("SS.mmm")` gives."""
    n = len(spans)
    valid, seconds = np.zeros(n, bool), np.zeros(n)
    if not n:
        return valid, seconds
    offsets = np.frombuffer(spans.buffers()[1], np.int32, n + 1, spans.offset * 4)
    data = np.frombuffer(spans.buffers()[2], np.uint8)
    twelve = offsets[1:] - offsets[:-1] == 12
    if spans.null_count:
        twelve &= spans.is_valid().to_numpy(zero_copy_only=False)
    if twelve.all():  # HD-VILA: every span 12 bytes, so the values are an (n, 12) view
        rows, raw = np.arange(n), data[offsets[0]:offsets[-1]].reshape(n, 12)
    else:
        rows = np.flatnonzero(twelve)
        raw = data[offsets[rows][:, None] + np.arange(12)]
    if len(rows):
        digit = raw - np.uint8(ord("0"))  # wraps: every byte but a digit becomes > 9
        fixed = (digit[:, _FIXED_DIGITS] <= 9).all(axis=1) & (digit[:, 3] <= 5) & (digit[:, 6] <= 5)
        for pos, byte in _FIXED_SEPARATORS.items():
            fixed &= raw[:, pos] == byte

        def col(i: int) -> np.ndarray:
            return digit[:, i].astype(np.int64)

        whole = 3600 * (10 * col(0) + col(1)) + 60 * (10 * col(3) + col(4))
        millis = 10000 * col(6) + 1000 * col(7) + 100 * col(9) + 10 * col(10) + col(11)
        seconds[rows[fixed]] = (whole.astype(np.float64) + millis / 1000)[fixed]
        valid[rows[fixed]] = True
    rest = np.flatnonzero(~valid)
    if len(rest):
        hms = pc.extract_regex(spans.take(pa.array(rest)), _HMS_RE)
        ok = pc.fill_null(pc.is_valid(hms), False).to_numpy(zero_copy_only=False)
        hms = hms.filter(pa.array(ok))
        whole = (3600 * pc.cast(pc.struct_field(hms, "h"), pa.int64()).to_numpy()
                 + 60 * pc.cast(pc.struct_field(hms, "m"), pa.int64()).to_numpy())
        seconds[rest[ok]] = whole.astype(np.float64) + pc.cast(pc.struct_field(hms, "s"), pa.float64()).to_numpy()
        valid[rest[ok]] = True
    return valid, seconds


def _check_videos(table: pa.Table, offsets: np.ndarray) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """The video rows (and their clips) that parse_video_line accepts without a failure,
    and a mask of the rows it must see itself."""
    video_id = table.column("video_id").combine_chunks()
    url = table.column("url").combine_chunks()
    lists = table.column("clip").combine_chunks()
    good = _matches(video_id, _VIDEO_ID_RE) & _matches(url, _HTTP_URL_RE) & lists.is_valid().to_numpy(
        zero_copy_only=False)
    clips = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy()
    n = len(clips)
    ok = np.zeros(n, bool)
    start = np.zeros(n)
    end = np.zeros(n)
    k = np.zeros(n, np.int64)
    if n:
        parts = pc.extract_regex(pc.struct_field(clips, "clip_id"), _CLIP_ID_RE)
        k_arr = pc.cast(pc.struct_field(parts, "k"), pa.int32())
        ok = pc.fill_null(pc.and_(pc.greater_equal(k_arr, 1), pc.equal(
            pc.struct_field(parts, "vid"), video_id.take(pa.array(parent)))), False).to_numpy(zero_copy_only=False)
        k = k_arr.fill_null(0).to_numpy(zero_copy_only=False)
        spans = pc.struct_field(clips, "span")
        lengths = pc.fill_null(pc.list_value_length(spans), 0).to_numpy(zero_copy_only=False)
        ok &= lengths == 2
        first = np.cumsum(lengths) - lengths  # where each span's values start in the flat list
        flat = pc.list_flatten(spans)
        both = np.stack([first, first + 1], axis=1)[ok].ravel()
        valid, seconds = _span_seconds(flat if len(both) == len(flat) else flat.take(pa.array(both)))
        pair_ok = valid.reshape(-1, 2).all(axis=1)
        start[ok] = seconds[0::2]
        end[ok] = seconds[1::2]
        ok[ok] = pair_ok
        ok &= end > start
    bad_clip = ~ok
    # in k order within a video: no k twice, no clip starting before the previous one ends
    order = np.lexsort((k, parent))
    p, ko, s, e = parent[order], k[order], start[order], end[order]
    same = p[1:] == p[:-1]
    clash = same & ((ko[1:] == ko[:-1]) | (s[1:] < e[:-1] - _OVERLAP_EPS))
    bad_video = np.bincount(parent[bad_clip], minlength=len(good)) > 0
    bad_video[p[1:][clash]] = True
    good &= ~bad_video
    keep_clips = good[p]
    take = pa.array(order[keep_clips])
    clip_tab = pa.table({
        "video_id": video_id.take(pa.array(p[keep_clips])), "offset": offsets[p[keep_clips]],
        "clip_id": pc.struct_field(clips, "clip_id").take(take), "k": ko[keep_clips].astype(np.int32),
        "start": s[keep_clips], "end": e[keep_clips]}, schema=CLIP_COLUMNS)
    keep = pa.array(good)
    videos = pa.table({"video_id": video_id.filter(keep), "url": url.filter(keep), "offset": offsets[good]},
                      schema=VIDEO_COLUMNS)
    return videos, clip_tab, ~good
