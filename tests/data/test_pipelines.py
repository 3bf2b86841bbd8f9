"""The cluster entry point and its configs: every key is a real option, and the entry
runs a build from a config."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import typer
import yaml

from lfvila_data.cli import app
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.realdata import ROOT

sys.path.insert(0, str(ROOT / "pipelines"))
from build_hdvila import config_to_args



@pytest.mark.parametrize("path", sorted((ROOT / "pipelines" / "configs").glob("*.yaml")))
def test_shipped_configs_use_real_options(path):
    cfg = yaml.safe_load(path.read_text())
    name = cfg.pop("command", "build")
    cmd = typer.main.get_command(app).commands[name]
    unknown = {k.replace("-", "_") for k in cfg} - {p.name for p in cmd.params}
    assert not unknown, f"{path.name}: unknown options {unknown}"
    ctx = cmd.make_context(name, config_to_args(cfg)[1:])  # parses: types and flags valid
    assert ctx.params["output"] == cfg["output"]


def test_bool_and_list_options():
    args = config_to_args({"metadata": ["a", "b"], "copy": True, "audio": False,
                           "sections": False, "cut_concurrency": None})
    assert args == ["build", "--metadata", "a", "--metadata", "b", "--copy", "--no-sections"]


def test_entry_point_runs_a_plan_from_config(tmp_path):
    meta, text = write_metadata(tmp_path, [VideoSpec(f"v{i}", f"https://example.invalid/{i}.mp4",
                                                     even_spans(9)) for i in range(3)])
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"source": "hdvila", "metadata": [str(meta)], "text": [str(text)],
                                   "output": str(tmp_path / "out"), "max_clips": 4}))
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "build_hdvila.py"), "--config",
                        str(cfg), "--plan-only"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samples planned" in r.stdout
    plan = pd.read_parquet(next((tmp_path / "out" / "plan").glob("part-*.parquet")))
    assert len(plan) == 6 and set(plan.n_clips) == {4}  # 9 clips -> 4 + 4 (+1 dropped)
