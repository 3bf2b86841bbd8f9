"""Retrieval fine-tuning, the paper's protocol (the release's `run_retrieval.py` and its
`{actnet,didemo,queryd,cmovie}_ret.yaml`), on benchmark shards (`task: retrieval`):

- start from the weights of a pretrained stage-1 checkpoint (``finetune.init``);
- each sample is the whole video, 32 frames spread over it (ends jittered in training) and
  its sentences merged to 4 (Condensed Movies: 1) - lfvila_model.data does that for every
  retrieval sample;
- the in-batch (gathered) symmetric contrastive loss between video and paragraph, no MTC;
- 1 warm-up epoch, then the LR multiplied by 0.25 every 5 epochs (Condensed Movies: 0.5
  every epoch), 20 epochs, batch 16 per GPU;
- validation every ``eval.every_steps`` updates; the model with the best paragraph-to-video
  R@1 is kept in ``checkpoint.dir/best`` (``PeriodicEval``, which also runs the optional
  downstream evaluation during pretraining).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tarfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lfvila_model.checkpoint import checkpoint_path, checkpoints, save_checkpoint, stored_config, unwrap
from lfvila_model.config import ConfigError, TrainConfig
from lfvila_model.eval import BENCHMARKS, evaluate, paper_table
from lfvila_model.losses import gather_features, global_contrastive_loss, rank_offset
from lfvila_model.train import TrainRecipe, param_groups

BEST = "best"


def step_lr_factor(step: int, warmup: int, steps_per_epoch: int, decay_epochs: float, rate: float) -> float:
    """LR multiplier of update ``step`` (0-based): linear warm-up over ``warmup`` updates, then
    ``rate`` to the power of the number of whole ``decay_epochs`` periods since step 0 (the
    release's step scheduler counts them from the start, warm-up included)."""
    if step < warmup:
        return (step + 1) / warmup
    return rate ** math.floor(step / (decay_epochs * steps_per_epoch))


class RetrievalObjective:
    """The fine-tuning loss: symmetric InfoNCE between video and paragraph features over the
    batch gathered from all ranks (temperature 0.05), as the release's ct_global_loss."""

    names = ("loss", "global")

    def __init__(self, temperature: float = 0.05):
        self.temperature = temperature

    def __call__(self, model: nn.Module, batch: dict, device: torch.device, seed: int,
                 bf16: bool = False) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model(*(batch[k].to(device, non_blocking=True) for k in ("video", "input_ids", "attention_mask")))
        video, paragraph = feats["video"].float(), feats["paragraph"].float()
        loss = global_contrastive_loss(video, paragraph, self.temperature, gather_features(video),
                                       gather_features(paragraph), rank_offset(len(video)))
        return {"loss": loss, "global": loss.detach()}


def load_init(model: nn.Module, path: str) -> Path:
    """The weights of a stage-1 checkpoint into ``model`` (no optimizer, schedule or data
    position: fine-tuning starts at step 0); a checkpoint of another shape is one ConfigError."""
    step = checkpoint_path(path)
    stage = stored_config(step).get("stage", 1)
    if stage != 1:
        raise ConfigError(f"{step} is a stage-{stage} checkpoint; retrieval fine-tuning starts from a stage-1 one")
    try:
        model.load_state_dict(torch.load(step / "model.pt", map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ConfigError(f"{step} does not fit this model config: {str(e).splitlines()[0]}") from None
    return step


class FinetuneRecipe(TrainRecipe):
    """TrainRecipe with the fine-tuning loss and LR schedule, started from ``finetune.init``."""

    def make_optimizer(self, raw: nn.Module):
        optim, ft = self.cfg.optim, self.cfg.finetune
        if optim.steps_per_epoch is None:
            raise ConfigError("fine-tuning needs optim.steps_per_epoch (lfvila-train counts it from the shards)")
        warmup = optim.warmup()
        opt = torch.optim.AdamW(param_groups(raw, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: step_lr_factor(
            s, warmup, optim.steps_per_epoch, ft.lr_decay_epochs, ft.lr_decay_rate))
        return opt, sched

    def make_objective(self) -> RetrievalObjective:
        if self.cfg.stage != 1:
            raise ConfigError("retrieval fine-tuning runs on the stage-1 model (stage: 1)")
        return RetrievalObjective()

    def _restore(self, raw: nn.Module, resume: bool | str):
        state = super()._restore(raw, resume)
        if state.step == 0:  # not resumed: the pretrained weights
            if not self.cfg.finetune.init:
                raise ConfigError("finetune.enabled needs finetune.init (lfvila-train --init PATH)")
            self._say(f"fine-tuning from {load_init(raw, self.cfg.finetune.init)}")
        return state


class PeriodicEval:
    """Retrieval metrics on ``eval.downstream_shards`` (rank 0; the others wait), appended to
    ``log.dir/eval.jsonl``; with ``eval.keep_best`` the model whose paragraph-to-video R@1 beats
    every earlier one (strictly, as the release) is saved to ``checkpoint.dir/best`` (one
    step-* directory, its metrics in ``eval.json``). The best so far is read back from there
    on resume. Subclasses change what is measured (``measure``, ``score``, ``table``)."""

    benchmarks = BENCHMARKS  # the names eval.benchmark may take
    what = "paragraph-to-video R@1"

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int):
        from lfvila_model.data import expand_shards
        from lfvila_model.sources import setup_data

        self.cfg, self.device, self.rank = cfg, device, rank
        if cfg.eval.benchmark is not None and cfg.eval.benchmark not in self.benchmarks:
            raise ConfigError(f"unknown eval.benchmark {cfg.eval.benchmark!r} (choose {', '.join(self.benchmarks)})")
        self.best_dir = Path(cfg.checkpoint.dir) / BEST
        data = dataclasses.replace(cfg.data, split=cfg.eval.split)
        self.source = setup_data(dataclasses.replace(cfg, data=data),
                                 expand_shards(cfg.eval.downstream_shards), train=False)
        found = checkpoints(self.best_dir)
        self.best = -1.0
        if found and (found[-1] / "eval.json").is_file():
            self.best = self.score(json.loads((found[-1] / "eval.json").read_text()))

    def measure(self, model: nn.Module, batches) -> dict:
        """Retrieval metrics (stage 2: of its frozen stage-1 model)."""
        model = getattr(model, "stage1", model)
        return evaluate(model, batches, self.device, bf16=self.cfg.optim.bf16)

    def score(self, metrics: dict) -> float:
        """The number the best model is kept by."""
        return metrics["paragraph_to_video"]["R@1"]

    def table(self, metrics: dict) -> str:
        return paper_table(metrics, self.cfg.eval.benchmark)

    def __call__(self, recipe: TrainRecipe) -> dict | None:
        state, metrics = recipe.state, None
        if self.rank == 0:
            metrics = self.measure(unwrap(recipe.model), self.source(0, 1)(0, 0))
            metrics.update(step=state.step, epoch=state.epoch)
            log = Path(self.cfg.log.dir)
            log.mkdir(parents=True, exist_ok=True)
            with open(log / "eval.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(f"eval at step {state.step}:\n{self.table(metrics)}", flush=True)
        improved = [metrics is not None and self.score(metrics) > self.best]
        if recipe.world > 1:
            dist.broadcast_object_list(improved, src=0)
        if self.cfg.eval.keep_best and improved[0]:
            path = save_checkpoint(self.best_dir, recipe.model, recipe.optimizer, recipe.scheduler, state,
                                   self.cfg, keep=1)
            if path is not None:
                (path / "eval.json").write_text(json.dumps(metrics, indent=1))
                self.best = self.score(metrics)
                print(f"best {self.what} {self.best:.2f}: saved {path}", flush=True)
        return metrics


def count_samples(urls: list[str], split: str | None = None, questions: bool = False) -> int:
    """Samples in local shards (of ``split`` when given), from their json members read with
    tarfile: what an epoch holds, for ``optim.steps_per_epoch``; ``questions``: their
    multiple-choice questions instead (QA fine-tuning's examples)."""
    from lfvila_model.qa import multiple_choice_items

    n = 0
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar:
                if not m.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(m).read()) if split is not None or questions else {}
                if split is None or meta.get("split") == split:
                    n += len(multiple_choice_items(meta.get("qa"))) if questions else 1
    return n
