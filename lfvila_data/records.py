"""Small typed records that flow between pipeline stages, and the id rules that keep
every path we write inside the output directory."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum

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


def sample_key(video_id: str, first_k: int, last_k: int) -> str:
    """Stable, dot-free key of a sample: the video and its clip-number range.

    WebDataset splits keys at the first dot, so keys must have none; the clip range
    makes the key stable across reruns and unique within a build."""
    return f"{video_id}_{first_k:05d}_{last_k:05d}"


@dataclass(frozen=True)
class TimedText:
    """A sentence and its span in seconds of source time."""

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

    def sentence_rows(self, origin: float = 0.0) -> list[dict]:
        """The sentences as plain dicts, times relative to `origin` (source time when 0)."""
        return [{"text": s.text, "start": round(s.start - origin, 6), "end": round(s.end - origin, 6)}
                for s in self.timed_sentences()]


def error_line(err: BaseException) -> str:
    """An exception as one ledger-sized line: its last non-empty line (a Ray task error
    ends with the original message), else its type."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


@dataclass(frozen=True)
class Failure:
    """A ledger row: what failed, where, and why in words a person can act on."""

    video_id: str | None
    clip_id: str | None
    stage: str
    reason: str
    permanent: bool = True
    key: str | None = None  # the sample, when one sample failed rather than a clip or video

    def to_row(self) -> dict:
        return asdict(self)


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

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def paragraph(self) -> str:
        return " ".join(c.text for c in self.clips if c.text)


@dataclass(frozen=True)
class VideoMeta:
    """One video line of the url/span metadata, with its valid clips sorted by k."""

    video_id: str
    url: str
    clips: tuple[Clip, ...]
