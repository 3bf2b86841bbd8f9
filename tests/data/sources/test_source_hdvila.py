"""Rules of the HD-VILA metadata readers: paths, spans, line parsers, byte ranges."""
from __future__ import annotations

import json

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.inputs import InputError, expand_paths, iter_line_ranges, read_lines_in_range
from lfvila_data.records import Clip, FailureCode, VideoMeta
from lfvila_data.sources.hdvila import parse_span, parse_text_line, parse_video_line
from lfvila_data.sources.hdvila_bulk import (
    PY_WHITESPACE,
    parse_text_block,
    parse_text_lines,
    parse_video_block,
    parse_video_lines,
)

VID = "QMi8x8o55Ns"

C = FailureCode


def video_line(video_id=VID, url=None, clips=None, **extra) -> str:
    url = f"https://www.youtube.com/watch?v={video_id}" if url is None else url
    if clips is None:
        clips = [{"clip_id": f"{video_id}.1.mp4", "span": ["00:00:17.759", "00:00:23.279"]},
                 {"clip_id": f"{video_id}.2.mp4", "span": ["00:00:23.279", "00:00:30.000"]}]
    return json.dumps({"video_id": video_id, "url": url, "clip": clips, **extra})


def clip(k, start, end, video_id=VID):
    return {"clip_id": f"{video_id}.{k}.mp4", "span": [start, end]}


# --- expand_paths ---------------------------------------------------------------------

def test_expand_paths_globs_dedupes_and_sorts(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "sub.jsonl").mkdir()  # a directory matching the glob is not an input
    got = expand_paths([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert got == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


@pytest.mark.parametrize("pattern", ["nothing-*.jsonl", "missing.jsonl"])
def test_expand_paths_without_match_is_an_input_error(tmp_path, pattern):
    with pytest.raises(InputError, match="input"):
        expand_paths([str(tmp_path / pattern)])


def test_expand_paths_keeps_the_url_protocol():
    fs = fsspec.filesystem("memory")
    fs.pipe("/lfvila-src/part0.jsonl", b"{}\n")
    fs.pipe("/lfvila-src/part1.jsonl", b"{}\n")
    assert expand_paths(["memory://lfvila-src/part*.jsonl"]) == [
        "memory:///lfvila-src/part0.jsonl", "memory:///lfvila-src/part1.jsonl"]


# --- parse_span -----------------------------------------------------------------------

@pytest.mark.parametrize("value,seconds", [
    ("00:00:17.759", 17.759), ("01:02:03.5", 3723.5), ("02:03.250", 123.25), ("17.759", 17.759),
    ("75", 75.0), (" 00:00:01.000 ", 1.0), (3, 3.0), (2.5, 2.5), ("10:00:00", 36000.0),
])
def test_parse_span_accepts_hdvila_and_short_forms(value, seconds):
    assert parse_span(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "", "abc", "00:00:xx", "1:2:3:4", "-1", "00:-1:00", "00:60:00", "00:00:60.0", "1e3",
    "nan", None, True, [1], float("inf"), -0.5, "00:00:17,759",
])
def test_parse_span_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_span(value)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_span_of_formatted_time(h, m, s, ms):
    assert parse_span(f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}") == pytest.approx(
        h * 3600 + m * 60 + s + ms / 1000)


# --- parse_video_line -----------------------------------------------------------------

def test_parse_video_line_good_line():
    video, failures = parse_video_line(video_line(), allow_local_files=False)
    assert failures == []
    assert video == VideoMeta(VID, f"https://www.youtube.com/watch?v={VID}", (
        Clip(f"{VID}.1.mp4", 1, 17.759, 23.279), Clip(f"{VID}.2.mp4", 2, 23.279, 30.0)))


def _video_failure(line, allow_local_files=False):
    video, failures = parse_video_line(line, allow_local_files=allow_local_files)
    assert video is None and len(failures) == 1
    assert failures[0].stage == "metadata" and failures[0].clip_id is None
    return failures[0]


