"""LF-VILA training recipe: config, setup_model, setup_optimizer, setup_data, train_step,
save/load_checkpoint and the loop, run in one process or inside Ray Train (DDP), for stage 1
(contrastive) or, with ``stage: 2``, stage 2 (MLM + video-text matching on a frozen stage-1
model, lfvila_model.stage2).

Data come from a *source factory* ``(rank, world) -> source`` where a source is
``(epoch, skip) -> iterable of micro-batches`` starting ``skip`` micro-batches into ``epoch``:
that is how resume finds its place in the data and how tests inject synthetic batches. A
source whose batches carry a ``position`` (the shard loader's) is also called as
``(epoch, skip, position)`` on resume, to continue exactly after the last batch consumed.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from lfvila_model.losses import (
    IGNORE_INDEX,
    LFVILALoss,
    MTCSample,
    gather_features,
    global_contrastive_loss,
    mtc_labels,
    mtc_logits,
    rank_offset,
    sample_mtc,
)
from lfvila_model.models import presets
from lfvila_model.models.lfvila import (
    LFVILA,
    LFVILAConfig,
    LFVILAStage2,
    synthetic_batch,
)
from lfvila_model.stage2 import Masker, MatchingObjective, load_stage1_weights

Source = Callable[..., Iterable[dict]]  # (epoch, skip micro-batches[, position]) -> micro-batches
SourceFactory = Callable[[int, int], Source]  # (rank, world) -> Source
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad config file, override or argument (reported as one line by the CLI)."""


# ----------------------------------------------------------------------------- config
@dataclass
class ModelSection:
    """A named preset plus overrides; ``text.bert`` merges into the preset's BertConfig kwargs."""

    preset: str = "tiny"
    video: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    num_clips: int | None = None
    frame_size: tuple[int, int] | None = None
    max_tokens: int | None = None
    cross: dict = field(default_factory=dict)  # CrossModalConfig overrides (stage 2)


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # wins over warmup_epochs
    epochs: int | None = 10
    max_steps: int | None = None  # wins over epochs
    steps_per_epoch: int | None = None  # optimizer steps; required with resampled (endless) streams
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    bf16: bool = True  # autocast on CUDA only

    def __post_init__(self):
        self.lr, self.eps, self.weight_decay = float(self.lr), float(self.eps), float(self.weight_decay)
        self.betas = tuple(float(b) for b in self.betas)
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum must be >= 1")

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        if self.epochs is None or self.steps_per_epoch is None:
            raise ConfigError("set optim.max_steps, or optim.epochs with optim.steps_per_epoch")
        return int(self.epochs * self.steps_per_epoch)

    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        if not self.warmup_epochs:
            return 0
        if self.steps_per_epoch is None:
            raise ConfigError("optim.warmup_epochs needs optim.steps_per_epoch (or set optim.warmup_steps)")
        return round(self.warmup_epochs * self.steps_per_epoch)


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    every_steps: int = 1000
    keep: int = 3


@dataclass
class LogConfig:
    dir: str = "logs"
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on a terminal


@dataclass
class Stage2Config:
    """Stage 2 (``stage: 2``): the cross-modal encoder trained with MLM + video-text matching
    on top of a frozen stage-1 model loaded from ``stage1_checkpoint``."""

    stage1_checkpoint: str | None = None  # a step-* directory, or a checkpoint dir (its latest)
    negatives: str = "random"  # "random" in-batch, or "hard" (∝ exp(stage-1 similarity / 0.05))
    mlm_probability: float = 0.15
    mlm_weight: float = 1.0
    vtm_weight: float = 1.0
    mask_token_id: int | None = None  # default: data.tokenizer's [MASK]
    special_token_ids: list[int] | None = None  # default: data.tokenizer's special tokens

    def __post_init__(self):
        if self.negatives not in ("random", "hard"):
            raise ConfigError(f"stage2.negatives must be random or hard, not {self.negatives!r}")
        if not 0 < float(self.mlm_probability) < 1:
            raise ConfigError("stage2.mlm_probability must be in (0, 1)")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: dict = field(default_factory=dict)  # lfvila_model.data.DataConfig fields (shapes come from the model)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    stage: int = 1
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, not {self.stage!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d or {}, "")

    def to_dict(self) -> dict:
        return asdict(self)


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix}{key}")
        sub = {"model": ModelSection, "optim": OptimConfig, "checkpoint": CheckpointConfig, "log": LogConfig,
               "stage2": Stage2Config}
        kwargs[key] = _build(sub[key], value, f"{key}.") if cls is TrainConfig and key in sub else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix}{e}") from None


