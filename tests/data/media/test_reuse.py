"""Sample files already on disk are checked before they are reused (issue 14 item 2): a
truncated, overwritten or corrupt file is made again, alone; its neighbours are left
untouched and the manifest is complete."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lfvila_data.build import run_build
from lfvila_data.media.cut import CutConfig, probe
from lfvila_data.media.task import reuse_problem
from lfvila_data.schemas import manifest_row_to_sample
from tests.support.smallbuild import KEYS, copy_build, file_facts, read_video_stream, small_build_fixture

BAD = "vidA_00004_00006"  # its neighbour vidA_00001_00003 is cut from the same video
small_build = small_build_fixture()


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_middle(path) -> None:
    """Overwrite bytes in the middle of the file: the size stays, the container still opens."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(64))


@pytest.mark.parametrize("damage, lose_journal", [
    (truncate, False),         # the journal records the file: its stamp and size changed
    (truncate, True),          # only the file is left: the packet check finds it short
    (corrupt_middle, False),   # same size, other bytes: the stamp changed
])
def test_a_damaged_sample_is_redone_alone(small_build, tmp_path, damage, lose_journal):
    site, built = small_build
    out = copy_build(built, tmp_path / "out")
    expected = pd.read_parquet(out / "manifest")
    bad = out / expected.set_index("key").loc[BAD, "video"]
    good_bytes = bad.read_bytes()
    damage(bad)
    if lose_journal:
        shutil.rmtree(out / "_journal")
    neighbours = {k: v for k, v in file_facts(out).items()
                  if k.startswith("videos/") and BAD not in k}
    site.srv.requests.clear()
    run_build(site.config(out))
    assert site.srv.requests["a.mp4"] >= 1 and site.srv.requests["b.mp4"] == 0
    assert {k: v for k, v in file_facts(out).items()
            if k.startswith("videos/") and BAD not in k} == neighbours
    assert bad.read_bytes() == good_bytes  # made again, the same way
    got = read_video_stream(bad)
    m = pd.read_parquet(out / "manifest")
    row = m.set_index("key").loc[BAD]
    assert got["height"] == 240 and abs(got["frames"] - (row.end - row.start) * 3) <= 1
    assert list(m.key) == KEYS
    pd.testing.assert_frame_equal(m, expected)
    assert not len(pd.read_parquet(out / "failures"))


def test_a_file_unlike_its_plan_is_not_reused(small_build):
    """The packet check alone (no journal): a file cut short or with another size or rate."""
    built = small_build[1]
    row = next(r for r in pq.read_table(built / "manifest").to_pylist() if r["key"] == BAD)
    sample = manifest_row_to_sample(row)
    found = probe(built / row["video"])
    assert reuse_problem(found, sample, CutConfig()) is None
    assert "px high" in reuse_problem(found, sample, CutConfig(height=120))
    assert "frames" in reuse_problem(found, sample, CutConfig(fps=1))
    longer = replace(sample, end=sample.end + 5)
    assert "lasts" in reuse_problem(found, longer, CutConfig())
    assert reuse_problem(found, longer, CutConfig(copy=True)) is not None