@pytest.mark.parametrize("line,words,code", [
    ("{not json", "malformed JSON", C.BAD_LINE),
    (b"\xff\xfe{}", "malformed JSON", C.BAD_LINE),
    ("[1, 2]", "not a JSON object", C.BAD_LINE),
    (json.dumps({"url": "https://x/y", "clip": []}), "'video_id'", C.BAD_LINE),
    (video_line(video_id="../x"), "unsafe 'video_id' '../x'", C.UNSAFE_ID),
    (video_line(video_id="a/b"), "unsafe 'video_id' 'a/b'", C.UNSAFE_ID),
    (video_line(video_id=".."), "unsafe", C.UNSAFE_ID),
    (video_line(video_id=""), "unsafe", C.UNSAFE_ID),
    (json.dumps({"video_id": 7, "url": "https://x", "clip": []}), "non-string 'video_id'", C.BAD_LINE),
])
def test_parse_video_line_unknown_video(line, words, code):
    failure = _video_failure(line)
    assert failure.video_id is None
    assert words in failure.reason and failure.code is code


@pytest.mark.parametrize("line,words,code", [
    (json.dumps({"video_id": VID, "clip": []}), "'url'", C.BAD_LINE),
    (video_line(url="ftp://host/v.mp4"), "is not http(s)", C.BAD_URL),
    (video_line(url="file:///data/v.mp4"), "is not http(s)", C.BAD_URL),
    (video_line(url="/data/v.mp4"), "is not http(s)", C.BAD_URL),
    (video_line(url="https:///nohost"), "is not http(s)", C.BAD_URL),
    (json.dumps({"video_id": VID, "url": "https://x/y"}), "'clip'", C.BAD_LINE),
    (video_line(clips={"a": 1}), "non-list 'clip'", C.BAD_LINE),
])
def test_parse_video_line_bad_video_fields(line, words, code):
    failure = _video_failure(line)
    assert failure.video_id == VID
    assert words in failure.reason and failure.code is code


@pytest.mark.parametrize("url", ["file:///data/v.mp4", "/data/v.mp4", "rel/v.mp4", "http://h/v"])
def test_local_files_only_when_allowed(url):
    video, failures = parse_video_line(video_line(url=url), allow_local_files=True)
    assert failures == [] and video.url == url
    assert _video_failure(video_line(url="s3://b/v.mp4"), allow_local_files=True)


C3 = f"{VID}.3.mp4"


@pytest.mark.parametrize("bad,clip_id,words,code", [
    ({"clip_id": "other.3.mp4", "span": ["00:00:40", "00:00:41"]}, "other.3.mp4",
     "belongs to video 'other'", C.BAD_CLIP_ID),
    ({"clip_id": f"{VID}.x.mp4", "span": ["00:00:40", "00:00:41"]}, None, "is not <video_id>.<k>.mp4", C.BAD_CLIP_ID),
    ({"clip_id": f"{VID}.0.mp4", "span": ["00:00:40", "00:00:41"]}, None, "k >= 1", C.BAD_CLIP_ID),
    ({"clip_id": f"{VID}/3.mp4", "span": ["00:00:40", "00:00:41"]}, None, "is not <video_id>", C.BAD_CLIP_ID),
    ({"span": ["00:00:40", "00:00:41"]}, None, "'clip_id' None", C.BAD_CLIP_ID),
    ({"clip_id": C3, "span": ["00:00:40", "soon"]}, C3, "unparsable 'span'", C.BAD_SPAN),
    ({"clip_id": C3, "span": ["00:00:40"]}, C3, "is not [start, end]", C.BAD_SPAN),
    ({"clip_id": C3}, C3, "'span' None", C.BAD_SPAN),
    ({"clip_id": C3, "span": ["00:00:41", "00:00:40"]}, C3, "is not after", C.BAD_SPAN),
    ({"clip_id": C3, "span": ["00:00:40", "00:00:40"]}, C3, "is not after", C.BAD_SPAN),
    ("just a string", None, "not an object", C.BAD_LINE),
])
def test_a_bad_clip_only_removes_that_clip(bad, clip_id, words, code):
    line = video_line(clips=[clip(1, "00:00:01", "00:00:02"), clip(2, "00:00:02", "00:00:03"), bad,
                             clip(4, "00:00:50", "00:00:51")])
    video, failures = parse_video_line(line, allow_local_files=False)
    assert [c.k for c in video.clips] == [1, 2, 4]
    assert len(failures) == 1
    assert (failures[0].video_id, failures[0].clip_id, failures[0].stage) == (VID, clip_id, "metadata")
    assert words in failures[0].reason and failures[0].code is code


