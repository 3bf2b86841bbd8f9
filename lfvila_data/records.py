"""Small typed records that flow between pipeline stages, and the id rules that keep
every path we write inside the output directory."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Iterable

# YouTube ids are [A-Za-z0-9_-]{11}; we accept any length but only that alphabet, so an
# id can never name a path outside the output directory.
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# HD-VILA clip ids are "<video_id>.<k>.mp4" with k >= 1 counting in time order.
_CLIP_ID = re.compile(r"^(?P<vid>[A-Za-z0-9_-]{1,128})\.(?P<k>[0-9]{1,7})\.mp4$")


class Stage(str, Enum):
    """Where a failure happened; the ledger's `stage` column takes these values."""

    METADATA = "metadata"
    TEXT = "text"
    ASR = "asr"
    PLAN = "plan"
    DOWNLOAD = "download"
    PROBE = "probe"
    CUT = "cut"
    WRITE = "write"


def is_safe_video_id(video_id: object) -> bool:
    """True when the id is safe to use in a file name."""
    return isinstance(video_id, str) and bool(_VIDEO_ID.match(video_id))


def parse_clip_id(clip_id: object) -> tuple[str, int] | None:
    """Split an HD-VILA clip id into (video_id, k); None when it is not of that form."""
    if not isinstance(clip_id, str):
        return None
    m = _CLIP_ID.match(clip_id)
    if not m or int(m.group("k")) < 1:
        return None
    return m.group("vid"), int(m.group("k"))


_KEY = re.compile(r"^(?P<vid>[A-Za-z0-9_-]{1,128})_(?P<first>[0-9]{5,})_(?P<last>[0-9]{5,})$")


def sample_key(video_id: str, first_k: int, last_k: int) -> str:
    """Stable, dot-free key of a sample: the video and its clip-number range.

    WebDataset splits keys at the first dot, so keys must have none; the clip range
    makes the key stable across reruns and unique within a build."""
    return f"{video_id}_{first_k:05d}_{last_k:05d}"


def parse_sample_key(key: object) -> tuple[str, int, int] | None:
    """(video_id, first_k, last_k) of a key made by `sample_key`; None for anything else,
    so readers check keys by the rule that made them."""
    if not isinstance(key, str):
        return None
    m = _KEY.match(key)
    if not m:
        return None
    return m.group("vid"), int(m.group("first")), int(m.group("last"))


def paragraph(texts: Iterable[str | None]) -> str:
    """A sample's paragraph: its clip texts in order, joined by single spaces."""
    return " ".join(t for t in texts if t)


def words_of(text: str | None) -> int:
    """Whitespace-separated words: how planning, the shard manifest and `stats` count a text,
    so that words parsed, planned and shipped can be added up."""
    return len(text.split()) if text else 0


def relative_time(t: float, origin: float, limit: float | None = None) -> float:
    """Source time `t` as seconds after `origin` (a sample's first frame), to the
    microsecond, clamped to [0, limit] so it names a frame the sample file has."""
    rel = max(0.0, round(t - origin, 6))
    return rel if limit is None else min(rel, limit)


@dataclass(frozen=True)
class TimedText:
    """A word or a sentence and its span in seconds of source time."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Clip:
    """One clip of a source video, times in seconds of source time.

    `sentences` keeps each sentence of a clip made from several (subtitles, ASR) with its
    own span; HD-VILA clips have one sentence, the clip itself, and leave it empty."""

    clip_id: str
    k: int
    start: float
    end: float
    text: str | None = None
    sentences: tuple[TimedText, ...] = ()

    def timed_sentences(self) -> tuple[TimedText, ...]:
        """The clip's sentences with spans; a single-sentence clip is its own sentence."""
        if self.sentences:
            return self.sentences
        return (TimedText(self.text, self.start, self.end),) if self.text else ()

    def sentence_rows(self, origin: float = 0.0, limit: float | None = None) -> list[dict]:
        """The sentences as plain dicts, times relative to `origin` (source time when 0)
        and clamped to [0, limit] (see relative_time)."""
        return [{"text": s.text, "start": relative_time(s.start, origin, limit),
                 "end": relative_time(s.end, origin, limit)} for s in self.timed_sentences()]


_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@:]+(?::[^/\s@]*)?@")


def redact(text: str) -> str:
    """`text` with the credentials of any URL in it (`user:pass@`) replaced by `***@`:
    URLs are input, and a ledger, manifest or log line must not pass a password on."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def error_line(err: BaseException) -> str:
    """An exception as one ledger-sized line: its last non-empty line (a Ray task error
    ends with the original message), else its type."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


