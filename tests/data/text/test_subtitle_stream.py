"""The streaming subtitle parser equals the whole-file one it replaced (kept in
tests/support/subtitles_reference.py) word for word, whatever the window it reads in, and
its memory follows the largest cue, not the file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfvila_data.text.subtitles import SubtitleError, detect_kind, iter_subtitle_words, parse_subtitles
from tests.support import subtitles_reference as reference
from tests.support.realdata import SUBTITLES as REAL

# 1 and 7 cut every CRLF, tag, line and cue somewhere, and make the parser read the cues
# twice (at most window // 4 cues are held); 64 makes many parser pieces.
WINDOWS = (1, 7, 64, 1 << 16)
FILES = sorted(p.name for p in REAL.glob("*") if p.suffix in (".vtt", ".srt")) if REAL.is_dir() else []


def _outcome(parse, *args, **kwargs) -> list | str:
    """The words, or the SubtitleError's reason."""
    try:
        return list(parse(*args, **kwargs))
    except SubtitleError as e:
        return e.reason


def _assert_same(data: bytes, fmt: str | None, windows: tuple[int, ...] = WINDOWS) -> list | str:
    expected = _outcome(reference.parse_subtitles, data, fmt)
    for window in windows:
        assert _outcome(iter_subtitle_words, data, fmt, window=window) == expected, window
    return expected


@pytest.mark.skipif(not FILES, reason="shared real subtitles not present")
@pytest.mark.parametrize("name", FILES)
def test_real_files_stream_to_the_same_words(name: str, tmp_path: Path) -> None:
    """In 4 KiB windows (~100 parser pieces, cues held only up to 1024), and from the path
    with the default window and the format sniffed."""
    data = (REAL / name).read_bytes()
    expected = _assert_same(data, Path(name).suffix, (1 << 12,))
    assert isinstance(expected, list) and expected
    path = tmp_path / name
    path.write_bytes(data)
    assert parse_subtitles(path) == expected
    assert detect_kind(path) == detect_kind(data) == reference.detect_kind(data.decode("utf-8", "replace"))


_VTT_EDGES = {
    "bom_crlf": "\ufeffWEBVTT\r\n\r\n00:01.000 --> 00:03.000 align:start\r\n<b>Tom</b> &amp; Jerry\r\n\r\n"
                "00:03.000 --> 00:04.000\r\nmore\r\n",
    "cr_only": "WEBVTT\r\r00:01.000 --> 00:02.000\rone two\r\r00:02.000 --> 00:03.000\rthree\r",
    "header_note_style_region": "WEBVTT - title\nKind: captions\nLanguage: en\n\nREGION\nid:r1\nwidth:40%\n\n"
                                "STYLE\n::cue { color: red }\n\nNOTE a comment\nover two lines\n\n"
                                "intro\n00:00:01.000 --> 00:00:02.000 region:r1\nhello there\n\n"
                                "NOTE 00:00:02.000 --> 00:00:03.000\n\n00:00:02.500 --> 00:00:03.000\nworld\n",
    "no_blank_between_cues": "WEBVTT\n00:01.000 --> 00:02.000\nfirst\n00:02.000 --> 00:03.000\nsecond\n"
                             "00:03.000 --> 00:04.000\nthird",
    "word_timing_tags": "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\n"
                        "so<00:00:01.500><c> the</c><00:00:02.000><c> battery</c>\n\n"
                        "00:00:04.000 --> 00:00:04.010\nso the battery\n\n"
                        "00:00:04.010 --> 00:00:07.000\nso the battery\nlasts<00:00:05.000><c> longer</c>\n",
    "blanked_first_line": "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n\nwords<00:00:02.000><c> here</c>\n\n"
                          "00:00:03.000 --> 00:00:05.000\n\nmore<00:00:04.000><c> words</c>\n",
    "overlapping_and_out_of_order": "WEBVTT\n\n00:05.000 --> 00:06.000\nlate\n\n00:01.000 --> 00:03.000\nsame\n\n"
                                    "00:02.000 --> 00:04.000\nsame\n\n00:02.000 --> 00:02.500\nshort overlap\n",
    "nul_and_empty_cues": "WEBVTT\n\n00:01.000 --> 00:02.000\n[Music]\n\n00:02.000 --> 00:03.000\nre\x00al\n",
}
_SRT_EDGES = {
    "missing_blank_lines": "1\n00:00:01,000 --> 00:00:02,000\none\n2\n00:00:02,000 --> 00:00:03,000\ntwo\n"
                           "3\n00:00:03,000 --> 00:00:04,000\nthree",
    "blank_line_inside_a_cue": "1\n00:00:01,000 --> 00:00:02,000\none\n\nstill one\n\n2\n"
                               "00:00:02,000 --> 00:00:03,000\ntwo\n\n\n\n3\n00:00:05,000 --> 00:00:06,000\nthree\n",
    "crlf_bom_index_only_lines": "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\n12\r\n\r\n2\r\n"
                                 "00:00:02,000 --> 00:00:03,000\r\n<i>two</i>\r\n\r\n",
    "overlapping_duplicates": "1\n00:00:01,000 --> 00:00:02,000\nsame text\n\n2\n00:00:01,500 --> 00:00:03,000\n"
                              "same text\n\n3\n00:00:03,500 --> 00:00:04,000\nsame text\n",
    "out_of_order": "2\n00:00:03,000 --> 00:00:04,000\nlater\n\n1\n00:00:01,000 --> 00:00:02,000\nearlier\n\n"
                    "3\n00:00:01,000 --> 00:00:01,500\nsame start\n",
    "no_index_and_junk": "junk line\n\n00:00:01,000 --> 00:00:02,000\nno index\n\n7\n00:00:02,000 --> 00:00:03,000\n"
                         "seven\n",
}