def test_clips_are_sorted_by_k_and_overlaps_fail():
    line = video_line(clips=[clip(3, "00:00:20", "00:00:30"), clip(1, "00:00:00", "00:00:10"),
                             clip(2, "00:00:09", "00:00:15"),  # overlaps clip 1
                             clip(4, "00:00:05", "00:00:08"),  # out of time order
                             clip(5, "00:00:30", "00:00:31")])  # touching clip 3 is fine
    video, failures = parse_video_line(line, allow_local_files=False)
    assert [c.k for c in video.clips] == [1, 3, 5]
    assert [f.clip_id for f in failures] == [f"{VID}.2.mp4", f"{VID}.4.mp4"]
    assert "before the previous clip" in failures[0].reason
    assert {f.code for f in failures} == {C.OVERLAPPING_CLIP}


def test_duplicate_k_fails_the_duplicate():
    line = video_line(clips=[clip(1, "00:00:00", "00:00:10"), clip(2, "00:00:10", "00:00:12"),
                             {"clip_id": f"{VID}.02.mp4", "span": ["00:00:12", "00:00:14"]}])
    video, failures = parse_video_line(line, allow_local_files=False)
    assert [(c.clip_id, c.end) for c in video.clips] == [(f"{VID}.1.mp4", 10), (f"{VID}.2.mp4", 12)]
    assert [(f.clip_id, f.code, f.reason) for f in failures] == [
        (f"{VID}.02.mp4", C.DUPLICATE, "duplicate clip number k=2")]


def test_video_without_clips_is_not_a_failure():
    assert parse_video_line(video_line(clips=[]), allow_local_files=False) == (
        VideoMeta(VID, f"https://www.youtube.com/watch?v={VID}", ()), [])


# --- parse_text_line ------------------------------------------------------------------

def test_parse_text_line():
    assert parse_text_line(json.dumps({"clip_id": f"{VID}.1.mp4", "text": "Hi."})) == (f"{VID}.1.mp4", "Hi.")
    assert parse_text_line(json.dumps({"clip_id": f"{VID}.1.mp4", "text": "  "})) == (f"{VID}.1.mp4", "")
    spaced = json.dumps({"clip_id": f"{VID}.1.mp4", "text": " so\n we  go "})
    assert parse_text_line(spaced) == (f"{VID}.1.mp4", "so we go")  # whitespace normalised
    assert parse_text_line(json.dumps({"clip_id": f"{VID}.1.mp4", "text": None})) == (f"{VID}.1.mp4", "")


@pytest.mark.parametrize("line,video_id,words,code", [
    ("{oops", None, "malformed JSON", C.BAD_LINE),
    ('"str"', None, "not a JSON object", C.BAD_LINE),
    (json.dumps({"clip_id": "../x.1.mp4", "text": "a"}), None, "is not <video_id>", C.BAD_CLIP_ID),
    (json.dumps({"text": "a"}), None, "'clip_id' None", C.BAD_CLIP_ID),
    (json.dumps({"clip_id": f"{VID}.1.mp4"}), VID, "missing field 'text'", C.BAD_LINE),
    (json.dumps({"clip_id": f"{VID}.1.mp4", "text": 5}), VID, "not a string", C.BAD_LINE),
])
def test_parse_text_line_failures(line, video_id, words, code):
    failure = parse_text_line(line)
    assert failure.stage == "text" and failure.video_id == video_id and words in failure.reason
    assert failure.code is code


