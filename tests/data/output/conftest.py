"""A small loopback site of generated videos and its HD-VILA metadata, and the build
command line, for the tests that run real builds as subprocesses (leases, full disks,
kills)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lfvila_data.localserver import MediaServer
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video

VIDEOS = 8


@dataclass
class Site:
    server: MediaServer
    meta: Path
    text: Path
    keys: list[str]

    def build_cmd(self, output: Path | str, workdir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(self.meta),
                "--text", str(self.text), "--output", str(output), "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    www = root / "www"
    www.mkdir()
    for i in range(VIDEOS):
        make_timecoded_video(www / f"v{i}.mp4", 30, width=320, height=240, audio=False)
    with MediaServer(www) as srv:
        videos = [VideoSpec(f"vid{i}", srv.url(f"v{i}.mp4"), even_spans(5)) for i in range(VIDEOS)]
        meta, text = write_metadata(root / "meta", videos)
        yield Site(srv, meta, text, [f"vid{i}_00001_00005" for i in range(VIDEOS)])

