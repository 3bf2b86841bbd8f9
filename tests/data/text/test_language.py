"""Language checks on the shared real subtitle files: the right language passes, another
language is flagged with a readable reason, and too little text is never judged."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.text.language import (
    clean_for_detection,
    detect_language,
    known_languages,
    language_mismatch,
    normalise_language,
    same_language,
    sample_text,
    sample_windows,
)
from lfvila_data.text.subtitles import parse_subtitles
from tests.support.realdata import SUBTITLES as REAL

FILES = sorted(p.name for p in REAL.glob("*") if p.suffix in (".vtt", ".srt"))
FRENCH = ["jlm_fr_2017-02-21.faire-la-revolution-fiscale-edcc15.fr.vtt", "pysrt_fr_windows-1252.srt"]
SPANISH = ["netflix_es_chicas-del-cable.vtt"]
ENGLISH = [n for n in FILES if n not in FRENCH + SPANISH]
SHORT = ["webvtt-py_youtube_dl_snippet.vtt"]  # 41 characters of text
REASON = re.compile(r"^subtitles asked in '(\w+)' look like '(\w+)' \(p=\d\.\d\d over [\d,]+ characters\)$")

real = pytest.mark.skipif(not REAL.is_dir(), reason="shared real subtitles not present")


@cache
def _text(name: str) -> str:
    return " ".join(w.text for w in parse_subtitles((REAL / name).read_bytes(), Path(name).suffix))


# ----------------------------------------------------------------------------- codes


@pytest.mark.parametrize("code, expected", [
    ("en-US", "en"), ("pt-BR", "pt"), ("zh-Hans", "zh"), ("EN", "en"), ("en_GB", "en"),
    (" fr ", "fr"), ("es-419", "es"), ("yue-HK", "yue"), ("sr-Latn-RS", "sr"),
    ("iw", "he"), ("nb-NO", "no"), ("fil", "tl"),
    ("", None), (None, None), ("   ", None), ("english", None), ("x-klingon", None), ("e", None),
    ("12", None),
])
def test_normalise_language(code: str | None, expected: str | None) -> None:
    assert normalise_language(code) == expected


def test_variants_of_one_language_are_the_same() -> None:
    assert same_language("no", "nn") and same_language("hr", "sr") and same_language("ms", "id")
    assert same_language("zh", "yue") and same_language("en", "pcm") and same_language("fr", "fr")
    assert not same_language("en", "fr") and not same_language("es", "pt")


# ----------------------------------------------------------------------------- real files


@real
def test_the_real_files_are_the_expected_split() -> None:
    assert set(FRENCH + SPANISH) <= set(FILES) and len(ENGLISH) >= 8


@real
@pytest.mark.parametrize("name", ENGLISH)
@pytest.mark.parametrize("asked", ["en", "en-US", "EN-gb", None])
def test_english_files_pass_as_english(name: str, asked: str | None) -> None:
    assert language_mismatch(_text(name), asked) is None


@real
@pytest.mark.parametrize("name", [n for n in ENGLISH if n not in SHORT])
def test_english_files_are_flagged_when_french_is_asked(name: str) -> None:
    reason = language_mismatch(_text(name), "fr")
    assert reason is not None and REASON.match(reason).groups() == ("fr", "en"), reason


@real
@pytest.mark.parametrize("name", FRENCH)
def test_french_files_are_flagged_as_english_and_pass_as_french(name: str) -> None:
    reason = language_mismatch(_text(name), "en")
    assert reason is not None
    assert REASON.match(reason).groups() == ("en", "fr"), reason
    assert "\n" not in reason
    for asked in ("fr", "fr-FR", "fr-CA", "FR"):
        assert language_mismatch(_text(name), asked) is None


@real
@pytest.mark.parametrize("name", SPANISH)
def test_spanish_file_is_flagged_as_english_and_passes_as_spanish(name: str) -> None:
    for asked in ("en", "fr"):
        reason = language_mismatch(_text(name), asked)
        assert reason is not None and REASON.match(reason).groups() == (asked, "es"), reason
    for asked in ("es", "es-419", "es-ES"):
        assert language_mismatch(_text(name), asked) is None


@real
@pytest.mark.parametrize("name, language", [(n, "en") for n in ENGLISH if n not in SHORT]
                         + [(n, "fr") for n in FRENCH] + [(n, "es") for n in SPANISH])
def test_detection_is_confident_on_every_real_file(name: str, language: str) -> None:
    found, probability = detect_language(sample_text(clean_for_detection(_text(name))))
    assert found == language and probability > 0.99


@real
def test_reason_counts_the_judged_characters() -> None:
    text = _text(FRENCH[1])  # 1 h 37 min of film subtitles, ~44,000 characters
    reason = language_mismatch(text, "en")
    judged = int(REASON.match(reason).string.split(" over ")[1].split()[0].replace(",", ""))
    assert 4500 <= judged <= 5100 < len(text)


# ----------------------------------------------------------------------------- not judged


@real
@pytest.mark.parametrize("name", FRENCH + SPANISH + SHORT)
def test_short_text_is_never_flagged(name: str) -> None:
    text = _text(name)[:199]
    for asked in ("en", "fr", "es", "de", "zh"):
        assert language_mismatch(text, asked) is None


@real
def test_the_length_gate_is_what_passes_short_text() -> None:
    snippet = _text(FRENCH[0])[:150]
    assert language_mismatch(snippet, "en") is None
    assert language_mismatch(snippet, "en", min_chars=100) is not None


@real
def test_markup_and_numbers_do_not_count_as_text() -> None:
    noise = " [Music] 00:01:02.345 (Applause) 1,234 <c.colorE5E5E5> ♪ https://example.com/x"
    text = _text(FRENCH[0])[:150] + noise * 40  # 150 characters of words in ~3,000
    assert len(text) > 3000
    assert clean_for_detection(noise * 3) == ""
    assert language_mismatch(text, "en") is None
    # once the noise is gone, 150 characters are enough for a confident call
    assert language_mismatch(text, "en", min_chars=100) is not None


@real
@pytest.mark.parametrize("english", ["yt-timedtext_en_authkit-preview-deploys.srt",
                                     "yt-manual_en_upwork-proposals.en.vtt"])
def test_text_half_in_the_expected_language_is_kept(english: str) -> None:
    half = _text(english)[:1500] + " " + _text(FRENCH[0])[:1500]
    assert language_mismatch(half, "en") is None
    assert language_mismatch(half, "fr") is None


@real
def test_windows_in_the_expected_language_outvote_a_confident_whole() -> None:
    # Technical English ("Vercel, Netlify, CloudFlare") loses to French on the joined text.
    half = _text("yt-timedtext_en_authkit-preview-deploys.srt")[:1500] + " " + _text(FRENCH[0])[:1500]
    found, probability = detect_language(sample_text(clean_for_detection(half)))
    assert found == "fr" and probability >= 0.9
    assert language_mismatch(half, "en") is None


@real
def test_a_confidence_threshold_above_the_detection_passes_everything() -> None:
    assert language_mismatch(_text(FRENCH[0]), "en", min_confidence=1.01) is None


@real
@pytest.mark.parametrize("asked", [None, "", "und", "zxx", "mul", "haw", "tlh", "english"])
def test_no_judgement_without_a_known_expected_language(asked: str | None) -> None:
    assert language_mismatch(_text(FRENCH[0]), asked) is None


# ----------------------------------------------------------------------------- sampling


@real
def test_a_long_file_is_sampled_over_its_whole_length() -> None:
    english, french = _text(ENGLISH[-1])[:3000], _text(FRENCH[1])
    text = english + " " + french  # English opening, then 44,000 characters of French
    sample = sample_text(text)
    assert sample.startswith(english[:100]) and french[-300:].split()[-1] in sample
    assert len(sample) <= 5000 + 10
    assert language_mismatch(text, "en") is not None
    assert language_mismatch(text, "fr") is None


def test_sample_text_cuts_at_spaces_and_keeps_short_text() -> None:
    words = " ".join(f"w{i:05d}" for i in range(20_000))  # 6-character words
    sample = sample_text(words, max_chars=1000, windows=5)
    assert all(re.fullmatch(r"w\d{5}", t) for t in sample.split())
    assert sample.split()[0] == "w00000" and sample.split()[-1] == "w19999"
    assert len(sample) <= 1000 + 5
    assert sample_text("short text") == "short text"
    assert len(sample_text("x" * 20_000, max_chars=1000)) <= 1010  # no spaces at all


def test_short_text_is_cut_into_windows_that_cover_it_all() -> None:
    text = " ".join(f"w{i:04d}" for i in range(700))  # 4,199 characters
    windows = sample_windows(text)
    assert len(windows) == 8 and all(400 <= len(w) <= 600 for w in windows)
    assert " ".join(windows) == text
    assert sample_windows("one window only") == ["one window only"] and sample_windows("  ") == []


def test_clean_for_detection_keeps_words_only() -> None:
    assert clean_for_detection("[Music] Hello, <c>world</c>! 2017 3D (applause) >> - l'été ♪ a@b.io") \
        == "Hello, world l'été"


# ----------------------------------------------------------------------------- robustness


def test_detect_language_without_letters() -> None:
    assert detect_language("") == ("und", 0.0)
    assert detect_language("12:30 -- !!! 3.14") == ("und", 0.0)


def test_detection_from_threads_matches_sequential() -> None:
    texts = ["This is plainly an English sentence about phone batteries and charging.",
             "Nous allons parler ce soir de la révolution fiscale et de l'impôt sur le revenu.",
             "Las chicas del cable trabajan en la compañía telefónica de Madrid."]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(detect_language, texts * 20))
    assert [lang for lang, _ in results[:3]] == ["en", "fr", "es"]
    assert results == [detect_language(t) for t in texts] * 20


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=3000),
       asked=st.one_of(st.none(), st.text(max_size=12),
                       st.sampled_from(["en", "fr-CA", "zh-Hans", "iw", "und", "sr-Latn"])))
def test_arbitrary_text_never_raises(text: str, asked: str | None) -> None:
    found, probability = detect_language(text)
    assert found in known_languages() | {"und"} and 0.0 <= probability <= 1.0
    reason = language_mismatch(text, asked)
    assert reason is None or REASON.match(reason)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=199), asked=st.sampled_from(["en", "fr", "es", "de", "ja"]))
def test_arbitrary_short_text_is_never_flagged(text: str, asked: str) -> None:
    assert language_mismatch(text, asked) is None