def parse_value(text: str):
    """An override value: int, float ('1e-4' too), bool/null/list via YAML, else the string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` pairs into a nested dict (new keys are checked when the config is built)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key.sub=value")
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[leaf] = parse_value(value)
    return d


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    """A YAML file (or a bundled name like 'tiny') plus command-line overrides."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    return TrainConfig.from_dict(apply_overrides(d, list(overrides)))


def model_config(section: ModelSection) -> LFVILAConfig:
    """Preset numbers with the section's overrides applied."""
    builders = {"tiny": presets.tiny, "paper": presets.paper}
    if section.preset not in builders:
        raise ConfigError(f"unknown model preset {section.preset!r} (choose {', '.join(builders)})")
    video = {k: _tuples(v) for k, v in section.video.items()}
    try:
        cfg = builders[section.preset](**video)
        text = dict(section.text)
        bert = {**cfg.text.bert, **text.pop("bert", {})}
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert=bert, **text),
                                  cross=dataclasses.replace(cfg.cross, **section.cross))
        top = {k: _tuples(getattr(section, k)) for k in ("num_clips", "frame_size", "max_tokens")
               if getattr(section, k) is not None}
        return dataclasses.replace(cfg, **top)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def data_config(cfg: TrainConfig, mcfg: LFVILAConfig, **extra) -> dict:
    """The data section with the sample shape taken from the model (a conflicting value is an error)."""
    shape = dict(sample_clips=mcfg.num_clips, frames_per_clip=mcfg.video.frames_per_clip,
                 size=tuple(mcfg.frame_size), max_tokens=mcfg.max_tokens)
    d = dict(cfg.data)
    for k, v in shape.items():
        if k in d and _tuples(d[k]) != v:
            raise ConfigError(f"data.{k}={d[k]} conflicts with the model ({v})")
        d[k] = v
    return {**d, **extra}


# ----------------------------------------------------------------------------- setup
def setup_model(cfg: TrainConfig, device: torch.device) -> LFVILA | LFVILAStage2:
    """A freshly initialised LF-VILA (seeded by the caller) on ``device``, in train mode: the
    stage-1 model, or for stage 2 the stage-1 model (frozen, to be loaded with
    ``load_stage1``) under a new cross-modal encoder and heads."""
    mcfg = model_config(cfg.model)
    if cfg.stage == 2:
        return LFVILAStage2(mcfg, negatives=cfg.stage2.negatives).to(device).train()
    return LFVILA(mcfg).to(device).train()


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A step-* directory as is; a checkpoint directory → its latest step."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise ConfigError(f"no checkpoint at {path}")
    return found[-1]


