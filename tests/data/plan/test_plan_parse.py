"""The plan from Arrow-block parsing is the plan from per-line parsing, byte for byte: the
part files, the ledger files and the summary, on generated corpora with bad lines."""
from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.executor.base import local_shuffle
from lfvila_data.plan.join import PlanConfig, _take, bucket_of, buckets_of, build_plan, crc32_each
from lfvila_data.sources.hdvila import parse_span
from lfvila_data.sources.hdvila_bulk import (
    _direct_texts,
    _line_bounds,
    _span_seconds,
    parse_text_block,
    parse_text_lines,
)

_TEXTS = ["Hello there.", "  leading and trailing  ", "double  space", "tab\there", "nbsp\u00a0here",
          "ideographic\u3000space", "caf\u00e9 \u00fcber na\u00efve", "emoji \U0001f600 ok", "quote \" and \\ back",
          "new\nline", "", "   ", "sep\x1cchar", "nel\x85x", "del\x7fx", "zero\x00byte", "\u2028ls"]
_BAD_META = [
    "{not json", "", "   ", "\x0b", "[1, 2]", '"str"', "null", '{"video_id": 12, "url": "https://a/b", "clip": []}',
    '{"video_id": "../x", "url": "https://h/x", "clip": []}', '{"video_id": "a", "url": "https://h/a", "clip": {}}',
    '{"video_id": "b", "url": "https://h/b"}', '{"video_id": "c", "url": null, "clip": []}',
    '{"video_id": "d", "url": "https://h/d", "clip": [], "video_id": "e"}',
    '{"video_id": "f", "url": "https://h/f", "clip": []} {"video_id": "g", "url": "https://h/g", "clip": []}',
    '{"video_id": "h", "url": "https://h/h",', '"clip": []}', '{"video_id": "j", "url": "https://h/j\\ud800", "clip": []}',
    '{"video_id": "k", "url": "https://h/k", "clip": [], "x": ' + "[" * 1100 + "]" * 1100 + "}",
    ' {"video_id": "l", "url": "https://h/l", "clip": []} ', '\ufeff{"video_id": "m", "url": "https://h/m", "clip": []}',
    '{"video_id": "n\\n", "url": "https://h/n", "clip": []}', '{"vid\\u0065o_id": "o", "url": "https://h/o", "clip": []}',
    '{"video_id": "p", "url": "https://h/p", "clip": [{"clip_id": "p.1.mp4", "span": ["00:00:01.0", "00:00:02.0", "x"]}]}',
    '{"video_id": "q", "url": "https://h/q", "clip": [{"clip_id": "q.1.mp4", "span": ["00:00:01.", "00:00:02"]}]}',
    ('{"video_id": "r", "url": "https://h/r", "clip": [{"clip_id": "r.1.mp4", "span": ["1:00:01.5", "1:00:02.25"]}, '
    '{"clip_id": "r.2.mp4"}]}'),
]
_BAD_TEXT = [
    "{broken", "", "  \t", "\x0c", "[]", '{"clip_id": "a.1.mp4", "text": 5}', '{"clip_id": "a.3.mp4"}',
    '{"clip_id": "bad id.1.mp4", "text": "x"}', '{"clip_id": "a.0.mp4", "text": "x"}', '{"clip_id": null, "text": "x"}',
    '{"clip_id": "a.4.mp4", "text": "x", "text": "y"}', '{"clip_id": "a.5.mp4", "text": "x"} {"clip_id": "a.6.mp4"}',
    '{"clip_id": "a.7.mp4",', '"text": "z"}', '{"clip_id": "a.8.mp4", "text": "\\ud83d"}',
    '{"clip_id": "a.9.mp4", "text": "x", "e": ' + "[" * 1100 + "]" * 1100 + "}", '{"clip_id": "a.10.mp4\\n", "text": "x"}',
    '{"clip_id": "a.11.mp4", "text": "x", "e": NaN}', '\ufeff{"clip_id": "a.12.mp4", "text": "x"}',
    '{"clip_id": "a.13.mp4", "te\\u0078t": "escaped key"}', '{"clip_id": "a.14.mp4", "text": {"a": 1}}',
]


def _span(t: float) -> str:
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"


