"""Subtitle parsing on the shared real files: every word once, in time order, no markup."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfvila_data.records import FailureCode, Stage
from lfvila_data.text.subtitles import SubtitleError, Word, detect_kind, parse_subtitles
from tests.support.realdata import SUBTITLES as REAL

FILES = sorted(p.name for p in REAL.glob("*") if p.suffix in (".vtt", ".srt"))
AUTO = [
    "yt-auto_en_does-fast-charging-hurt-the-battery.vtt",
    "yt-auto_en_macbook-air-cooling.en.vtt",
    "yt-auto_en_legacy-color-tags_startup-talk.en.vtt",
    "webvtt-py_youtube_dl_snippet.vtt",
]

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="shared real subtitles not present")


def _words(name: str) -> list[Word]:
    return parse_subtitles((REAL / name).read_bytes(), Path(name).suffix)


def _texts(name: str) -> list[str]:
    return [w.text for w in _words(name)]


# ----------------------------------------------------------------------------- every file


@pytest.mark.parametrize("name", FILES)
def test_real_file_parses_to_clean_monotonic_words(name: str) -> None:
    words = _words(name)
    assert words
    previous_end = 0.0
    for w in words:
        assert w.text.strip() == w.text and w.text
        assert 0 <= previous_end <= w.start <= w.end
        previous_end = w.end
        assert "<" not in w.text and ">" not in w.text, w
        assert "&amp;" not in w.text and "&gt;" not in w.text and "&nbsp;" not in w.text, w
        assert "[" not in w.text and "]" not in w.text, w  # [Music], [Applause], [Alba]
        assert "\ufffd" not in w.text, w


def test_sniffed_format_matches_extension() -> None:
    for name in FILES:
        data = (REAL / name).read_bytes()
        assert parse_subtitles(data) == parse_subtitles(data, Path(name).suffix), name


# ----------------------------------------------------------------------------- auto captions

_TIMING = re.compile(r"<(\d\d):(\d\d):(\d\d\.\d{3})>")
_ANY_TAG = re.compile(r"<[^>]*>")


def _raw_cues(text: str) -> list[list[str]]:
    """Cue bodies by splitting at timing lines, without any WebVTT library."""
    cues: list[list[str]] = []
    for line in text.split("\n"):
        if "-->" in line:
            cues.append([])
        elif cues:
            cues[-1].append(line)
    return cues


def _plain(line: str) -> list[str]:
    words = html.unescape(_ANY_TAG.sub("", line)).split()
    return [w for w in words if not re.fullmatch(r"\[\w+\]", w)]


def _reader_words(text: str) -> list[str]:
    """What a careful reader writes down: each caption line once, when it first appears.

    YouTube shows a line first as the last line of a cue, then again while it scrolls up,
    so a line is new exactly when a cue's last line differs from the previous cue's."""
    words: list[str] = []
    previous = None
    for body in _raw_cues(text):
        lines = [ln for ln in body if _plain(ln)]
        if not lines:
            continue
        key = _plain(lines[-1])
        if key != previous:
            words.extend(key)
        previous = key
    return words


def _tagged_words(text: str) -> list[tuple[str, float | None]]:
    """Words of the lines with timing tags: the untagged first word, then each <c> word."""
    out: list[tuple[str, float | None]] = []
    for line in text.split("\n"):
        if not _TIMING.search(line):
            continue
        first = _plain(_TIMING.split(line)[0])
        out.extend((w, None) for w in first)
        for h, m, s, word in re.findall(r"<(\d\d):(\d\d):(\d\d\.\d{3})><c>([^<]*)</c>", line):
            out.append((word.strip(), int(h) * 3600 + int(m) * 60 + float(s)))
    return out


@pytest.mark.parametrize("name", AUTO)
def test_auto_captions_keep_every_word_exactly_once(name: str) -> None:
    text = (REAL / name).read_text(encoding="utf-8")
    assert detect_kind((REAL / name).read_bytes()) == "auto_captions"
    assert _texts(name) == _reader_words(text)


@pytest.mark.parametrize("name", AUTO)
def test_auto_caption_tagged_words_keep_their_onsets(name: str) -> None:
    """Every word-timed word appears, in order, starting at its own tag's time."""
    words = _words(name)
    tagged = _tagged_words((REAL / name).read_text(encoding="utf-8"))
    i = 0
    for text, onset in tagged:
        while words[i].text != text:  # only untimed one-word lines sit in between
            i += 1
        if onset is not None:
            assert words[i].start == pytest.approx(onset, abs=1e-6), (text, words[i])
        i += 1
    # The lines without tags hold one word each, and few of them.
    assert 0 <= len(words) - len(tagged) <= 10