def load_stage1(model: LFVILAStage2, path: str | os.PathLike) -> Path:
    """Load a stage-1 checkpoint of our trainer into ``model.stage1``; returns the step directory."""
    path = checkpoint_path(path)
    stored = json.loads((path / "trainer.json").read_text()).get("config", {})
    if stored.get("stage", 1) != 1:
        raise ConfigError(f"{path} is a stage-{stored['stage']} checkpoint, stage 2 starts from a stage-1 one")
    try:
        load_stage1_weights(model, torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ConfigError(f"{path} does not fit this model config: {str(e).splitlines()[0]} "
                          f"(model.* must match the stage-1 run)") from None
    return path


def setup_masker(cfg: TrainConfig) -> Masker:
    """Stage-2 masking ids from ``stage2.mask_token_id``/``special_token_ids``, else from
    the tokenizer in ``data.tokenizer``."""
    s2, vocab = cfg.stage2, model_config(cfg.model).text.bert.get("vocab_size", 30522)
    if s2.mask_token_id is not None:
        specials = tuple(s2.special_token_ids) if s2.special_token_ids is not None else ()
        return Masker(int(s2.mask_token_id), specials, vocab, float(s2.mlm_probability))
    if not cfg.data.get("tokenizer"):
        raise ConfigError("stage 2 needs data.tokenizer (or stage2.mask_token_id and stage2.special_token_ids)")
    from lfvila_model.data import load_tokenizer

    return Masker.from_tokenizer(load_tokenizer(cfg.data["tokenizer"]), vocab, float(s2.mlm_probability))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: no decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """LR multiplier of update ``step`` (0-based): linear warm-up to 1 at update ``warmup - 1``,
    then linear decay reaching 1/(total - warmup) at the last update."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def setup_optimizer(model: nn.Module, optim: OptimConfig):
    """AdamW over ``param_groups`` and a LambdaLR warm-up + linear-decay schedule."""
    total, warmup = optim.total_steps(), optim.warmup()
    opt = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas,
                            eps=optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return opt, sched


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
        base = {k: _tuples(v) for k, v in self.data.items()}
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
    if not data.get("tokenizer"):
        raise ConfigError("data.tokenizer is not set (a BERT vocabulary directory or hub name)")
    return ShardSource(list(shards), data, train)


# ----------------------------------------------------------------------------- loss + step
class GlobalBatchLoss(LFVILALoss):
    """LFVILALoss whose value and gradients do not depend on how the batch is split across ranks.

    The MTC draw is made for the whole gathered batch from a generator seeded identically on
    every rank, and each rank keeps its rows; MTC cross entropy is normalised by the gathered
    count of non-ignored keys. Summed over ranks (what DDP + gradient all-gather do) this is the
    single-process loss of the concatenated batch; in one process it equals LFVILALoss.
    """

    def forward(self, feats: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        b, m = feats["clip"].shape[:2]
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        offset = rank_offset(b)
        g = global_contrastive_loss(feats["video"], feats["paragraph"], self.temperature,
                                    gather_features(feats["video"]), gather_features(feats["paragraph"]), offset)
        all_clip, all_sent = gather_features(feats["clip"]), gather_features(feats["sentence"])
        total = all_clip.shape[0]
        full = sample_mtc(total, m, total, 0, generator=generator, **self.mtc_kwargs)
        labels = mtc_labels(full.key_pos, full.value_pos)
        valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
        rows = slice(offset, offset + b)
        dev = feats["clip"].device
        local = MTCSample(*(t[rows].to(dev) for t in (full.key_pos, full.value_pos, full.neg_sample, full.neg_pos)))
        labels = labels[rows].reshape(-1).to(dev)
        ce = 0.0
        for keys, values, all_values in ((feats["sentence"], feats["clip"], all_clip),
                                         (feats["clip"], feats["sentence"], all_sent)):
            logits = mtc_logits(keys, values, all_values, local, self.temperature)
            ce = ce + F.cross_entropy(logits.reshape(labels.numel(), -1), labels, ignore_index=IGNORE_INDEX,
                                      reduction="sum")
        mtc = ce * world / (2 * valid)
        return {"loss": self.global_weight * g + self.mtc_weight * mtc, "global": g, "mtc": mtc}


def _move(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in ("video", "input_ids", "attention_mask")}


class ContrastiveObjective:
    """Stage 1 on one micro-batch: features, then GlobalBatchLoss with an MTC draw seeded by ``seed``."""

    names = ("loss", "global", "mtc")

    def __init__(self):
        self.loss_fn = GlobalBatchLoss()

    def __call__(self, model: nn.Module, batch: dict, device: torch.device, seed: int,
                 bf16: bool = False) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model(**_move(batch, device))
        return self.loss_fn({k: v.float() for k, v in feats.items()}, generator=torch.Generator().manual_seed(seed))


def setup_objective(cfg: TrainConfig, rank: int = 0):
    """The stage's objective: ContrastiveObjective (stage 1) or MatchingObjective (stage 2;
    its masks and negatives differ across ranks)."""
    if cfg.stage == 2:
        return MatchingObjective(setup_masker(cfg), cfg.stage2.mlm_weight, cfg.stage2.vtm_weight, rank=rank)
    return ContrastiveObjective()


def train_step(model: nn.Module, objective, optimizer, scheduler, micro_batches: list[dict],
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


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """Where training stands: updates done, and the data position they imply."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0  # micro-batches consumed in this epoch
    samples: int = 0  # global samples seen
    position: dict | None = field(default=None, repr=False)  # this rank's loader position (not in trainer.json)


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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    return sorted(p.parent for p in Path(root).glob("step-*/trainer.json"))