def _video(r: random.Random, vid: str, meta: list[str], text: list[str]) -> None:
    """One video line (sometimes with a bad clip, a bad URL, extra fields or a second
    line) and the text lines of its clips (some missing, some twice, escaped or not)."""
    t, clips = 0.0, []
    for k in range(1, r.randint(0, 14) + 1):
        d = r.choice([2.5, 4.0, 7.25, 11.0])
        clips.append({"clip_id": f"{vid}.{k}.mp4", "span": [_span(t), _span(t + d)]})
        t += d + r.choice([0.0, 0.3, 1.0, 5.0])
        if r.random() < 0.93:
            txt = f"{r.choice(_TEXTS)} {k}"
            text.append(json.dumps({"clip_id": f"{vid}.{k}.mp4", "text": txt}, ensure_ascii=r.random() < 0.5))
            if r.random() < 0.03:
                text.append(json.dumps({"clip_id": f"{vid}.{k}.mp4", "text": "again " + txt}))
    if r.random() < 0.1:
        r.shuffle(clips)
    flaw = r.randrange(30)
    if flaw == 0 and clips:
        clips[0]["span"] = [r.choice([1.5, "soon", "01:02.5", None]), "00:00:09.000"]
    elif flaw == 1 and len(clips) > 2:
        clips[2]["span"] = clips[1]["span"]  # overlaps
    elif flaw == 2 and len(clips) > 2:
        clips.append(dict(clips[1]))  # the same k twice
    elif flaw == 3 and clips:
        clips[0]["clip_id"] = r.choice(["other.1.mp4", f"{vid}.0.mp4", 7])
    elif flaw == 4 and clips:
        clips[-1]["span"] = clips[-1]["span"][::-1]
    elif flaw == 5 and clips:
        clips[0] = None
    url = f"https://www.youtube.com/watch?v={vid}"
    if r.random() < 0.03:
        url = r.choice(["ftp://h/x", "file:///etc/passwd", "http://[abc/x", "https://u@h/x", "HTTPS://h/x",
                        "/local/path.mp4", "https:///x"])
    obj = {"video_id": vid, "url": url, "clip": clips}
    if r.random() < 0.02:
        obj["extra"] = {"nested": [1, 2.5, None, True], "nan": float("nan")}
    line = json.dumps(obj, ensure_ascii=r.random() < 0.5)
    meta.append(line)
    if r.random() < 0.02:
        meta.append(line.replace("https://", "http://"))  # a second line of the video


def _write(path: Path, lines: list[str], crlf: bool, trailing: bool, not_utf8: bool = False) -> str:
    data = ("\r\n" if crlf else "\n").join(lines).encode("utf-8", "surrogatepass")
    if not_utf8:  # a bad byte inside one text line's string
        i = data.find(b'"text": "', len(data) // 2) + len(b'"text": "')
        data = data[:i] + b"\xff\xc0\x80" + data[i:]
    path.write_bytes(data + ((b"\r\n" if crlf else b"\n") if trailing else b""))
    return str(path)


def corpus(root: Path, seed: int, videos: int = 150) -> tuple[list[str], list[str]]:
    """Two metadata files (one CRLF, without a final newline) and one text file."""
    r = random.Random(seed)
    meta: list[str] = []
    text: list[str] = []
    for v in range(videos):
        _video(r, f"v{seed}_{v:04d}" + ("-x" if v % 5 == 0 else ""), meta, text)
    for bad in _BAD_META:
        meta.insert(r.randrange(len(meta) + 1), bad)
    for bad in _BAD_TEXT:
        text.insert(r.randrange(len(text) + 1), bad)
    half = len(meta) // 2
    return ([_write(root / "meta0.jsonl", meta[:half], crlf=False, trailing=True),
             _write(root / "meta1.jsonl", meta[half:], crlf=True, trailing=False)],
            [_write(root / "text.jsonl", text, crlf=bool(seed % 2), trailing=True, not_utf8=True)])


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "plan").iterdir())}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", [PlanConfig(num_buckets=3, chunk_bytes=997),  # ranges cut lines
                                 PlanConfig(min_clips=2, max_clips=3, allow_local_files=True)])
def test_arrow_blocks_and_per_line_give_the_same_plan_files(tmp_path, seed, cfg):
    meta, text = corpus(tmp_path, seed)
    summaries = [build_plan(meta, text, str(tmp_path / f"out-{per_line}"), cfg, shuffle=local_shuffle,
                            progress=lambda m: None, per_line=per_line) for per_line in (True, False)]
    assert summaries[0] == summaries[1]
    per_line, arrow = _files(tmp_path / "out-True"), _files(tmp_path / "out-False")
    assert list(per_line) == list(arrow)
    for name in per_line:
        assert per_line[name] == arrow[name], name
    assert sum(summaries[0].failures_by_stage.values()) > 30  # the bad lines and clips, and clips without text
    assert summaries[0].samples > 20


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.text(max_size=40), max_size=50), offset=st.integers(0, 3), num_buckets=st.integers(1, 64))
def test_vectorised_buckets_are_bucket_of(ids, offset, num_buckets):
    """The map's vectorised CRC-32 puts every id in the bucket `bucket_of` names, so a
    video's clips, texts and failures meet whichever path parsed them."""
    values = pa.array(["pad"] * offset + ids, pa.string()).slice(offset)
    assert list(crc32_each(values)) == [zlib.crc32(v.encode()) for v in ids]
    assert list(buckets_of(values, num_buckets)) == [bucket_of(v, num_buckets) for v in ids]


_TWELVE = st.from_regex(r"[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}", fullmatch=True)


