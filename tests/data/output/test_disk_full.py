"""A full output disk (a real, small tmpfs): the build stops at the first sample that
cannot be written, with one error line and exit code 3, records nothing as a permanent
failure and leaves no temporary files; a rerun after freeing space makes every sample."""
from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from lfvila_data.output.write import OutputDir, read_journal
from tests.data.output.conftest import VIDEOS


@pytest.fixture
def small_disk(tmp_path):
    """An output on a 48 KiB tmpfs: room for the plan and a few samples, not for all."""
    mnt = tmp_path / "out"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_output_stops_the_build_and_a_rerun_completes(site, tmp_path, small_disk):
    out, cmd = small_disk, site.build_cmd(small_disk, tmp_path / "work", "--download-concurrency", "1")
    site.server.requests.clear()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 3, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and f"the output {out} cannot be written" in errors[0]
    assert "No space left on device" in errors[0] and "rerun the same command" in errors[0]
    assert len(site.server.requests) < VIDEOS, r.stderr  # stopped early, not after failing every video
    assert not (out / "manifest").exists()
    journaled = [f for _, payload in read_journal(OutputDir(str(out))).values() for f in payload["failures"]]
    assert not [f for f in journaled if f["permanent"]]
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".part"))]

    subprocess.run(["mount", "-o", "remount,size=8m", str(out)], check=True)  # space freed
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(pd.read_parquet(out / "manifest").key) == site.keys
    assert pd.read_parquet(out / "failures").empty