def save_checkpoint(root: str | os.PathLike, model: nn.Module, optimizer, scheduler, state: TrainState,
                    cfg: TrainConfig, keep: int = 0) -> Path | None:
    """Write ``root/step-XXXXXXXX`` via a temporary directory renamed when complete; keep the last
    ``keep`` (0 = all). Collective under torch.distributed (RNG states of every rank); rank 0 writes."""
    rank, world = _rank_world()
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
        torch.save(_unwrap(model).state_dict(), tmp / "model.pt")
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
    _unwrap(model).load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = TrainState(**meta["state"])
    rank, world = _rank_world()
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


def load_model(path: str | os.PathLike, device="cpu",
               cfg: TrainConfig | None = None) -> tuple[LFVILA | LFVILAStage2, TrainConfig]:
    """The model of a checkpoint, built from the config stored in it (or ``cfg``), in eval mode."""
    path = checkpoint_path(path)
    if cfg is None:
        cfg = TrainConfig.from_dict(json.loads((path / "trainer.json").read_text())["config"])
    model = setup_model(cfg, torch.device(device))
    load_checkpoint(path, model, restore_rng=False)
    return model.eval(), cfg


# ----------------------------------------------------------------------------- logging
class MetricLogger:
    """Rank-0 metrics: a stdout line every N steps, a CSV log, TensorBoard and tqdm when available.
    ``names``: the objective's values, "loss" first (stage 1: global, mtc; stage 2: mlm, vtm, ...)."""

    def __init__(self, log: LogConfig, total: int, start: int, enabled: bool = True,
                 names: tuple[str, ...] = ContrastiveObjective.names):
        self.log, self.enabled, self.total, self.names = log, enabled, total, tuple(names)
        self.COLUMNS = ("step", "epoch", "samples", *self.names, "lr", "grad_norm", "samples_per_s", "gpu_mem_gib")
        self.writer = self.bar = None
        if not enabled:
            return
        Path(log.dir).mkdir(parents=True, exist_ok=True)
        path = Path(log.dir) / "metrics.csv"
        if start == 0 or not path.exists():
            path.write_text(",".join(self.COLUMNS) + "\n")
        else:  # resumed: drop rows past the checkpoint (they will be redone)
            rows = path.read_text().splitlines()
            path.write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= start]) + "\n")
        self.csv_file = path.open("a", newline="")
        self.csv = csv.writer(self.csv_file)
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log.dir)
            except ImportError:
                pass
        if log.progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        self.csv.writerow([row.get(c, "") for c in self.COLUMNS])
        self.csv_file.flush()
        if self.writer is not None:
            for k in (*self.names, "lr", "samples_per_s"):
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])
        mem = f" | mem {row['gpu_mem_gib']:.1f} GiB" if row.get("gpu_mem_gib") != "" else ""
        parts = ", ".join(f"{k} {row[k]:.4f}" for k in self.names[1:])
        line = (f"step {row['step']}/{self.total} | loss {row['loss']:.4f} ({parts}) | lr {row['lr']:.3e} | "
                f"{row['samples_per_s']:.1f} samples/s{mem}")
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{row['loss']:.4f}")
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            for x in (self.writer, self.bar):
                if x is not None:
                    x.close()


# ----------------------------------------------------------------------------- loop
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


