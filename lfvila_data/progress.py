"""Progress lines while a job runs and the summary table at its end."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


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
class BuildProgress:
    """Counters of the fetch/cut phase, printed to stderr at most every `every_s`."""

    videos_total: int
    every_s: float = 2.0
    videos_done: int = 0
    videos_failed: int = 0
    samples_written: int = 0
    samples_failed: int = 0
    bytes_downloaded: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._printer = ThrottledPrinter(self.every_s)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        finished = self.videos_done + self.videos_failed
        rate = finished / elapsed
        eta = (self.videos_total - finished) / rate if rate > 0 else 0
        return (f"build: videos {finished}/{self.videos_total} (failed {self.videos_failed}) | "
                f"samples {self.samples_written} written | {self.samples_failed} clips/samples failed | "
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