def test_auto_caption_blanked_first_line_is_not_lost() -> None:
    """The lattifai copy blanks the first line of 3 cues; their timed words must survive."""
    words = _texts("yt-auto_en_does-fast-charging-hurt-the-battery.vtt")
    assert words[:6] == ["Does", "fast", "charging", "hurt", "the", "battery?"]
    assert words[-2:] == ["the", "battery."]


def test_auto_caption_long_cue_does_not_stretch_words() -> None:
    """Onset-only words get a length-based duration, so pauses stay visible."""
    words = _words("yt-auto_en_does-fast-charging-hurt-the-battery.vtt")
    assert max(w.end - w.start for w in words) <= 1.0 + 1e-9
    assert words[0].start == pytest.approx(0.24) and words[1].start == pytest.approx(0.56)


def test_legacy_snippet_words_and_times() -> None:
    words = _words("webvtt-py_youtube_dl_snippet.vtt")
    assert [w.text for w in words] == ["yeah", "what", "this", "will", "happen", "is", "I'm", "telling"]
    assert words[0].start == pytest.approx(286.07)
    assert words[2].start == pytest.approx(304.08)
    assert words[3].start == pytest.approx(304.199)


def test_macbook_music_tags_dropped_and_lowercase_kept() -> None:
    words = _texts("yt-auto_en_macbook-air-cooling.en.vtt")
    assert "[Applause]" not in words and "Applause" not in words
    assert words[:5] == ["there's", "no", "denying", "the", "MacBook"]


# ----------------------------------------------------------------------------- ordinary cues


def test_detects_ordinary_subtitles() -> None:
    for name in set(FILES) - set(AUTO):
        assert detect_kind((REAL / name).read_bytes()) == "subtitles", name


def test_manual_youtube_captions() -> None:
    words = _words("yt-manual_en_upwork-proposals.en.vtt")
    texts = [w.text for w in words]
    assert texts[:3] == ["Hi,", "everyone.", "Danny"]  # "(upbeat music)" and "- " dropped
    assert words[0].start == pytest.approx(7.726)
    assert "music)" not in texts and "(upbeat" not in texts
    assert texts[-6:] == ["then", "we", "discuss", "the", "fine", "print"]
    assert words[-1].end == pytest.approx(1593.100)
    assert words[-6].start == pytest.approx(1591.210)


def test_netflix_spanish_italics_and_speaker_labels() -> None:
    words = _words("netflix_es_chicas-del-cable.vtt")
    texts = [w.text for w in words]
    assert texts[:3] == ["En", "1928,", "las"]  # "[Alba] <i>En 1928,</i>"
    assert words[0].start == pytest.approx(7.96)
    assert words[1].end == pytest.approx(9.48)
    assert "Alba" not in texts[:3] and "Segment=597.080" not in texts
    assert "decisión." in texts and "opinión" in texts


def test_cue_ids_notes_and_voice_tags_are_not_text() -> None:
    ids = _texts("1c7_01_contain-index-number.vtt")
    assert ids[:2] == ["Hi,", "welcome"] and not any(t.isdigit() and int(t) < 100 for t in ids[:20])
    notes = _texts("1c7_03_contain-comment.vtt")
    assert "NOTE" not in notes and "comment," not in notes
    i = notes.index("booked")  # a NOTE block sits inside this sentence
    assert notes[i - 1:i + 5] == ["is", "booked", "for", "5", "weekends", "straight,"]
    voice = _words("1c7_04_no-hour.vtt")
    assert [w.text for w in voice[:5]] == ["We", "are", "in", "New", "York"]
    assert "Roger" not in [w.text for w in voice]
    assert voice[0].start == pytest.approx(11.0) and voice[-1].end == pytest.approx(26.0)
    assert "We’re" in [w.text for w in voice]


def test_french_youtube_captions() -> None:
    words = _words("jlm_fr_2017-02-21.faire-la-revolution-fiscale-edcc15.fr.vtt")
    texts = [w.text for w in words]
    assert texts[:5] == ["Guillaume", "Tatu:", "On", "va", "parler"]
    assert words[0].start == 0.0
    assert "fiscalité," in texts and "Mélenchon" in texts


def test_windows_1252_srt_decodes_accents() -> None:
    words = _words("pysrt_fr_windows-1252.srt")
    texts = [w.text for w in words]
    assert texts[:3] == ["Downloaded", "From", "www.AllSubs.org"]
    assert texts[3:8] == ["CE", "FILM", "RELATE", "DES", "ÉVÉNEMENTS"]
    assert words[3].start == pytest.approx(27.074)
    i = texts.index("Il")
    assert texts[i:i + 4] == ["Il", "fut", "un", "temps,"]
    assert words[i].start == pytest.approx(48.061)
    assert not any("Ã" in t for t in texts)  # no UTF-8-as-cp1252 mojibake


