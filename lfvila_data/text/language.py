"""Is a subtitle track in the language it was asked for? Files named `talk.en.vtt` can
hold French, and YouTube can answer a request for "en" with Spanish captions; such text
would pair videos with paragraphs the text encoder reads as the wrong language.

Detection is py3langid (naive Bayes over byte n-grams, offline, ~140 languages) with
normalised probabilities. A mismatch rejects data, so it is only reported on enough
cleaned text, with a confident detection, for an expected language the model knows, and
never between variants of one macrolanguage (Norwegian Bokmål/Nynorsk, Serbo-Croatian,
Malay/Indonesian, Chinese/Cantonese, Arabic dialects)."""
from __future__ import annotations

import re
import threading
from itertools import pairwise

# Legacy or alternative codes that caption sites still send, to the code the model uses.
_ALIASES = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro", "nb": "no",
            "fil": "tl", "sh": "sr"}
_PRIMARY_SUBTAG = re.compile(r"^[a-z]{2,3}$")
# Codes that name no single language: nothing to compare against.
_NO_LANGUAGE = frozenset({"und", "mul", "mis", "zxx", "qaa"})

# Labels the model may give to text in one language; never a mismatch between them.
_SAME_LANGUAGE = [
    frozenset({"no", "nn"}),
    frozenset({"sr", "hr", "bs"}),
    frozenset({"ms", "id"}),
    frozenset({"zh", "yue", "wuu"}),
    frozenset({"ar", "arz", "ary"}),
    frozenset({"uz", "uzs"}),
    frozenset({"ku", "sdh", "ckb"}),
    frozenset({"gn", "gug"}),
    frozenset({"he", "hbo"}),
    frozenset({"el", "grc"}),
    frozenset({"en", "pcm"}),  # casual English and ASR slips score as Nigerian Pidgin
]
_VARIANTS = {code: group for group in _SAME_LANGUAGE for code in group}

# Annotations and tokens that carry no language: markup, [Music], (applause), ♪, URLs,
# e-mail addresses, anything with a digit (times, prices, "3D", "iPhone12"). Brackets
# span at most 200 characters, so a stray "(" cannot swallow the text after it.
_MARKUP = re.compile(r"<[^<>]{0,200}>|\[[^\[\]]{0,200}\]|\([^()]{0,200}\)|\{[^{}]{0,200}\}|[♪♫♬]")
_NO_WORD = re.compile(r"\S*(?:://|www\.|@)\S*|\S*\d\S*")

# The judged text: at most this many characters, in this many windows over the file.
_SAMPLE_CHARS = 5000
_SAMPLE_WINDOWS = 10
# A mismatch needs the expected language in at most this share of the windows, alone.
_MAX_AGREEING_SHARE = 0.2

_identifier = None
_identifier_lock = threading.Lock()


def normalise_language(code: str | None) -> str | None:
    """The comparable primary subtag of a language tag ("pt-BR" -> "pt"); None if there is none."""
    if not code:
        return None
    primary = re.split(r"[-_.]", code.strip().lower(), maxsplit=1)[0]
    if not _PRIMARY_SUBTAG.match(primary):
        return None
    return _ALIASES.get(primary, primary)


def _get_identifier():
    """The py3langid model, loaded once per process on first use (~0.7 s, ~100 MB)."""
    global _identifier
    if _identifier is None:
        with _identifier_lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                load = (getattr(LanguageIdentifier, "from_model_file", None)
                        or LanguageIdentifier.from_pickled_model)  # py3langid < 0.4
                _identifier = load(MODEL_FILE, norm_probs=True)
    return _identifier


def known_languages() -> frozenset[str]:
    """Codes `detect_language` can return: a mismatch is only judged for these."""
    return frozenset(_get_identifier().nb_classes)


def detect_language(text: str) -> tuple[str, float]:
    """Most likely language of `text` (ISO 639-1, else the model's 639-3 label) and its
    probability; ("und", 0.0) when the text has no letters to go by."""
    if not any(ch.isalpha() for ch in text):
        return "und", 0.0
    label, probability = _get_identifier().classify(text)
    return str(label), min(max(float(probability), 0.0), 1.0)


def clean_for_detection(text: str) -> str:
    """Words only: no markup, sound tags, URLs, numbers or letterless tokens."""
    text = _NO_WORD.sub(" ", _MARKUP.sub(" ", text))
    return " ".join(t for t in text.split() if any(ch.isalpha() for ch in t))


def sample_windows(text: str, max_chars: int = _SAMPLE_CHARS,
                   windows: int = _SAMPLE_WINDOWS) -> list[str]:
    """`text` as windows of about `max_chars / windows` characters cut at spaces: all of it
    when it is short, else `windows` of them spread evenly from its start to its end, so a
    long file is judged on its whole length at a fixed cost, not on its opening."""
    text = text.strip()
    size = max(max_chars // windows, 1)
    if len(text) <= max_chars:  # all of it, in pieces of at least `size` (or one piece)
        count = max(len(text) // size, 1)
        cuts = [0] + [_word_start(text, i * len(text) // count, size) for i in range(1, count)]
        cuts.append(len(text))
        return [w for a, b in pairwise(cuts) if (w := text[a:b].strip())]
    step = (len(text) - size) / max(windows - 1, 1)
    parts = []
    for i in range(windows):
        start = _word_start(text, int(i * step), size)
        end = min(start + size, len(text))
        if end < len(text):  # end on a word: back to the last space, if one is near
            space = text.rfind(" ", end - size // 4, end)
            end = space if space > start else end
        parts.append(text[start:end].strip())
    return [p for p in parts if p]


def _word_start(text: str, at: int, size: int) -> int:
    """`at`, or just after the next space when one is within a quarter window."""
    if at <= 0:
        return 0
    space = text.find(" ", at, at + size // 4)
    return space + 1 if space != -1 else at


def sample_text(text: str, max_chars: int = _SAMPLE_CHARS, windows: int = _SAMPLE_WINDOWS) -> str:
    """At most about `max_chars` of `text`, spread over its whole length."""
    return " ".join(sample_windows(text, max_chars, windows))


def same_language(a: str, b: str) -> bool:
    """Whether two normalised codes name one language or variants the model mixes up."""
    return a == b or b in _VARIANTS.get(a, ())


def language_mismatch(text: str, expected: str | None, *, min_chars: int = 200,
                      min_confidence: float = 0.9) -> str | None:
    """Why `text` is not in `expected`, as one ledger line; None when it plausibly is, or
    when there is too little text, too little confidence or no known language to judge."""
    want = normalise_language(expected)
    if want is None or want in _NO_LANGUAGE:
        return None
    known = known_languages()
    if want not in known and not (_VARIANTS.get(want, frozenset()) & known):
        return None  # the model cannot recognise it, so would always name another language
    windows = sample_windows(clean_for_detection(text))
    sample = " ".join(windows)
    if len(sample) < min_chars:
        return None
    found, probability = detect_language(sample)
    if found in _NO_LANGUAGE or same_language(want, found) or probability < min_confidence:
        return None
    # A text partly in the expected language (a bilingual talk, an interview) is kept.
    agree = sum(same_language(want, detect_language(w)[0]) for w in windows)
    if agree > _MAX_AGREEING_SHARE * len(windows):
        return None
    return (f"subtitles asked in {want!r} look like {found!r} "
            f"(p={probability:.2f} over {len(sample):,} characters)")