# --- byte ranges ----------------------------------------------------------------------

def _expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for raw in data.split(b"\n"):
        if pos >= len(data):
            break
        out.append((pos, raw[:-1] if raw.endswith(b"\r") else raw))
        pos += len(raw) + 1
    return out


def _read_all(path: str, chunk: int) -> list[tuple[int, bytes]]:
    return [item for r in iter_line_ranges(path, chunk) for item in read_lines_in_range(*r)]


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.text(alphabet="ab{}\"é \r", max_size=12).map(str.encode), max_size=12),
       crlf=st.booleans(), trailing=st.booleans(), chunk=st.integers(1, 40))
def test_every_line_is_read_exactly_once(tmp_path_factory, lines, crlf, trailing, chunk):
    eol = b"\r\n" if crlf else b"\n"
    data = eol.join(line.replace(b"\r", b"") for line in lines) + (eol if trailing and lines else b"")
    path = tmp_path_factory.mktemp("ranges") / "f.jsonl"
    path.write_bytes(data)
    assert _read_all(str(path), chunk) == _expected_lines(data)


def test_ranges_cover_the_file_and_handle_edges(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"")
    assert iter_line_ranges(str(path), 4) == []
    path.write_bytes(b"one\n\ntwo\r\nthree")
    assert iter_line_ranges(str(path), 6) == [(str(path), 0, 6), (str(path), 6, 12), (str(path), 12, 15)]
    for chunk in range(1, 17):
        assert [line for _, line in _read_all(str(path), chunk)] == [b"one", b"", b"two", b"three"]
    with pytest.raises(ValueError):
        iter_line_ranges(str(path), 0)


def test_ranges_work_through_fsspec_urls():
    data = b"".join(json.dumps({"clip_id": f"v.{k}.mp4", "text": "x" * k}).encode() + b"\n"
                    for k in range(1, 50))
    fsspec.filesystem("memory").pipe("/lfvila-ranges/t.jsonl", data)
    assert _read_all("memory://lfvila-ranges/t.jsonl", 97) == _expected_lines(data)


# --- the Arrow block parsers equal the line parsers ---------------------------------------

