"""Helpers shared by the model tests: what retrieval metrics must satisfy whatever the
scores, and a tiny model config pointing at a saved BERT checkpoint."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILAConfig


def assert_retrieval_consistent(r: dict, n: int) -> None:
    """What must hold for any scores of ``n`` samples: R@k is a multiple of 100/n, grows with k
    and is 100 from k = n on; with n = 2 the ranks are 1 or 2, so they follow from R@1."""
    ks = sorted(int(k[2:]) for k in r if k.startswith("R@"))
    for k in ks:
        assert round(r[f"R@{k}"] * n / 100, 9).is_integer(), (k, r)
        assert r[f"R@{k}"] == 100.0 or k < n, (k, r)
    assert [r[f"R@{k}"] for k in ks] == sorted(r[f"R@{k}"] for k in ks)
    assert 1 <= r["median_rank"] <= n and 1 <= r["mean_rank"] <= n
    if n == 2:
        assert r["mean_rank"] == pytest.approx(2 - r["R@1"] / 100)


def tiny_with_saved_bert(path: Path, bert_class) -> tuple[LFVILAConfig, object, int]:
    """(the tiny config with ``text.pretrained`` = ``path``, the saved transformers model of
    ``bert_class`` with 2 layers after the stage-1 ones, the number of stage-1 layers)."""
    from transformers import BertConfig

    tiny = presets.tiny()
    used = tiny.text.split + tiny.text.paragraph_layers
    bert = bert_class(BertConfig(**{**tiny.text.bert, "num_hidden_layers": used + 2}))
    bert.save_pretrained(path)
    return dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, pretrained=str(path))), bert, used


def resumed_params(cfg, source, run_dir: str, step: int) -> dict:
    """Train ``cfg`` to its end resuming from ``run_dir``'s step-``step`` checkpoint (copied
    into cfg's checkpoint.dir); the parameters of its last checkpoint."""
    import shutil

    import torch

    from lfvila_model.checkpoint import checkpoints
    from lfvila_model.train import train

    name = f"step-{step:08d}"
    shutil.copytree(Path(run_dir) / name, Path(cfg.checkpoint.dir) / name)
    train(cfg, source, resume=True)
    return torch.load(checkpoints(cfg.checkpoint.dir)[-1] / "model.pt", weights_only=True)
