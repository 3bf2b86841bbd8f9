"""The byte sizes of a sample's json and txt members, for a whole bucket of manifest rows
at once, without building them: shard planning packs by tar bytes, and building every
member in Python just to measure it cost ~0.9 CPU-ms per sample.

The json is `write.sample_json` dumped with sorted keys and default separators, so its
length is fixed punctuation plus the length of each value: a string is its UTF-8 bytes,
two quotes and its escapes (`json` with ensure_ascii=False escapes `"`, `\\` and the
control characters below 0x20 only); a float is its `repr`. The floats of a manifest are
times and rates rounded to the microsecond, whose `repr` is their decimal digits, so its
length follows from the integer number of microseconds. Each row this arithmetic cannot
vouch for (a float with more digits, below 1e-4, non-finite or null; a time whose
rounding to the microsecond is a near tie; a QA sample; a missing field) is flagged, and
the caller measures it the slow way: the sizes are always those of the real members."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# json escapes these as two characters (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`) ...
_ESCAPE_2 = r'["\\\x08\x0c\n\r\t]'
# ... and the other control characters as six (`\u00XX`)
_ESCAPE_6 = r"[\x00-\x07\x0b\x0e-\x1f]"
_ESCAPE_ANY = r'[\x00-\x1f"\\]'
_MICRO = 1e6
_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)


def _skeleton(keys: tuple[str, ...]) -> int:
    """Bytes of a sorted-key json object with these keys, without its values."""
    return len(json.dumps(dict.fromkeys(keys), sort_keys=True)) - 4 * len(keys)


# the keys of `write.sample_json` (a QA sample's "qa" aside), a clip's and a sentence's
_SAMPLE = _skeleton(("key", "video_id", "url", "source", "start", "end", "duration", "fps", "width",
                     "height", "frames", "n_clips", "clips", "text_source", "language", "task", "split"))
_CLIP = _skeleton(("clip_id", "start", "end", "source_start", "source_end", "text", "sentences"))
_SENTENCE = _skeleton(("text", "start", "end"))


def _list_len(items: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Bytes of a json list of `count` items whose lengths add up to `items`."""
    return 2 + items + 2 * np.maximum(count - 1, 0)


def int_len(v: np.ndarray) -> np.ndarray:
    """Characters of each integer's `str`."""
    v = np.asarray(v, dtype=np.int64)
    return 1 + np.searchsorted(_POW10, np.abs(v), side="right") + (v < 0)


