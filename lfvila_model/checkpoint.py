"""Checkpoint I/O: ``root/step-XXXXXXXX`` directories holding the model, optimizer,
scheduler, every rank's RNG state and loader position, and ``trainer.json`` (the step
counters and the config), written under a temporary name and renamed when complete so a
directory that exists is whole; and loading a stage-1 checkpoint under a stage-2 model.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lfvila_model.config import ConfigError, TrainConfig


@dataclass
class TrainState:
    """Where training stands: updates done, and the data position they imply."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0  # micro-batches consumed in this epoch
    samples: int = 0  # global samples seen
    position: dict | None = field(default=None, repr=False)  # this rank's loader position (not in trainer.json)


def rank_world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (what checkpoints hold)."""
    return model.module if hasattr(model, "module") else model


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    return sorted(p.parent for p in Path(root).glob("step-*/trainer.json"))


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A step-* directory as is; a checkpoint directory → its latest step."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise ConfigError(f"no checkpoint at {path}")
    return found[-1]


def stored_config(path: str | os.PathLike) -> dict:
    """The config a step-* directory was trained with, as plain data."""
    return json.loads((Path(path) / "trainer.json").read_text()).get("config", {})


def save_checkpoint(root: str | os.PathLike, model: nn.Module, optimizer, scheduler, state: TrainState,
                    cfg: TrainConfig, keep: int = 0) -> Path | None:
    """Write ``root/step-XXXXXXXX`` via a temporary directory renamed when complete; keep the last
    ``keep`` (0 = all). Collective under torch.distributed (RNG states of every rank); rank 0 writes."""
    rank, world = rank_world()
    mine = (_rng_state(), state.position)
    gathered = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    rngs, positions = [g[0] for g in gathered], [g[1] for g in gathered]
    final = Path(root) / f"step-{state.step:08d}"
    if rank == 0:
        tmp = Path(root) / f".tmp-step-{state.step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(unwrap(model).state_dict(), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rngs, tmp / "rng.pt")
        if any(p is not None for p in positions):  # per rank: where its loader stands in the epoch
            (tmp / "data_position.json").write_text(json.dumps({"epoch": state.epoch, "positions": positions}))
        meta = {k: v for k, v in asdict(state).items() if k != "position"}
        (tmp / "trainer.json").write_text(json.dumps(
            {"state": meta, "world_size": world, "config": cfg.to_dict()}, indent=1, default=list))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep:
            for old in checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return final if rank == 0 else None


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> TrainState:
    """Restore what ``save_checkpoint`` wrote; each rank takes its own RNG state when world sizes match."""
    path = Path(path)
    meta = json.loads((path / "trainer.json").read_text())
    unwrap(model).load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = TrainState(**meta["state"])
    rank, world = rank_world()
    if restore_rng:
        rngs = torch.load(path / "rng.pt", weights_only=False)
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        else:
            print(f"checkpoint has {len(rngs)} ranks' RNG states, running {world}: RNG not restored",
                  file=sys.stderr)
    if (path / "data_position.json").is_file():
        saved = json.loads((path / "data_position.json").read_text())
        if len(saved["positions"]) == world and saved["epoch"] == state.epoch:
            state.position = saved["positions"][rank]
        else:
            print(f"checkpoint has {len(saved['positions'])} ranks' data positions, running {world}: "
                  "the epoch's remaining data is re-drawn", file=sys.stderr)
    return state


def load_stage1(model: nn.Module, path: str | os.PathLike) -> Path:
    """Load a stage-1 checkpoint of our trainer into ``model.stage1`` (an LFVILAStage2) and
    freeze it (no gradients, eval mode); returns the step directory."""
    path = checkpoint_path(path)
    stage = stored_config(path).get("stage", 1)
    if stage != 1:
        raise ConfigError(f"{path} is a stage-{stage} checkpoint, stage 2 starts from a stage-1 one")
    try:
        model.stage1.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ConfigError(f"{path} does not fit this model config: {str(e).splitlines()[0]} "
                          f"(model.* must match the stage-1 run)") from None
    model.stage1.requires_grad_(False)
    model.stage1.eval()
    return path
