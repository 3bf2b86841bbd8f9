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