def string_len(s: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bytes of each string as a json value (a null is `null`), its UTF-8 bytes (0 for a
    null), and whether it is a string."""
    if len(s) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    body = np.asarray(pc.fill_null(pc.binary_length(s), 0).to_numpy(zero_copy_only=False), np.int64)
    valid = ~np.asarray(s.is_null().to_numpy(zero_copy_only=False), bool)
    escaped = np.where(valid, body + 2, 4)
    # escapes are rare: count them only in the strings that have any
    some = np.flatnonzero(np.asarray(pc.fill_null(pc.match_substring_regex(s, _ESCAPE_ANY), False)
                                     .to_numpy(zero_copy_only=False), bool))
    if len(some):
        few = s.take(pa.array(some))
        escaped[some] += (np.asarray(pc.count_substring_regex(few, _ESCAPE_2).to_numpy(zero_copy_only=False), np.int64)
                          + 5 * np.asarray(pc.count_substring_regex(few, _ESCAPE_6).to_numpy(zero_copy_only=False),
                                           np.int64))
    return escaped, body, valid


def float_len(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Characters of each float's `repr`, and whether it is vouched for: a finite number
    that is the double nearest a decimal of at most 6 decimals and 15 digits, at least
    1e-4 away from 0 (or 0), whose `repr` is those digits without trailing zeros."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.rint(x * _MICRO)
        ok = np.isfinite(x) & (np.abs(m) < 1e15)
        m = np.where(ok, m, 0)
        ok &= (m / _MICRO == x) & ((x == 0) | (np.abs(x) >= 1e-4))
    a = np.abs(m).astype(np.int64)
    whole, frac = a // 1_000_000, a % 1_000_000
    zeros = np.zeros(len(a), np.int64)
    for k in range(1, 6):  # trailing zeros of the fraction's six digits
        zeros += (frac % 10 ** k == 0) & (frac > 0)
    digits = np.where(frac == 0, 1, 6 - zeros)
    length = np.signbit(x) + int_len(whole) + 1 + digits
    return np.where(ok, length, 0), ok


def relative(t: np.ndarray, origin: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`records.relative_time(t, origin, limit)` elementwise, and whether it is exactly
    Python's: `round(y, 6)` rounds y's exact value, which `rint(y * 1e6)` matches unless
    the product lies within its rounding error of a tie."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = (t - origin) * _MICRO
        m = np.rint(p)
        tie = np.abs(np.abs(p - m) - 0.5) <= np.abs(p) * 1e-15 + 1e-12
        ok = np.isfinite(p) & (np.abs(m) < 2 ** 53) & ~tie
        r = np.where(ok, m, 0) / _MICRO
    rel = np.where(r > 0, r, 0.0)  # max(0.0, r): never -0.0
    return np.where(rel > limit, limit, rel), ok  # min(rel, limit): the first unless the limit is less


def _column(t: pa.Table, name: str) -> pa.Array:
    return t[name].combine_chunks() if t.num_rows else pa.array([], t.schema.field(name).type)


def _numbers(a: pa.Array, fill: float = np.nan) -> np.ndarray:
    return np.asarray(pc.fill_null(a.cast(pa.float64()), fill).to_numpy(zero_copy_only=False), np.float64)


def _text_or(s: pa.Array, default: str | None) -> pa.Array:
    """`write._text_or` over an array: a non-empty string, else the default."""
    empty = pc.fill_null(pc.equal(s, ""), True)
    return pc.if_else(empty, pa.scalar(default, pa.string()), s)


def _per_row(parents: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    return np.bincount(parents, weights=values, minlength=rows).astype(np.int64)


def member_lengths(rows: pa.Table, tasks: dict[str, str], default_task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(json bytes, txt bytes, vouched) of every manifest row's members; a row not
    vouched for has meaningless lengths and must be measured from its real members.
    `tasks` maps a source to the json's `task` (`write.BENCHMARK_TASKS`)."""
    n = rows.num_rows
    bad = np.zeros(n, bool)
    start, duration = _numbers(_column(rows, "start")), _numbers(_column(rows, "duration"))
    total = np.full(n, _SAMPLE, np.int64)
    for name in ("start", "end", "duration", "fps"):
        length, ok = float_len(_numbers(_column(rows, name)))
        total += length
        bad |= ~ok
    for name in ("width", "height", "bytes"):
        a = _column(rows, name)
        bad |= np.asarray(a.is_null().to_numpy(zero_copy_only=False), bool)
        if name != "bytes":
            total += int_len(np.asarray(pc.fill_null(a, 0).to_numpy(zero_copy_only=False)))
    total += int_len(np.asarray(pc.fill_null(_column(rows, "frames"), 0).to_numpy(zero_copy_only=False)))
    source = _text_or(_column(rows, "source"), "hdvila")
    names = pc.unique(source)
    task_len = np.array([len(json.dumps(tasks.get(v, default_task))) for v in names.to_pylist()] or [0], np.int64)
    total += task_len[np.asarray(pc.index_in(source, names).to_numpy(zero_copy_only=False), np.int64)] if n else 0
    strings = [_column(rows, "key"), _column(rows, "video_id"), _column(rows, "url"), source,
               _text_or(_column(rows, "text_source"), "metadata"),
               _text_or(_column(rows, "language"), None), _text_or(_column(rows, "split"), None)]
    for i, s in enumerate(strings):
        length, _, valid = string_len(s)
        total += length
        if i < 3:  # key, video_id, url: a row without one is not a sample to vouch for
            bad |= ~valid
    bad |= ~np.asarray(pc.fill_null(pc.equal(_column(rows, "qa"), ""), True).to_numpy(zero_copy_only=False), bool)

    clips = _column(rows, "clips")
    bad |= np.asarray(clips.is_null().to_numpy(zero_copy_only=False), bool)
    n_clips = np.asarray(pc.fill_null(pc.list_value_length(clips), 0).to_numpy(zero_copy_only=False), np.int64)
    total += int_len(n_clips)
    flat = pc.list_flatten(clips)
    parent = np.asarray(pc.list_parent_indices(clips).to_numpy(zero_copy_only=False), np.int64)
    cstart = _numbers(pc.struct_field(flat, "start"))
    cend = _numbers(pc.struct_field(flat, "end"))
    ctext = pc.struct_field(flat, "text")
    origin, limit = start[parent], duration[parent]
    clip_len = np.full(len(flat), _CLIP, np.int64)
    clip_bad = np.zeros(len(flat), bool)
    rel = {}
    for name, value in (("start", cstart), ("end", cend)):
        length, ok = float_len(value)  # source_start, source_end
        rel[name], rok = relative(value, origin, limit)
        rlength, rlok = float_len(rel[name])
        clip_len += length + rlength
        clip_bad |= ~(ok & rok & rlok)
    clip_len += string_len(pc.struct_field(flat, "clip_id"))[0]
    text_len, text_bytes, has_text = string_len(ctext)
    clip_len += text_len

    # sentences: as written, or the clip itself when a build wrote none (`Clip.timed_sentences`)
    sentences = pc.struct_field(flat, "sentences")
    n_sent = np.asarray(pc.fill_null(pc.list_value_length(sentences), 0).to_numpy(zero_copy_only=False), np.int64)
    truthy = has_text & (text_bytes > 0)
    own = (n_sent == 0) & truthy
    sflat = pc.list_flatten(sentences)
    sparent = np.asarray(pc.list_parent_indices(sentences).to_numpy(zero_copy_only=False), np.int64)
    s_len = np.full(len(sflat), _SENTENCE, np.int64) + string_len(pc.struct_field(sflat, "text"))[0]
    s_bad = np.zeros(len(sflat), bool)
    for name in ("start", "end"):
        value = _numbers(pc.struct_field(sflat, name))
        r, rok = relative(value, origin[sparent], limit[sparent])
        length, ok = float_len(r)
        s_len += length
        s_bad |= ~(np.isfinite(value) & rok & ok)
    own_len = _SENTENCE + text_len + float_len(rel["start"])[0] + float_len(rel["end"])[0]
    items = _per_row(sparent, s_len, len(flat)) + np.where(own, own_len, 0)
    clip_len += _list_len(items, n_sent + own)
    clip_bad |= _per_row(sparent, s_bad, len(flat)) > 0

    total += _list_len(_per_row(parent, clip_len, n), n_clips)
    bad |= _per_row(parent, clip_bad, n) > 0
    # the txt: the truthy clip texts joined by single spaces (`records.paragraph`)
    k = _per_row(parent, truthy, n)
    txt = _per_row(parent, text_bytes, n) + np.maximum(k - 1, 0)
    return total, txt, ~bad
