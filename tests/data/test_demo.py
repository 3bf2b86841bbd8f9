"""The README's first command: the built-in demo corpus builds, shards and trains a few steps
end to end offline."""
from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys

import pandas as pd

from tests.model.checks import assert_retrieval_consistent
from tests.support.realdata import ROOT


def test_demo_builds_shards_and_trains(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "demo", "--output", str(out),
                        "--videos", "2", "--clips", "8", "--max-clips", "4", "--train-steps", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = pd.read_parquet(out / "manifest")
    assert len(m) == 4 and (m.n_clips == 4).all()
    assert m.paragraph.str.contains("red|green|blue|yellow|purple|orange|black|white").all()
    assert pd.read_parquet(out / "failures").empty
    assert all((out / v).stat().st_size > 0 for v in m.video)
    shards = pd.read_parquet(out / "shards" / "manifest")
    assert set(shards.key) == set(m.key) and set(shards.split) == {"train", "val"}
    # training: a vocabulary of the corpus, a checkpoint, per-step metrics, retrieval on each split
    vocab = (out / "tokenizer" / "vocab.txt").read_text().split()
    assert {"[CLS]", "[SEP]", "[PAD]", "red", "."} <= set(vocab)
    ckpt = out / "train" / "checkpoints" / "step-00000003"
    assert (ckpt / "model.pt").stat().st_size > 0 and (ckpt / "trainer.json").is_file()
    with open(out / "train" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    ev = json.loads((out / "train" / "eval.json").read_text())
    assert {s: ev[s]["num_samples"] for s in ("train", "val")} == {"train": 2, "val": 2}
    assert ev["checkpoint"] == str(ckpt)
    for split in ("train", "val"):
        for direction in ("paragraph_to_video", "video_to_paragraph"):
            assert_retrieval_consistent(ev[split][direction], n=2)
        p2v = ev[split]["paragraph_to_video"]
        assert f"{split} p->v" in r.stdout and f"R@1 {p2v['R@1']:.1f}%  R@5 {p2v['R@5']:.1f}%" in r.stdout
    log = (out / "train" / "train.log").read_text()  # the lfvila-train runs' output
    assert "step 3/3" in log and log.count('"paragraph_to_video"') == 2


def test_demo_train_steps_zero_skips_training(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "demo", "--output", str(out),
                        "--videos", "1", "--clips", "4", "--max-clips", "4", "--train-steps", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "shards" / "manifest").is_dir() and not (out / "train").exists()


def test_the_data_package_never_imports_the_model_package():
    """The demo trains through the `lfvila-train` command; nothing in lfvila_data imports
    lfvila_model (it is an optional extra of the data pipeline)."""
    root = ROOT / "lfvila_data"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "lfvila_model"]
    assert len(list(root.rglob("*.py"))) > 20 and found == []