def train(cfg: TrainConfig, sources: SourceFactory, *, resume: bool | str = False,
          device: torch.device | None = None, wrap_model: Callable[[nn.Module], nn.Module] | None = None,
          report: Callable[[dict], None] | None = None) -> dict:
    """Train to ``optim.total_steps()`` updates; returns the last logged metrics.

    Stage 2 (``cfg.stage == 2``) starts from ``stage2.stage1_checkpoint`` (frozen: outside the
    optimizer and DDP's gradient buckets, in eval mode) unless it resumes a stage-2 run.
    resume: True = latest checkpoint in ``checkpoint.dir`` (if any), or a checkpoint path.
    wrap_model/report: hooks for Ray Train (prepare_model, ray.train.report); torch.distributed
    must already be initialised when running with several ranks.
    """
    rank, world = _rank_world()
    device = device or _device()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    raw = setup_model(cfg, device)
    torch.manual_seed(cfg.seed + 1 + rank)  # same init on every rank, different dropout masks
    optimizer, scheduler = setup_optimizer(raw, cfg.optim)
    total = cfg.optim.total_steps()
    if cfg.stage == 2 and int(cfg.data.get("batch_size", 2)) < 2:
        raise ConfigError("stage 2 needs data.batch_size >= 2 (video-text negatives come from the batch)")
    objective = setup_objective(cfg, rank)
    state = TrainState()
    found = []
    if resume:
        found = checkpoints(cfg.checkpoint.dir) if resume is True else [Path(resume)]
        if found:
            stored = json.loads((found[-1] / "trainer.json").read_text()).get("config", {}).get("stage", 1)
            if stored != cfg.stage:
                raise ConfigError(f"{found[-1]} is a stage-{stored} checkpoint and this is stage {cfg.stage}: "
                                  "give each stage its own checkpoint.dir")
            state = load_checkpoint(found[-1], raw, optimizer, scheduler)
            if rank == 0:
                print(f"resumed from {found[-1]} at step {state.step}", flush=True)
    if cfg.stage == 2 and not found:
        if not cfg.stage2.stage1_checkpoint:
            raise ConfigError("stage 2 needs stage2.stage1_checkpoint (a stage-1 checkpoint of this trainer)")
        if checkpoints(cfg.checkpoint.dir):
            raise ConfigError(f"checkpoint.dir {cfg.checkpoint.dir} already holds checkpoints: give stage 2 "
                              "its own checkpoint.dir (or --resume a stage-2 run)")
        loaded = load_stage1(raw, cfg.stage2.stage1_checkpoint)
        if rank == 0:
            print(f"stage 2: stage-1 weights from {loaded} (frozen)", flush=True)
    model = wrap_model(raw) if wrap_model is not None else raw
    logger = MetricLogger(cfg.log, total, state.step, enabled=rank == 0, names=objective.names)
    batches = _micro_batches(sources(rank, world), state, cfg.optim.grad_accum, cfg.optim.steps_per_epoch)
    last, t0, samples0 = {}, time.perf_counter(), state.samples
    try:
        while state.step < total:
            micro = next(batches)
            out = train_step(model, objective, optimizer, scheduler, micro, cfg.optim, device,
                             seed=cfg.seed * 1_000_003 + state.step)
            state.step += 1
            state.epoch_batches += len(micro)
            state.samples += sum(len(b["input_ids"]) for b in micro) * world
            state.position = micro[-1].get("position", state.position)
            if state.step % cfg.log.every_steps == 0 or state.step == total:
                sums = out["loss_sums"]
                if world > 1:
                    dist.all_reduce(sums)
                    sums = sums / world
                dt = time.perf_counter() - t0
                last = {"step": state.step, "epoch": state.epoch, "samples": state.samples,
                        **{k: float(v) for k, v in zip(objective.names, sums)},
                        "lr": out["lr"], "grad_norm": out["grad_norm"],
                        "samples_per_s": (state.samples - samples0) / max(dt, 1e-9),
                        "gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else ""}
                logger(last)
                if report is not None:
                    report({k: v for k, v in last.items() if v != ""})
                t0, samples0 = time.perf_counter(), state.samples
            if state.step % cfg.checkpoint.every_steps == 0 or state.step == total:
                save_checkpoint(cfg.checkpoint.dir, model, optimizer, scheduler, state, cfg, cfg.checkpoint.keep)
    finally:
        logger.close()
    return last


# ----------------------------------------------------------------------------- Ray Train
def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Paths made absolute: Ray workers run in another directory."""
    cfg = dataclasses.replace(cfg)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, dir=os.path.abspath(cfg.checkpoint.dir))
    cfg.log = dataclasses.replace(cfg.log, dir=os.path.abspath(cfg.log.dir))
    if cfg.stage2.stage1_checkpoint:
        cfg.stage2 = dataclasses.replace(cfg.stage2, stage1_checkpoint=os.path.abspath(cfg.stage2.stage1_checkpoint))
    tok = cfg.data.get("tokenizer")
    if tok and os.path.exists(tok):  # a local vocabulary, not a hub name
        cfg.data = {**cfg.data, "tokenizer": os.path.abspath(tok)}
    return cfg


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

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


def last_logged(log_dir: str | os.PathLike) -> dict:
    """The last row of ``log_dir/metrics.csv`` (what rank 0 logged last), numbers parsed."""
    path = Path(log_dir) / "metrics.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: (float(v) if k not in ("step", "epoch", "samples") else int(v)) for k, v in rows[-1].items() if v} \
        if rows else {}