@pytest.mark.parametrize("name", sorted(_VTT_EDGES) + sorted(_SRT_EDGES))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "cp1252"])
def test_edge_cases_stream_to_the_same_words(name: str, encoding: str) -> None:
    text = _VTT_EDGES.get(name) or _SRT_EDGES[name]
    data = text.encode(encoding, errors="replace")
    fmt = "vtt" if name in _VTT_EDGES else "srt"
    words = _assert_same(data, fmt)
    assert isinstance(words, list) or encoding == "cp1252"  # a BOM there is a "?"
    _assert_same(data, None)


@pytest.mark.parametrize("data", [b"", b"  \n\r\n", b"WEBVTT\n\nNOTE nothing\n", b"no cues at all",
                                  b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n[Music]\n", b"\xff\xfe\x00",
                                  b"\x00\x00\x00", b"NOT VTT\n\n00:01.000 --> 00:02.000\nx\n"])
@pytest.mark.parametrize("fmt", [None, "vtt", "srt", "ass"])
def test_unusable_files_fail_for_the_same_reason(data: bytes, fmt: str | None) -> None:
    _assert_same(data, fmt)


_FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_LINES = st.sampled_from([
    "", "", " ", "WEBVTT", "NOTE x", "STYLE", "REGION", "1", "12", "-->", "hello world", "<i>it</i> &amp; me",
    "so<00:00:01.500><c> the</c>", "[Music]", "- Yes. - No!", "00:00:01.000 --> 00:00:02.000",
    "00:00:01,000 --> 00:00:02,000", "00:00:02.000 --> 00:00:01.000", "00:00:03,000 --> 00:00:04,500 x",
    "0:00:05.000 --> 0:00:06.000", "00:01.000 --> 00:02.000", "\x00", "\ufeff",
])


@_FUZZ
@given(st.lists(_LINES | st.text(max_size=12), max_size=40), st.sampled_from(["\n", "\r\n", "\r"]),
       st.sampled_from(["WEBVTT\n\n", "", "\ufeff"]), st.sampled_from([None, "vtt", "srt"]))
def test_fuzz_stream_equals_whole_file(lines: list[str], newline: str, head: str, fmt: str | None) -> None:
    _assert_same((head + newline.join(lines)).encode("utf-8"), fmt)


_CHILD = """
import json, resource, sys
from pathlib import Path
from lfvila_data.text.subtitles import iter_subtitle_words
small, big = Path(sys.argv[1]), Path(sys.argv[2])
sum(1 for _ in iter_subtitle_words(small, "srt"))  # imports and allocator warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
words = sum(1 for _ in iter_subtitle_words(big, "srt", window=4096))
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"growth": growth, "words": words}))
"""


def _write_srt(path: Path, cues: int) -> None:
    def stamp(t: int) -> str:
        return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"

    with path.open("w") as f:
        for i in range(cues):
            f.write(f"{i + 1}\n{stamp(3 * i)},000 --> {stamp(3 * i + 2)},900\n"
                    "and then the speaker explains one more detail about it.\n\n")


def test_memory_follows_the_largest_cue_not_the_file(tmp_path: Path) -> None:
    """A 0.9 MB SRT of 10,000 cues streamed word by word raises the peak RSS by less than
    half its size. The parser before held the text, every cue and every word: +32 MiB for
    this file (docs/reliability.md)."""
    small, big = tmp_path / "small.srt", tmp_path / "big.srt"
    _write_srt(small, 200)
    _write_srt(big, 10_000)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(small), str(big)], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["words"] == 10_000 * 10
    assert got["growth"] < big.stat().st_size / 2, (got, big.stat().st_size)


def test_a_path_and_its_bytes_give_the_same_list(tmp_path: Path) -> None:
    path = tmp_path / "a.srt"
    path.write_bytes(_SRT_EDGES["overlapping_duplicates"].encode())
    assert parse_subtitles(path) == parse_subtitles(path.read_bytes()) != []
