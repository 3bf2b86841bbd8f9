"""Where the checkout (ROOT) and the shipped real data (../shared/data/real: subtitle files and
short videos) are: next to the checkout, or at the workspace's fixed place for a checkout made elsewhere."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def _real_root() -> Path:
    for root in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")):
        if (root / "data" / "real").is_dir():
            return root / "data" / "real"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "real"  # absent: tests skip


REAL = _real_root()
SUBTITLES = REAL / "subtitles"
VIDEOS = REAL / "videos"