class FailureCode(str, Enum):
    """Why something failed, from a closed set: the ledger's `code` column, counted by
    `stats`; the `reason` column says the same in words a person can act on."""

    BAD_LINE = "bad_line"                  # an input line is not JSON, or lacks or mistypes a field
    UNSAFE_ID = "unsafe_id"                # a video id outside [A-Za-z0-9_-]{1,128}
    BAD_CLIP_ID = "bad_clip_id"            # a clip id that is not <video_id>.<k>.mp4 of its video
    BAD_SPAN = "bad_span"                  # a clip span that is not [start, end] with end after start
    DUPLICATE = "duplicate"                # a second line of a video or clip number; the first is used
    OVERLAPPING_CLIP = "overlapping_clip"  # a clip starts before the previous one ends
    BAD_URL = "bad_url"                    # a URL we do not fetch: not http(s), a playlist, a local file
    NO_TEXT = "no_text"                    # a clip without text; it breaks its run
    NO_SUBTITLES = "no_subtitles"          # no subtitles or captions in the wanted languages
    UNUSABLE_SUBTITLES = "unusable_subtitles"  # a subtitle file that is empty, unreadable or malformed
    WRONG_LANGUAGE = "wrong_language"      # the text or speech is not in the language asked for
    SUBTITLES_PAST_END = "subtitles_past_end"  # subtitle words after the end of the video (dropped)
    NO_RUN = "no_run"                      # clips, but no run of --min-clips consecutive clips
    NOT_FOUND = "not_found"                # the video or media does not exist (HTTP 404/410, no file)
    UNAVAILABLE = "unavailable"            # the host refuses it: private, removed, members-only, 401/403
    TOO_LARGE = "too_large"                # a download or subtitle file above its size cap
    NOT_A_VIDEO = "not_a_video"            # the media cannot be read as video (no format, bad data)
    NETWORK = "network"                    # a transient network or server error (5xx, 429, timeout)
    NO_AUDIO = "no_audio"                  # the media has no audio to transcribe
    BAD_AUDIO = "bad_audio"                # ffmpeg cannot read or decode the audio
    ASR_NO_WORDS = "asr_no_words"          # speech recognition heard no words (in a video or clip)
    PAST_MEDIA_END = "past_media_end"      # a clip lies beyond the end of the video data
    PROBE_FAILED = "probe_failed"          # ffprobe cannot read the downloaded video
    CUT_FAILED = "cut_failed"              # ffmpeg could not cut the sample
    TASK_CRASHED = "task_crashed"          # a worker task died (crash, bug); retried on the next run
    UNCLASSIFIED = "unclassified"          # a row written by a version before failures carried codes
    UNKNOWN_CLIP = "unknown_clip"          # --groups: a group names a clip not in the metadata (group dropped)
    MIXED_VIDEOS = "mixed_videos"          # --groups: a group holds clips of several videos (group dropped)
    CLIPS_OUT_OF_ORDER = "clips_out_of_order"  # --groups: clip numbers in a group do not increase (dropped)
    CLIP_IN_TWO_GROUPS = "clip_in_two_groups"  # --groups: a clip already in an earlier group (later one dropped)
    PRIVATE_ADDRESS = "private_address"    # the URL or a redirect leads to a loopback, private or link-local address, or off http(s)
    SLOW = "slow"                          # the server was slower than the minimum rate, or the video passed its deadline
    OUTPUT_FULL = "output_full"            # the output could not be written (disk full, quota, I/O error); retried
    SEGMENT_OUTSIDE_VIDEO = "segment_outside_video"  # benchmarks: a segment starting at or after the video's end
    TEXT_TOO_LONG = "text_too_long"        # a clip text above --max-text-bytes; it breaks its run
    SUBTITLE_TOO_LARGE = "subtitle_too_large"  # a subtitle file above --max-subtitle-bytes (not parsed)
    CLIP_TEXT_CONFLICT = "clip_text_conflict"  # a clip id given two different texts; neither is used


@dataclass(frozen=True)
class Failure:
    """A ledger row: what failed, where, why (a code from a closed set plus words a
    person can act on), and whether a rerun may help."""

    video_id: str | None
    clip_id: str | None
    stage: str
    code: FailureCode
    reason: str
    permanent: bool = True
    key: str | None = None  # the sample, when one sample failed rather than a clip or video

    def __post_init__(self) -> None:
        # raises ValueError on a code outside the set, e.g. a reason passed where the code goes
        object.__setattr__(self, "code", FailureCode(self.code))
        object.__setattr__(self, "reason", redact(self.reason))

    def to_row(self) -> dict:
        """The ledger row (FAILURE_SCHEMA) as plain values, also for JSON journals."""
        return asdict(self) | {"code": self.code.value}

    @classmethod
    def from_row(cls, row: dict) -> Failure:
        """The Failure of a ledger row as Arrow, pandas or a journal gives it back."""
        code = row.get("code") or FailureCode.UNCLASSIFIED  # journals of older versions have none
        return cls(_text_or_none(row["video_id"]), _text_or_none(row["clip_id"]), row["stage"], code,
                   row["reason"], bool(row["permanent"]), _text_or_none(row.get("key")))


def _text_or_none(value: object) -> str | None:
    """A nullable text column's value: pandas gives NaN for a null string."""
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PlannedSample:
    """A long-form sample: consecutive clips of one video, all with text."""

    key: str
    video_id: str
    url: str
    start: float
    end: float
    clips: tuple[Clip, ...] = field(default_factory=tuple)
    text_source: str = "metadata"  # metadata (HD-VILA), subtitles, auto_captions, asr
    language: str | None = None
    split: str | None = None  # benchmark sources: the dataset split (train, val1, ...); None for pretraining
    qa: str | None = None  # QA sources: the video's questions as a JSON list (shards/README.md `qa`)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def paragraph(self) -> str:
        return paragraph(c.text for c in self.clips)


@dataclass(frozen=True)
class VideoMeta:
    """One video line of the url/span metadata, with its valid clips sorted by k."""

    video_id: str
    url: str
    clips: tuple[Clip, ...]
