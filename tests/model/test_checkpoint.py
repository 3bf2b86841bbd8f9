"""Checkpoint I/O: a save/load round trip restores weights, optimizer, schedule, counters, loader
position and RNG streams; only the last ``keep`` survive; paths resolve to the latest step."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from lfvila_model.checkpoint import (
    TrainState,
    checkpoint_path,
    checkpoints,
    load_checkpoint,
    save_checkpoint,
    stored_config,
)
from lfvila_model.config import ConfigError, load_config


def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, opt, sched


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_everything(tmp_path):
    cfg = load_config("tiny", ["optim.lr=0.25"])
    model, opt, sched = _setup(0)
    for _ in range(2):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        sched.step()
    state = TrainState(step=7, epoch=1, epoch_batches=3, samples=56, position={"epoch": 1, "ordinal": [4, 9]})
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_checkpoint(tmp_path, model, opt, sched, state, cfg)
    after_save = _draws()

    fresh, fresh_opt, fresh_sched = _setup(1)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    loaded = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert path == tmp_path / "step-00000007"
    assert _draws() == after_save  # every RNG stream continues where the save left it
    assert (loaded.step, loaded.epoch, loaded.epoch_batches, loaded.samples) == (7, 1, 3, 56)
    assert loaded.position == state.position
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert fresh_sched.last_epoch == 2 and fresh_opt.param_groups[0]["lr"] == pytest.approx(0.1 / 3)
    assert all(torch.equal(fresh_opt.state[p]["exp_avg"], opt.state[q]["exp_avg"])
               for p, q in zip(fresh.parameters(), model.parameters()))
    assert stored_config(path)["optim"]["lr"] == 0.25
    meta = json.loads((path / "trainer.json").read_text())
    assert meta["state"] == {"step": 7, "epoch": 1, "epoch_batches": 3, "samples": 56} and meta["world_size"] == 1


def test_without_a_position_none_is_stored_and_rng_can_be_left_alone(tmp_path):
    model, opt, sched = _setup(0)
    path = save_checkpoint(tmp_path, model, opt, sched, TrainState(step=1), load_config("tiny"))
    assert not (path / "data_position.json").exists()
    fresh = _setup(1)[0]
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    assert load_checkpoint(path, fresh, restore_rng=False).position is None
    assert torch.equal(torch.rand(2), expected)


def test_keeps_the_last_n_and_resolves_the_latest(tmp_path):
    model, opt, sched = _setup(0)
    cfg = load_config("tiny")
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, opt, sched, TrainState(step=step), cfg, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    (tmp_path / ".tmp-step-00000005").mkdir()  # an interrupted save is not a checkpoint
    assert checkpoint_path(tmp_path) == tmp_path / "step-00000004"
    assert checkpoint_path(tmp_path / "step-00000003") == tmp_path / "step-00000003"
    with pytest.raises(ConfigError, match="no checkpoint at"):
        checkpoint_path(tmp_path / "empty")
