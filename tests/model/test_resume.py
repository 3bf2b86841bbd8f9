"""Exact data-position resume on real shards: K steps + checkpoint + resume to N consume the same
samples, in the same order, as N steps straight, and end at the same parameters."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lfvila_model.config import load_config
from lfvila_model.sources import setup_data
from lfvila_model.train import train
from tests.model.recording import RecordKeys, recorded


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)


VARIANTS = {
    # every shard once per epoch; epochs end when the 2 workers run dry (4 samples); resumed
    # mid-epoch 0 with one sample waiting in each worker's shuffle buffer
    "epochs": (["data.resample=false", "optim.steps_per_epoch=null", "data.batch_size=1", "data.shuffle_buffer=3",
                "optim.max_steps=6", "optim.grad_accum=1"], 3),
    # endless resampled stream cut into 2-step epochs, gradient accumulation; resumed mid-epoch 1
    "resampled": (["data.resample=true", "optim.steps_per_epoch=2", "data.batch_size=2", "data.shuffle_buffer=4",
                   "optim.max_steps=5", "optim.grad_accum=2"], 3),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resume_on_shards_replays_the_same_samples(shards, vocab_dir, tmp_path, variant):
    over, k = VARIANTS[variant]
    train_shards = [s for s in shards if "/train-" in s]

    def cfg(name):
        return load_config("tiny", [
            f"checkpoint.dir={tmp_path}/{name}/ck", f"log.dir={tmp_path}/{name}/log", "log.tensorboard=false",
            "log.progress=false", f"data.tokenizer={vocab_dir}", "data.num_workers=2",
            f"checkpoint.every_steps={k}", "checkpoint.keep=0", *over])  # dropout stays on

    a = cfg("a")
    train(a, RecordKeys(setup_data(a, train_shards), str(tmp_path / "a" / "keys")))
    b = cfg("b")
    step_k = f"step-{k:08d}"
    shutil.copytree(Path(a.checkpoint.dir) / step_k, Path(b.checkpoint.dir) / step_k)
    assert (Path(b.checkpoint.dir) / step_k / "data_position.json").is_file()
    train(b, RecordKeys(setup_data(b, train_shards), str(tmp_path / "b" / "keys")), resume=True)

    straight, resumed = recorded(tmp_path / "a" / "keys"), recorded(tmp_path / "b" / "keys")
    accum = a.optim.grad_accum
    assert len(straight) == a.optim.max_steps * accum
    assert resumed == straight[k * accum:], (straight, resumed)
    assert len({line.split()[0] for line in straight}) >= 2  # the run crossed an epoch boundary
    final = f"step-{a.optim.max_steps:08d}"
    pa, pb = params(Path(a.checkpoint.dir) / final), params(Path(b.checkpoint.dir) / final)
    assert pa.keys() == pb.keys()
    assert max((pa[n] - pb[n]).abs().max().item() for n in pa) <= 1e-6
