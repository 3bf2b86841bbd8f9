"""The LF-VILA training recipe, in the manner of torchtune: ``TrainRecipe.setup`` (model,
optimizer, objective, checkpoint, data) -> ``train`` (a loop of ``train_step``) ->
``cleanup``, and ``train()``, the entry point that runs the three; in one process, or in
each Ray Train worker (lfvila_model.ray_train). Stage 1 is contrastive; with ``stage: 2``,
MLM + video-text matching on a frozen stage-1 model. Configs: lfvila_model.config;
batches: lfvila_model.sources; checkpoints: lfvila_model.checkpoint.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lfvila_model.checkpoint import (
    TrainState,
    checkpoint_path,
    checkpoints,
    load_checkpoint,
    load_stage1,
    rank_world,
    save_checkpoint,
    stored_config,
)
from lfvila_model.config import ConfigError, OptimConfig, TrainConfig, model_config
from lfvila_model.metrics import MetricLogger
from lfvila_model.models.lfvila import LFVILA, LFVILAStage2
from lfvila_model.models.singlestream import LFVILASingleStream
from lfvila_model.objectives import ContrastiveObjective, MatchingObjective, setup_objective
from lfvila_model.sources import Source, SourceFactory

Objective = ContrastiveObjective | MatchingObjective


def setup_model(cfg: TrainConfig, device: torch.device) -> LFVILA | LFVILAStage2 | LFVILASingleStream:
    """A freshly initialised LF-VILA (seeded by the caller) on ``device``, in train mode: the
    stage-1 model, or for stage 2 the stage-1 model (frozen, to be loaded with
    ``load_stage1``) under a new fusion encoder and heads (``stage2.arch``); QA fine-tuning's
    multiple-choice model (``finetune.task``) is the single-stream one, all of it trained."""
    mcfg = model_config(cfg.model)
    if cfg.stage == 2 and cfg.finetune.enabled and cfg.finetune.task == "multiple_choice":
        from lfvila_model.qa import LFVILAMultipleChoice
        return LFVILAMultipleChoice(mcfg).to(device).train()
    if cfg.stage == 2 and cfg.stage2.arch == "singlestream":
        return LFVILASingleStream(mcfg).to(device).train()
    if cfg.stage == 2:
        return LFVILAStage2(mcfg, negatives=cfg.stage2.negatives).to(device).train()
    return LFVILA(mcfg).to(device).train()


NO_DECAY_NAMES = ("relative_position_bias_table", "pos_embed")  # position tables, as the release


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: no decay on biases, norms and other 1-D parameters, nor
    on relative-position bias tables and position embeddings (``NO_DECAY_NAMES``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim < 2 or name.endswith(".bias") or any(n in name for n in NO_DECAY_NAMES)
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """LR multiplier of update ``step`` (0-based): linear warm-up to 1 at update ``warmup - 1``,
    then linear decay towards ``floor`` (reached after the last update; the release's 0.01)."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1.0 - floor) * max(0.0, (total - step) / max(1, total - warmup))


def setup_optimizer(model: nn.Module, optim: OptimConfig):
    """AdamW over ``param_groups`` and a LambdaLR warm-up + linear-decay schedule."""
    total, warmup = optim.total_steps(), optim.warmup()
    opt = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas,
                            eps=optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, optim.min_lr_ratio))
    return opt, sched


def train_step(model: nn.Module, objective: Objective, optimizer, scheduler, micro_batches: list[dict],
               optim: OptimConfig, device: torch.device, seed: int) -> dict[str, float]:
    """One optimizer update over ``micro_batches`` (gradient accumulation); returns local metrics
    (``loss_sums``: the mean over micro-batches of each of ``objective.names``)."""
    bf16 = optim.bf16 and device.type == "cuda"
    sums = torch.zeros(len(objective.names), device=device)
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        sync = nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            out = objective(model, batch, device, seed * 1000 + i, bf16)
            (out["loss"] / n).backward()
        sums += torch.stack([out[k].float() for k in objective.names]).detach() / n
    grad_norm = float("nan")
    if optim.clip_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss_sums": sums, "lr": lr, "grad_norm": grad_norm}