# one line each; texts and URLs are filled in by hypothesis
_VIDEO_LINES = [
    video_line(), video_line("other_id-1"), video_line(clips=[]), video_line(extra={"a": [1, None]}),
    video_line(clips=[clip(2, "00:00:05.000", "00:00:09.5"), clip(1, "00:00:01.000", "00:00:04.000")]),
    video_line(clips=[clip(1, "00:00:01.000", "00:00:04.000"), clip(2, "00:00:03.000", "00:00:09.000")]),
    video_line(clips=[clip(1, "00:00:01.000", "00:00:04.000"), clip(1, "00:00:05.000", "00:00:09.000")]),
    video_line(clips=[clip(1, "00:00:04.000", "00:00:01.000")]), video_line(clips=[clip(0, "00:00:01", "00:00:02")]),
    video_line(clips=[clip(1, 1.5, 2.5)]), video_line(clips=[clip(1, "01:02.5", "01:04")]),
    video_line(clips=[clip(1, "00:00:01.", "00:00:02.000")]), video_line(clips=[clip(1, "soon", None)]),
    video_line(clips=[{"clip_id": f"{VID}.1.mp4", "span": ["00:00:01.000", "00:00:02.000", "00:00:03.000"]}]),
    video_line(clips=[{"clip_id": f"{VID}.1.mp4"}, None]), video_line(clips=[clip(1, "0:0:1", "0:0:2", "elsewhere")]),
    video_line(clips=[clip(1, "1:00:01.5", "1:00:02.25"), {"clip_id": f"{VID}.0000002.mp4",
                                                           "span": ["1:00:02.25", "1:00:07.125"]}]),
    video_line("../up"), video_line("n\n"), video_line(url="ftp://h/x"), video_line(url="file:///etc/passwd"),
    video_line(url="http://[abc/x"), video_line(url="https://u@h/x"), video_line(url="HTTPS://h/x"),
    video_line(url="https:///x"), video_line(url="https://h/\ud800"), video_line(url="/local/v.mp4"),
    '{"video_id": 12, "url": "https://a/b", "clip": []}', '{"video_id": "a", "url": "https://h/a", "clip": {}}',
    '{"video_id": "b", "url": "https://h/b"}', '{"video_id": "c", "url": null, "clip": []}',
    '{"video_id": "d", "url": "https://h/d", "clip": [], "video_id": "e"}',
    '{"vid\\u0065o_id": "o", "url": "https://h/o", "clip": []}',
    video_line()[:-1] + ', "deep": ' + "[" * 1100 + "]" * 1100 + "}",  # too deep for Python's json
]
_TEXT_LINES = [  # $C: a clip id, $T: a JSON string, $N: nested brackets
    '{"clip_id": "$C", "text": $T}', '{"clip_id": "$C", "text": $T, "text": "again"}',
    '{"clip_id": "$C", "te\\u0078t": $T}', '{"text": $T, "clip_id": "$C", "x": NaN}',
    '{"clip_id": "$C\\n", "text": $T}', '{"clip_id": "$C", "text": $T, "nest": $N}',
    '{"clip_id": "$C", "text": null}', '{"clip_id": "$C"}', '{"clip_id": "$C", "text": 5}',
    '{"clip_id": "bad id.1.mp4", "text": $T}', '{"clip_id": "' + VID + '.0.mp4", "text": $T}',
    '{"clip_id": "$C", "text": {"a": 1}}',
]
_BAD_LINES = ["{not json", "", "   ", "\x0b", "[1, 2]", '"str"', "null", "\ufeff{}", ' {"clip_id": "v.1.mp4"} ',
              '{"clip_id": "v.2.mp4", "text": "a"} {"clip_id": "v.3.mp4", "text": "b"}', '{"clip_id": "v.4.mp4",',
              '"text": "split over two lines"}', '{"clip_id": "v.5.mp4", "text": "\\ud83d"}', "\xff", "\xed\xa0\x80"]
_NOT_UTF8 = ['{"clip_id": "v.6.mp4", "text": "\xff"}', '{"clip_id": "v.7.mp4", "text": "\xed\xa0\x80"}',
             '{"clip_id": "v.8.mp4", "text": "ok", "x": "\xc0\x80"}', "\xff", "\xed\xa0\x80"]
_BAD_LINES += _NOT_UTF8[:3]
_TEXTS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["  lead and trail  ", "two  spaces", "tab\there", "nbsp\u00a0x", "wide\u3000x", "\u2028", "sep\x1c",
     "\x85", "del\x7f", "nul\x00", "emoji \U0001f600", "\\ \" /", ""])


def _line(template: str, text: str, k: int, ascii_only: bool, depth: int) -> str:
    return template.replace("$C", f"{VID}.{k}.mp4").replace("$N", "[" * depth + "]" * depth).replace(
        "$T", json.dumps(text, ensure_ascii=ascii_only))


def _encode(lines: list[str], crlf: bool) -> bytes:
    # latin-1 for the lines that stand for raw bytes which are not UTF-8
    raw = [line.encode("latin-1") if line in _NOT_UTF8 else line.encode("utf-8", "surrogatepass")
           for line in lines]
    return (b"\r\n" if crlf else b"\n").join(raw) + (b"\r\n" if crlf else b"\n")


def _nonblank(data: bytes, base: int) -> list[tuple[int, bytes]]:
    return [(base + o, ln) for o, ln in _expected_lines(data) if ln.strip()]


