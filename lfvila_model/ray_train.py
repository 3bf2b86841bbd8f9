"""The training loop on Ray Train: ``num_workers`` workers each run lfvila_model.train.train
with DDP (gloo on CPU, nccl on GPU); Ray only starts the workers and collects what rank 0
reports, the loop and its checkpoints are the same as in one process."""
from __future__ import annotations

import dataclasses
import os

from lfvila_model.config import TrainConfig
from lfvila_model.metrics import last_logged
from lfvila_model.sources import SourceFactory


def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Paths made absolute: Ray workers run in another directory."""
    cfg = dataclasses.replace(cfg)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, dir=os.path.abspath(cfg.checkpoint.dir))
    cfg.log = dataclasses.replace(cfg.log, dir=os.path.abspath(cfg.log.dir))
    if cfg.stage2.stage1_checkpoint:
        cfg.stage2 = dataclasses.replace(cfg.stage2, stage1_checkpoint=os.path.abspath(cfg.stage2.stage1_checkpoint))
    tok = cfg.data.tokenizer
    if tok and os.path.exists(tok):  # a local vocabulary, not a hub name
        cfg.data = dataclasses.replace(cfg.data, tokenizer=os.path.abspath(tok))
    return cfg


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from lfvila_model.train import train

    train(TrainConfig.from_dict(config["cfg"]), config["sources"], resume=config["resume"],
          device=ray.train.torch.get_device(), wrap_model=ray.train.torch.prepare_model,
          report=ray.train.report)


def train_ray(cfg: TrainConfig, sources: SourceFactory, num_workers: int, *, use_gpu: bool = False,
              resume: bool | str = False, address: str | None = None) -> dict:
    """The same loop in ``num_workers`` Ray Train workers (DDP, gloo on CPU / nccl on GPU).

    Checkpoints are our own files in ``checkpoint.dir``, which must be reachable by every node
    (rank 0 writes them; resume reads them on every rank).
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = _absolute(cfg)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg.to_dict(), "sources": sources,
                           "resume": os.path.abspath(resume) if isinstance(resume, str) else resume},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="lfvila-train", storage_path=os.path.join(cfg.checkpoint.dir, "ray")),
    )
    trainer.fit()  # raises if a worker failed
    return last_logged(cfg.log.dir)
