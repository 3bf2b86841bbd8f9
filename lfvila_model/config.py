"""Training configs: dataclasses that are the schema (OmegaConf structured configs), a YAML
preset merged over them, then ``a.b=c`` overrides. A key the schema lacks or a value of the
wrong type is a ConfigError naming the key, one line; checks that span fields live in the
dataclasses' ``__post_init__`` and run when the merged config becomes dataclasses.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lfvila_model.data import DataConfig
from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILAConfig
from lfvila_model.models.video import COMPAT_MODES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad config file, override or argument (reported as one line by the CLI)."""


@dataclass
class ModelSection:
    """A named preset plus overrides; ``text.bert`` merges into the preset's BertConfig kwargs."""

    preset: str = "tiny"
    video: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    num_clips: int | None = None
    frame_size: tuple[int, int] | None = None
    max_tokens: int | None = None
    cross: dict[str, Any] = field(default_factory=dict)  # CrossModalConfig overrides (stage 2)
    compat: str | None = None  # "xpretrain": compute what the LF-VILA release computes (docs/fidelity.md)


@dataclass
class DataSection:
    """The shard loader's options (lfvila_model.data.DataConfig, whose defaults these are).
    The sample shape comes from the model: a shape field set here must agree with it."""

    batch_size: int = DataConfig.batch_size  # per rank
    shuffle_buffer: int = DataConfig.shuffle_buffer
    num_workers: int = DataConfig.num_workers
    seed: int = DataConfig.seed
    resample: bool = DataConfig.resample
    tokenizer: str | None = None  # required at run time: a BERT vocab directory or hub name
    scale: tuple[float, float] = DataConfig.scale
    ratio: tuple[float, float] | None = DataConfig.ratio
    flip: bool = DataConfig.flip
    drop_last: bool = DataConfig.drop_last
    decode_threads: int = DataConfig.decode_threads
    log_every: int = DataConfig.log_every
    sample_clips: int | None = None
    frames_per_clip: int | None = None
    size: tuple[int, int] | None = None
    max_tokens: int | None = None
    retrieval_sentences: int = DataConfig.retrieval_sentences
    split: str | None = None  # keep only samples of this split (benchmark shards carry one)
    qa: bool = DataConfig.qa  # QA shards: one multiple-choice example per question
    qa_subtitles: int = DataConfig.qa_subtitles


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
    min_lr_ratio: float = 0.0  # the LR decays linearly to this fraction of lr (the release: 0.01)

    def __post_init__(self):
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum must be >= 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optim.min_lr_ratio must be in [0, 1]")

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
    on top of a frozen stage-1 model loaded from ``stage1_checkpoint``. ``arch``:
    "singlestream" (the paper's: one BERT sequence of text and video tokens, the first half of
    the batch given rolled videos) or "crossattn" (ours: text layers cross-attending to video,
    with drawn negatives)."""

    stage1_checkpoint: str | None = None  # a step-* directory, or a checkpoint dir (its latest)
    arch: str = "singlestream"
    negatives: str = "random"  # crossattn: "random" in-batch, or "hard" (∝ exp(stage-1 similarity / 0.05))
    mlm_probability: float = 0.15
    mlm_weight: float = 1.0
    vtm_weight: float | None = None  # default: the arch's (singlestream 10, as released; crossattn 1)
    batch_size: int | None = None  # per rank in stage 2, replacing data.batch_size (paper: 48 vs 16)
    mask_token_id: int | None = None  # default: data.tokenizer's [MASK]
    special_token_ids: list[int] | None = None  # default: data.tokenizer's special tokens

    def __post_init__(self):
        if self.negatives not in ("random", "hard"):
            raise ConfigError(f"stage2.negatives must be random or hard, not {self.negatives!r}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("stage2.mlm_probability must be in (0, 1)")
        if self.arch not in ("singlestream", "crossattn"):
            raise ConfigError(f"stage2.arch must be singlestream or crossattn, not {self.arch!r}")
        if self.arch == "singlestream" and self.negatives != "random":
            raise ConfigError("stage2.negatives applies to arch crossattn only (singlestream rolls the batch's videos)")

    @property
    def resolved_vtm_weight(self) -> float:
        if self.vtm_weight is not None:
            return float(self.vtm_weight)
        return 10.0 if self.arch == "singlestream" else 1.0


@dataclass
class EvalSection:
    """Retrieval evaluation during training (lfvila_model.finetune.PeriodicEval): on
    ``downstream_shards`` (e.g. ActivityNet val during pretraining, as the release does, or
    the benchmark's val split when fine-tuning) every ``every_steps`` updates and at the end;
    ``keep_best``: also save the model with the best paragraph-to-video R@1 in
    ``checkpoint.dir/best``."""

    downstream_shards: str | None = None
    split: str | None = None  # only samples of this split (default: all)
    every_steps: int = 1000
    keep_best: bool = False
    benchmark: str | None = None  # a name in eval.BENCHMARKS: its paper numbers go beside ours

    def __post_init__(self):
        if self.every_steps < 1:
            raise ConfigError("eval.every_steps must be >= 1")


@dataclass
class FinetuneSection:
    """Retrieval fine-tuning (the paper's protocol, lfvila_model.finetune): start from the
    weights of ``init`` (a stage-1 checkpoint), global contrastive loss only, LR warm-up then
    multiplied by ``lr_decay_rate`` every ``lr_decay_epochs`` epochs."""

    enabled: bool = False
    init: str | None = None
    lr_decay_epochs: float = 5.0
    lr_decay_rate: float = 0.25
    # "retrieval", or "multiple_choice": QA on the stage-2 model from a stage-2 ``init``
    # (lfvila_model.qa: a score per candidate, cross-entropy over them, warm-up + linear decay)
    task: str = "retrieval"
    span_weight: float = 1.0  # multiple_choice: the temporal-span loss's weight (the release's How2QA: 1)

    def __post_init__(self):
        if self.lr_decay_epochs <= 0 or not 0 < self.lr_decay_rate <= 1:
            raise ConfigError("finetune.lr_decay_epochs must be > 0 and finetune.lr_decay_rate in (0, 1]")
        if self.task not in ("retrieval", "multiple_choice"):
            raise ConfigError(f"finetune.task must be retrieval or multiple_choice, not {self.task!r}")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    stage: int = 1
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalSection = field(default_factory=EvalSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, not {self.stage!r}")
        if self.stage == 2 and self.stage2.batch_size is not None:
            self.data.batch_size = self.stage2.batch_size

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from plain data (a YAML file's, or one stored in a checkpoint), checked."""
        return _merged(d or {}, [])

    def to_dict(self) -> dict:
        return asdict(self)


def _merged(base: dict, overrides: list[str]) -> TrainConfig:
    """Schema <- ``base`` <- overrides, as TrainConfig; any failure is one ConfigError line."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key.sub=value")
    if not isinstance(base, dict):
        raise ConfigError(f"config must be a mapping, got {base!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), base, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key {e.full_key}") from None
    except OmegaConfBaseException as e:
        if isinstance(e.__cause__, ConfigError):  # a __post_init__ check, wrapped by OmegaConf
            raise e.__cause__ from None
        where = f"{e.full_key}: " if e.full_key else ""
        raise ConfigError(f"{where}{str(e).splitlines()[0]}") from None


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
    return _merged(d, list(overrides))


def model_config(section: ModelSection) -> LFVILAConfig:
    """Preset numbers with the section's overrides applied."""
    builders = {"tiny": presets.tiny, "paper": presets.paper}
    if section.preset not in builders:
        raise ConfigError(f"unknown model preset {section.preset!r} (choose {', '.join(builders)})")
    video = {k: as_tuples(v) for k, v in section.video.items()}
    try:
        cfg = builders[section.preset](**video)
        text = dict(section.text)
        bert = {**cfg.text.bert, **text.pop("bert", {})}
        if section.compat not in COMPAT_MODES:
            raise ConfigError(f"model.compat must be null or xpretrain, not {section.compat!r}")
        if section.compat:
            text.setdefault("compat", section.compat)
            cfg = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, compat=section.compat))
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert=bert, **text),
                                  cross=dataclasses.replace(cfg.cross, **section.cross))
        top = {k: as_tuples(getattr(section, k)) for k in ("num_clips", "frame_size", "max_tokens")
               if getattr(section, k) is not None}
        return dataclasses.replace(cfg, **top)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None


def as_tuples(v):
    """Lists (from YAML or JSON) as tuples, nested: dataclass fields that are tuples compare equal."""
    return tuple(as_tuples(x) for x in v) if isinstance(v, list) else v


def data_config(cfg: TrainConfig, mcfg: LFVILAConfig, **extra) -> dict:
    """The loader's DataConfig fields: the data section with the sample shape taken from the
    model (a conflicting value is an error)."""
    shape = dict(sample_clips=mcfg.num_clips, frames_per_clip=mcfg.video.frames_per_clip,
                 size=tuple(mcfg.frame_size), max_tokens=mcfg.max_tokens)
    d = asdict(cfg.data)
    for k, v in shape.items():
        if d[k] is not None and as_tuples(d[k]) != v:
            raise ConfigError(f"data.{k}={d[k]} conflicts with the model ({v})")
        d[k] = v
    return {**d, **extra}