def test_one_ms_overlap_srt_keeps_each_cue_once() -> None:
    raw = (REAL / "yt-timedtext_en_authkit-preview-deploys.srt").read_text(encoding="utf-8")
    blocks = [b.split("\n")[2:] for b in raw.strip().split("\n\n")]
    expected = [w for b in blocks for line in b for w in line.split()]
    words = _words("yt-timedtext_en_authkit-preview-deploys.srt")
    assert [w.text for w in words] == expected
    assert words[0].start == pytest.approx(0.033)
    text = " ".join(w.text for w in words)
    assert "about this We have a lot" not in text and text.count("We have a lot of questions") == 1


# ----------------------------------------------------------------------------- small inputs


def test_bom_crlf_entities_and_sound_tags() -> None:
    data = ("\ufeffWEBVTT\r\n\r\n00:01.000 --> 00:03.000 align:start\r\n"
            "<b>Tom</b> &amp; Jerry [Music]\r\n(applause) &gt;&gt; hi\r\n").encode("utf-8")
    words = parse_subtitles(data)
    assert [w.text for w in words] == ["Tom", "&", "Jerry", "hi"]
    assert words[0].start == 1.0 and words[-1].end == 3.0


def test_overlapping_duplicate_cues_are_merged() -> None:
    data = (b"1\n00:00:01,000 --> 00:00:02,000\nsame text\n\n"
            b"2\n00:00:01,500 --> 00:00:03,000\nsame text\n\n"
            b"3\n00:00:03,500 --> 00:00:04,000\nsame text\n")
    words = parse_subtitles(data, "srt")
    assert [w.text for w in words] == ["same", "text", "same", "text"]
    assert words[1].end == pytest.approx(3.0)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"  \n\r\n", "empty"),
    (b"WEBVTT\n\nNOTE nothing here\n", "no_cues"),
    (b"just some words, no cues at all", "no_cues"),
    (b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n[Music]\n", "no_words"),
])
def test_unusable_files_raise_subtitle_error(data: bytes, reason: str) -> None:
    with pytest.raises(SubtitleError) as info:
        parse_subtitles(data)
    assert info.value.reason == reason
    failure = info.value.to_failure("abc")
    assert failure.stage == Stage.TEXT.value and failure.reason.startswith(f"unusable subtitles ({reason})")
    assert failure.code is FailureCode.UNUSABLE_SUBTITLES


def test_unknown_format_name() -> None:
    with pytest.raises(SubtitleError) as info:
        parse_subtitles(b"WEBVTT\n", "ass")
    assert info.value.reason == "unknown_format"


# ----------------------------------------------------------------------------- fuzz

_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
_SEED = (REAL / "webvtt-py_youtube_dl_snippet.vtt").read_bytes() if REAL.is_dir() else b""
_SEED_SRT = b"1\n00:00:01,000 --> 00:00:02,500\nHello <i>there</i>\n\n2\n00:00:02,400 --> 00:00:04,000\nworld\n"


def _parse_or_subtitle_error(data: bytes, fmt: str | None) -> None:
    try:
        words = parse_subtitles(data, fmt)
    except SubtitleError:
        return
    assert all(w.text and w.start <= w.end for w in words)


@_FUZZ
@given(st.binary(max_size=400), st.sampled_from([None, "vtt", "srt"]))
def test_fuzz_arbitrary_bytes(data: bytes, fmt: str | None) -> None:
    _parse_or_subtitle_error(data, fmt)


@_FUZZ
@given(st.text(max_size=300), st.sampled_from(["WEBVTT\n\n", "", "1\n"]))
def test_fuzz_arbitrary_text(text: str, prefix: str) -> None:
    _parse_or_subtitle_error((prefix + text).encode("utf-8"), None)


@_FUZZ
@given(st.data())
def test_fuzz_mutated_valid_files(data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from([_SEED, _SEED_SRT])))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(seed)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = data.draw(st.sampled_from([b"", b"<", b">", b"-->", b":", b"\n", b"\r\n", b"99",
                                           b"<00:00:0", b"&amp", b"[", b"\xff", b"WEBVTT", b".",
                                           b"<c>", b"</c>", b"\x00", b" "]) | st.binary(max_size=4))
        if op == "insert":
            seed[pos:pos] = chunk
        elif op == "delete":
            del seed[pos:pos + len(chunk) + 1]
        else:
            seed[pos:pos + len(chunk)] = chunk
    _parse_or_subtitle_error(bytes(seed), data.draw(st.sampled_from([None, "vtt", "srt"])))
