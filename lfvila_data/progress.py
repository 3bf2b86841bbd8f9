"""Progress lines while a job runs and the summary table at its end."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def fetched_split(fetched: int, text: int) -> str:
    """" = videos X + text Y" after a total of fetched bytes, when the text stage (subtitle
    look-ups, speech recognition's audio) fetched any; nothing otherwise."""
    return f" = videos {human_bytes(fetched - text)} + text {human_bytes(text)}" if text else ""


def human_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class ThrottledPrinter:
    """Writes a progress line at most every `every_s` seconds (always when forced), so a
    long job shows it is alive without flooding the log. A callable line is only built
    when it is written."""

    every_s: float = 2.0
    write: Callable[[str], None] = to_stderr
    last: float = 0.0  # when the last line was written (time.monotonic)

    def __call__(self, line: str | Callable[[], str], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.write(line() if callable(line) else line)


@dataclass
class Throttled(Generic[T]):
    """Passes a value on at most every `every_s` seconds and holds back the latest of
    those in between for `flush`: a task reporting after every sample sends a few reports
    a minute, whatever the cluster's size, and its final state still arrives."""

    send: Callable[[T], None]
    every_s: float = 2.0
    last: float = -math.inf  # when a value was last sent (time.monotonic)
    held: T | None = None

    def __call__(self, value: T) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last, self.held = now, None
            self.send(value)
        else:
            self.held = value

    def flush(self) -> None:
        if self.held is not None:
            value, self.held = self.held, None
            self.send(value)


@dataclass(frozen=True)
class CutProgress:
    """How far the cut of one video is, sent by the task cutting it while it runs, so a
    long video's samples show in the progress line before the whole video is finished.
    Totals so far, not increments: a report that is dropped or repeated loses nothing."""

    video_id: str
    samples_done: int      # planned samples finished: written, reused or failed
    samples_written: int
    seconds_cut: float     # source seconds of the samples this task cut


@dataclass
class BuildProgress:
    """Counters of the fetch/cut phase, printed to stderr at most every `every_s`.

    Finished videos add their results; videos still being cut add their latest
    `CutProgress`, which the video's result then replaces."""

    videos_total: int
    every_s: float = 2.0
    samples_total: int = 0      # planned samples of the videos this run processes
    videos_done: int = 0
    videos_failed: int = 0
    samples_done: int = 0       # of finished videos: written, reused or failed
    samples_written: int = 0
    samples_failed: int = 0
    seconds_cut: float = 0.0
    bytes_downloaded: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._printer = ThrottledPrinter(self.every_s)
        self._planned: dict[str, int] = {}         # videos started: their planned samples
        self._cutting: dict[str, CutProgress] = {}  # videos being cut: their latest report

    def video_started(self, video_id: str, samples: int) -> None:
        self._planned[video_id] = samples

    def cut_progress(self, report: CutProgress) -> None:
        self._cutting[report.video_id] = report

    def video_finished(self, video_id: str) -> None:
        """Counts the video's planned samples as done and its cut seconds (from its last
        report, which arrives before its result); written and failed counts come from the
        result itself."""
        self.samples_done += self._planned.pop(video_id, 0)
        report = self._cutting.pop(video_id, None)
        self.seconds_cut += report.seconds_cut if report else 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        finished = self.videos_done + self.videos_failed
        rate = finished / elapsed
        live = self._cutting.values()
        done = self.samples_done + sum(c.samples_done for c in live)
        # by samples where known: a long video being cut has an eta before it is finished
        left, speed = ((self.samples_total - done, done / elapsed) if self.samples_total and done
                       else (self.videos_total - finished, rate))
        eta = left / speed if speed > 0 else 0
        written = self.samples_written + sum(c.samples_written for c in live)
        seconds = self.seconds_cut + sum(c.seconds_cut for c in live)
        return (f"build: videos {finished}/{self.videos_total} (failed {self.videos_failed}) | "
                f"samples {done:,}/{self.samples_total:,} ({written:,} written), "
                f"{seconds:,.0f} s of video cut | {self.samples_failed} clips/samples failed | "
                f"{human_bytes(self.bytes_downloaded)} downloaded "
                f"({human_bytes(self.bytes_downloaded / elapsed)}/s) | {rate:.2f} videos/s | "
                f"elapsed {human_time(elapsed)}, eta {human_time(eta)}")

    def tick(self, force: bool = False) -> None:
        self._printer(self.line, force)


def print_summary(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table on stdout."""
    width = max(len(k) for k, _ in rows)
    print(title)
    print("-" * (width + 24))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 24))