def _micro_batches(source: Source, state: TrainState, grad_accum: int, per_epoch: int | None):
    """Yield lists of ``grad_accum`` micro-batches from ``state``'s data position, moving to the
    next epoch after ``per_epoch`` steps or when the source runs out."""
    while True:
        if per_epoch is not None and state.epoch_batches >= per_epoch * grad_accum:
            state.epoch, state.epoch_batches, state.position = state.epoch + 1, 0, None
        start = state.epoch_batches
        batches = source(state.epoch, start) if state.position is None else \
            source(state.epoch, start, state.position)
        it = iter(batches)
        while per_epoch is None or state.epoch_batches < per_epoch * grad_accum:
            chunk = [b for _, b in zip(range(grad_accum), it)]
            if len(chunk) < grad_accum:
                break
            yield chunk
        if start == 0 and state.epoch_batches == 0:
            raise RuntimeError(f"the data source yielded no full step in epoch {state.epoch}")
        state.epoch, state.epoch_batches, state.position = state.epoch + 1, 0, None


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class TrainRecipe:
    """One training run: ``setup`` builds everything (seeded, resumed), ``train`` runs the
    loop to ``optim.total_steps()`` updates, ``cleanup`` closes the logs.

    Stage 2 (``cfg.stage == 2``) starts from ``stage2.stage1_checkpoint`` (frozen: outside the
    optimizer and DDP's gradient buckets, in eval mode) unless it resumes a stage-2 run.
    wrap_model/report: hooks for Ray Train (prepare_model, ray.train.report); torch.distributed
    must already be initialised when running with several ranks.
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | None = None,
                 wrap_model: Callable[[nn.Module], nn.Module] | None = None,
                 report: Callable[[dict], None] | None = None):
        self.cfg, self.wrap_model, self.report = cfg, wrap_model, report
        self.rank, self.world = rank_world()
        self.device = device or _device()
        self.logger: MetricLogger | None = None

    def setup(self, sources: SourceFactory, resume: bool | str = False) -> None:
        """resume: True = latest checkpoint in ``checkpoint.dir`` (if any), or a checkpoint path."""
        cfg = self.cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        raw = setup_model(cfg, self.device)
        torch.manual_seed(cfg.seed + 1 + self.rank)  # same init on every rank, different dropout masks
        self.optimizer, self.scheduler = self.make_optimizer(raw)
        self.total = cfg.optim.total_steps()
        if cfg.stage == 2 and cfg.data.batch_size < 2:
            raise ConfigError("stage 2 needs data.batch_size >= 2 (video-text negatives come from the batch)")
        self.objective: Objective = self.make_objective()
        self.state = self._restore(raw, resume)
        self.model = self.wrap_model(raw) if self.wrap_model is not None else raw
        self.logger = MetricLogger(cfg.log, self.total, self.state.step, self.objective.names,
                                   enabled=self.rank == 0)
        self.batches = _micro_batches(sources(self.rank, self.world), self.state, cfg.optim.grad_accum,
                                      cfg.optim.steps_per_epoch)
        self.evaluator = self.make_evaluator() if cfg.eval.downstream_shards else None

    def make_evaluator(self):
        """The periodic evaluation on ``eval.downstream_shards`` (a hook: QA scores accuracy)."""
        from lfvila_model.finetune import PeriodicEval
        return PeriodicEval(self.cfg, self.device, self.rank)

    def make_optimizer(self, raw: nn.Module):
        """The optimizer and LR schedule (a hook: fine-tuning decays the LR in steps)."""
        return setup_optimizer(raw, self.cfg.optim)

    def make_objective(self) -> Objective:
        """The loss (a hook: fine-tuning uses the global contrastive loss alone)."""
        return setup_objective(self.cfg, self.rank)

    def _restore(self, raw: nn.Module, resume: bool | str) -> TrainState:
        """The state of a resumed checkpoint; else a fresh one (stage 2: stage-1 weights loaded)."""
        cfg = self.cfg
        found = []
        if resume:
            found = checkpoints(cfg.checkpoint.dir) if resume is True else [Path(resume)]
        if found:
            stored = stored_config(found[-1]).get("stage", 1)
            if stored != cfg.stage:
                raise ConfigError(f"{found[-1]} is a stage-{stored} checkpoint and this is stage {cfg.stage}: "
                                  "give each stage its own checkpoint.dir")
            arch = stored_arch(stored_config(found[-1]))
            if cfg.stage == 2 and arch != cfg.stage2.arch:
                raise ConfigError(f"{found[-1]} trained stage2.arch={arch}; resume it with stage2.arch={arch}")
            state = load_checkpoint(found[-1], raw, self.optimizer, self.scheduler)
            self._say(f"resumed from {found[-1]} at step {state.step}")
            return state
        if cfg.stage == 2:
            if not cfg.stage2.stage1_checkpoint:
                raise ConfigError("stage 2 needs stage2.stage1_checkpoint (a stage-1 checkpoint of this trainer)")
            if checkpoints(cfg.checkpoint.dir):
                raise ConfigError(f"checkpoint.dir {cfg.checkpoint.dir} already holds checkpoints: give stage 2 "
                                  "its own checkpoint.dir (or --resume a stage-2 run)")
            self._say(f"stage 2: stage-1 weights from {load_stage1(raw, cfg.stage2.stage1_checkpoint)} (frozen)")
        else:
            try:  # the paper's start: Swin-B inflated to 3D, BERT-large (model.video.pretrained_2d, model.text.pretrained)
                loaded = raw.load_pretrained()
            except ValueError as e:
                raise ConfigError(str(e)) from None
            for line in loaded:
                self._say(line)
        return TrainState()

    def _say(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def train(self) -> dict:
        """Run to the last update; returns the last logged metrics."""
        cfg, state = self.cfg, self.state
        last, t0, samples0 = {}, time.perf_counter(), state.samples
        while state.step < self.total:
            micro = next(self.batches)
            out = train_step(self.model, self.objective, self.optimizer, self.scheduler, micro, cfg.optim,
                             self.device, seed=cfg.seed * 1_000_003 + state.step)
            state.step += 1
            state.epoch_batches += len(micro)
            state.samples += sum(len(b["input_ids"]) for b in micro) * self.world
            state.position = micro[-1].get("position", state.position)
            if state.step % cfg.log.every_steps == 0 or state.step == self.total:
                last = self._log(out, (state.samples - samples0) / max(time.perf_counter() - t0, 1e-9))
                t0, samples0 = time.perf_counter(), state.samples
            if state.step % cfg.checkpoint.every_steps == 0 or state.step == self.total:
                save_checkpoint(cfg.checkpoint.dir, self.model, self.optimizer, self.scheduler, state, cfg,
                                cfg.checkpoint.keep)
            if self.evaluator is not None and (state.step % cfg.eval.every_steps == 0 or state.step == self.total):
                self.evaluator(self)
        return last

    def _log(self, out: dict, samples_per_s: float) -> dict:
        """The step's metrics averaged over ranks, logged on rank 0 and reported to Ray."""
        sums = out["loss_sums"]
        if self.world > 1:
            dist.all_reduce(sums)
            sums = sums / self.world
        device, state = self.device, self.state
        row = {"step": state.step, "epoch": state.epoch, "samples": state.samples,
               **{k: float(v) for k, v in zip(self.objective.names, sums)},
               "lr": out["lr"], "grad_norm": out["grad_norm"], "samples_per_s": samples_per_s,
               "gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else ""}
        self.logger(row)
        if self.report is not None:
            self.report({k: v for k, v in row.items() if v != ""})
        return row

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.close()


def train(cfg: TrainConfig, sources: SourceFactory, *, resume: bool | str = False,
          device: torch.device | None = None, wrap_model: Callable[[nn.Module], nn.Module] | None = None,
          report: Callable[[dict], None] | None = None) -> dict:
    """Train to ``optim.total_steps()`` updates (see TrainRecipe); returns the last logged metrics."""
    recipe_class = TrainRecipe
    if cfg.finetune.enabled and cfg.finetune.task == "multiple_choice":
        from lfvila_model.qa import QARecipe as recipe_class
    elif cfg.finetune.enabled:
        from lfvila_model.finetune import FinetuneRecipe as recipe_class
    recipe = recipe_class(cfg, device=device, wrap_model=wrap_model, report=report)
    try:
        recipe.setup(sources, resume)
        return recipe.train()
    finally:
        recipe.cleanup()


def stored_arch(stored: dict) -> str | None:
    """The stage-2 arch of a stored config: crossattn for checkpoints saved before
    ``stage2.arch`` existed; None for stage 1."""
    if stored.get("stage", 1) != 2:
        return None
    return stored.get("stage2", {}).get("arch", "crossattn")


def load_model(path: str | os.PathLike, device="cpu",
               cfg: TrainConfig | None = None) -> tuple[LFVILA | LFVILAStage2 | LFVILASingleStream, TrainConfig]:
    """The model of a checkpoint, built from the config stored in it (or ``cfg``), in eval mode."""
    path = checkpoint_path(path)
    if cfg is None:
        stored = stored_config(path)
        if stored_arch(stored):
            stored = {**stored, "stage2": {**stored.get("stage2", {}), "arch": stored_arch(stored)}}
        cfg = TrainConfig.from_dict(stored)
    model = setup_model(cfg, torch.device(device))
    load_checkpoint(path, model, restore_rng=False)
    return model.eval(), cfg
