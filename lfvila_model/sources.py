"""Where training batches come from: a *source factory* ``(rank, world) -> source``, a
source being ``(epoch, skip) -> iterable of micro-batches`` starting ``skip`` micro-batches
into ``epoch``. That is how resume finds its place in the data and how tests inject
synthetic batches. A source whose batches carry a ``position`` (the shard loader's) is also
called as ``(epoch, skip, position)`` on resume, to continue exactly after the last batch
consumed.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lfvila_model.config import ConfigError, ModelSection, TrainConfig, as_tuples, data_config, model_config
from lfvila_model.models.lfvila import synthetic_batch

Source = Callable[..., Iterable[dict]]  # (epoch, skip micro-batches[, position]) -> micro-batches
SourceFactory = Callable[[int, int], Source]  # (rank, world) -> Source


@dataclass
class SyntheticSource:
    """Deterministic random batches: the global batch of (epoch, index) sliced to this rank's rows,
    so N workers with batch B see exactly what one process with batch N×B sees."""

    model: ModelSection
    batch_size: int  # per rank
    batches_per_epoch: int = 1000
    seed: int = 0

    def __call__(self, rank: int, world: int) -> Source:
        mcfg = model_config(self.model)

        def epoch_batches(epoch: int, skip: int) -> Iterator[dict]:
            for i in range(skip, self.batches_per_epoch):
                full = synthetic_batch(mcfg, self.batch_size * world, seed=self.seed + epoch * 100_003 + i)
                rows = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
                yield {k: v[rows] for k, v in full.items()}
        return epoch_batches


@dataclass
class ShardSource:
    """Batches from WebDataset shards via lfvila_model.data.make_loader, which splits the shards
    (or, resampled, seeds the draw) by rank. Resumed with the loader position saved in the
    checkpoint, an epoch continues sample for sample (nothing already consumed is decoded
    again); without one (a checkpoint of another world size or worker count) the rest of the
    epoch is re-drawn from (epoch, skip) instead."""

    shards: list[str]
    data: dict  # DataConfig fields
    train: bool = True

    def __call__(self, rank: int, world: int) -> Source:
        from lfvila_model.data import DataConfig, load_tokenizer, make_loader

        tokenizer = load_tokenizer(self.data["tokenizer"]) if self.data.get("tokenizer") else None
        base = {k: as_tuples(v) for k, v in self.data.items()}
        workers = max(1, int(base.get("num_workers", 0)))

        def epoch_batches(epoch: int, skip: int, position: dict | None = None) -> Iterable[dict]:
            seed = int(base.get("seed", 0))
            if position is not None and position.get("num_workers") != workers:
                print(f"data position of {position.get('num_workers')} loader workers, running {workers}: "
                      "re-drawing the rest of the epoch", file=sys.stderr)
                position = None
            if position is None and skip:
                seed += skip * 100_003  # no position to continue from: a fresh draw, not a replay
            return make_loader(self.shards, DataConfig(**{**base, "seed": seed}), train=self.train,
                               tokenizer=tokenizer, rank=rank, world_size=world, epoch=epoch, resume=position)
        return epoch_batches


def setup_data(cfg: TrainConfig, shards: list[str], train: bool = True) -> ShardSource:
    """The shard source factory for ``shards`` with shapes matching the model; training drops
    the last partial batch (gathered features need equal batches on every rank)."""
    extra = {"drop_last": True} if train else {"resample": False}
    data = data_config(cfg, model_config(cfg.model), **extra)
    if not data["tokenizer"]:
        raise ConfigError("data.tokenizer is not set (a BERT vocabulary directory or hub name)")
    return ShardSource(list(shards), data, train)