@settings(max_examples=30, deadline=None)
@given(spans=st.one_of(st.lists(st.one_of(st.none(), _TWELVE, st.text(alphabet="0123456789:.5a", max_size=14)),
                                max_size=40),
                       st.lists(_TWELVE, max_size=40)),  # all 12 bytes: read as one (n, 12) view
       offset=st.integers(0, 3))
def test_span_seconds_read_from_bytes_are_parse_span(spans, offset):
    """Spans of the fixed "HH:MM:SS.mmm" form, read from their bytes, are valid exactly
    when the span regex accepts them and give `parse_span`'s float to the last bit."""
    valid, seconds = _span_seconds(pa.array(["pad"] * offset + spans, pa.string()).slice(offset))
    for span, ok, got in zip(spans, valid, seconds):
        want = span is not None and re.fullmatch(r"[0-9]{1,9}:[0-5][0-9]:[0-5][0-9](\.[0-9]+)?", span) is not None
        assert ok == want, span
        if want:
            assert got == parse_span(span), span


_DIRECT = [  # (line, read straight from its bytes)
    ('{"clip_id": "abc.1.mp4", "text": "Hello there."}', True), ('{"clip_id": "abc.2.mp4", "text": ""}', True),
    ('{"clip_id": "abc.3.mp4", "text": "twelve bytes"}', True), ('{"clip_id": "abc.4.mp4", "text": "thirteen byte"}', True),
    ('{"clip_id": "' + "v" * 128 + '.9999999.mp4", "text": "long id"}', True),
    ('{"clip_id": "a_b-C.12.mp4", "text": "x! #[]~ y"}\r', True),
    ('{"clip_id": "abc.01.mp4", "text": "leading zero k"}', False), ('{"clip_id": "abc.0.mp4", "text": "k 0"}', False),
    ('{"clip_id": "abc.12345678.mp4", "text": "k too long"}', False),
    ('{"clip_id": "' + "v" * 129 + '.1.mp4", "text": "id too long"}', False),
    ('{"clip_id": "abc.5.mp4", "text": " lead"}', False), ('{"clip_id": "abc.6.mp4", "text": "a  b"}', False),
    ('{"clip_id": "abc.7.mp4", "text": "trail "}', False), ('{"clip_id": "abc.8.mp4", "text": "del\x7f"}', False),
    ('{"clip_id": "abc.9.mp4", "text": "q \\" q"}', False), ('{"clip_id": "abc.10.mp4", "text": "caf\\u00e9"}', False),
    ('{"clip_id": "abc.11.mp4", "text": "caf\u00e9 raw"}', False),
    ('{"clip_id":"abc.12.mp4","text":"compact"}', False), ('{"clip_id": "abc.13.mp4", "text": "a", "text": "b"}', False),
    ('{"clip_id": "abc.14.mp4", "text": "tab\there"}', False), ("", False), ("   ", False), ("{broken", False),
    ('{"clip_id": "z.15.mp4", "text": "x"}', True),  # the last line, no newline: its text ends the data
]


def test_text_lines_read_from_bytes_are_the_per_line_parse():
    """Clip-text lines of json.dumps's shape with plain ASCII text are read from their
    bytes (no JSON parse), and give the rows and ledger rows the per-line parser gives;
    every other line still goes through Arrow or the per-line parser."""
    data = "\n".join(line for line, _ in _DIRECT).encode()
    starts, ends = _line_bounds(data, 0, len(data))
    *_, taken = _direct_texts(data, 7, starts, ends)
    assert list(taken) == [direct for _, direct in _DIRECT]
    block = parse_text_block(data, 7)
    lines = [(7 + int(s), data[s:e]) for s, e in zip(starts, ends) if data[s:e].strip()]
    want = parse_text_lines(lines)
    order = pc.sort_indices(block.texts.column("offset"))
    assert block.texts.take(order).equals(want.texts)
    assert block.video_ids.take(order).equals(want.video_ids)
    assert (block.failures, block.lines) == (want.failures, want.lines)


@pytest.mark.parametrize("values", [["a" * 20, "b", "", "c" * 13, "d" * 12], ["a" * 20, None, "b"]])
def test_take_of_string_views_is_arrow_take_of_strings(values):
    """The map reorders the texts as string views (which Arrow cannot take) and copies them
    once, in bucket order: the rows are those Arrow's take gives of the strings."""
    chunks = [pa.array(values[:2], pa.string_view()), pa.array(values[2:], pa.string_view())]
    table = pa.table({"text": pa.chunked_array(chunks), "n": pa.chunked_array([[0, 1], list(range(2, len(values)))])})
    rows = np.array([2, 0, 1, 0] + list(range(3, len(values))))
    got = _take(table, rows)
    assert got.schema == table.schema
    want = table.cast(pa.schema([("text", pa.string()), ("n", pa.int64())])).take(pa.array(rows))
    assert got.cast(want.schema).equals(want)
