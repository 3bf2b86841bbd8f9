"""The README's first command: the built-in demo corpus builds end to end offline."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd


def test_demo_builds(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "demo", "--output", str(out),
                        "--videos", "2", "--clips", "8", "--max-clips", "4"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = pd.read_parquet(out / "manifest.parquet")
    assert len(m) == 4 and (m.n_clips == 4).all()
    assert m.paragraph.str.contains("red|green|blue|yellow|purple|orange|black|white").all()
    assert pd.read_parquet(out / "failures.parquet").empty
    assert all((out / v).stat().st_size > 0 for v in m.video)
    shards = pd.read_parquet(out / "shards" / "manifest.parquet")
    assert set(shards.key) == set(m.key) and set(shards.split) == {"train", "val"}