def _assert_same_block(fast, slow) -> None:
    for name in ("videos", "clips", "texts"):
        if hasattr(fast, name):
            a, b = getattr(fast, name), getattr(slow, name)
            order = [(c, "ascending") for c in ("offset", "k") if c in a.column_names]
            assert a.schema == b.schema
            assert a.sort_by(order).to_pylist() == b.sort_by(order).to_pylist()
    if hasattr(fast, "video_ids"):
        assert sorted(zip(fast.texts.column("offset").to_pylist(), fast.video_ids.to_pylist())) == \
            sorted(zip(slow.texts.column("offset").to_pylist(), slow.video_ids.to_pylist()))
    assert fast.failures == slow.failures  # the same rows, in line order
    assert fast.lines == slow.lines


_TEXT_LINE = st.tuples(st.sampled_from(_TEXT_LINES), _TEXTS, st.integers(1, 40), st.booleans(),
                       st.sampled_from([0, 1, 500, 1100])).map(lambda args: _line(*args))


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(_TEXT_LINE | st.sampled_from(_BAD_LINES), max_size=80), crlf=st.booleans(),
       base=st.integers(0, 10**9))
def test_text_block_equals_the_line_parser(lines, crlf, base):
    data = _encode(lines, crlf)
    _assert_same_block(parse_text_block(data, base), parse_text_lines(_nonblank(data, base)))


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.sampled_from(_VIDEO_LINES + _BAD_LINES), max_size=60), crlf=st.booleans(),
       allow=st.booleans())
def test_video_block_equals_the_line_parser(lines, crlf, allow):
    data = _encode(lines, crlf)
    _assert_same_block(parse_video_block(data, 7, allow_local_files=allow),
                       parse_video_lines(_nonblank(data, 7), allow_local_files=allow))


def test_clean_lines_take_the_arrow_path_and_bad_ones_cost_little():
    """Only the bad line and its few neighbours are parsed one by one."""
    texts = [json.dumps({"clip_id": f"{VID}.{k}.mp4", "text": f"caf\u00e9  {k} "}) for k in range(1, 3001)]
    videos = [video_line(f"v{n}", clips=[clip(k, f"00:00:{k:02d}.000", f"00:00:{k:02d}.500", f"v{n}")
                                         for k in range(1, 40)]) for n in range(300)]
    assert parse_text_block(_encode(texts, False), 0).per_line == 0
    assert parse_video_block(_encode(videos, True), 0, allow_local_files=False).per_line == 0
    texts[1234] = "{broken"
    block = parse_text_block(_encode(texts, False), 0)
    assert 1 <= block.per_line <= 16 and [f.code for f in block.failures] == [C.BAD_LINE]
    assert block.texts.num_rows == 2999 and block.lines == 3000


def test_whitespace_class_is_what_str_split_splits_on():
    import sys
    assert set(PY_WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_unparsable_urls_and_unpaired_surrogates_are_rows_not_crashes():
    video, failures = parse_video_line(video_line(url="http://[abc/x"), allow_local_files=False)
    assert video is None and [f.code for f in failures] == [C.BAD_URL]
    video, failures = parse_video_line(video_line(url="https://h/\ud800"), allow_local_files=False)
    assert video is None and [f.code for f in failures] == [C.BAD_LINE]
    failure = parse_text_line('{"clip_id": "' + VID + '.1.mp4", "text": "a \\udc00"}')
    assert failure.code is C.BAD_LINE and "surrogate" in failure.reason


def test_lines_too_deep_for_pythons_json_stay_bad_lines():
    """Arrow parses any depth; Python's json stops at the recursion limit (hypothesis raises
    it, so this is a plain test)."""
    import sys
    depth = sys.getrecursionlimit() + 100
    deep = video_line()[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    data = _encode([video_line("a"), deep, video_line("b")], False)
    block = parse_video_block(data, 0, allow_local_files=False)
    _assert_same_block(block, parse_video_lines(_nonblank(data, 0), allow_local_files=False))
    assert [f.code for f in block.failures] == [C.BAD_LINE] and block.videos.num_rows == 2
