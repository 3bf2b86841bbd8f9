"""The objectives: one micro-batch in, the loss terms out (``names``, "loss" first) - the
model's forward under autocast, then a loss from lfvila_model.losses. Stage 1 is
ContrastiveObjective (global + MTC); stage 2 is MatchingObjective (MLM + video-text
matching), with BERT's masking (Masker, mask_tokens) drawing its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lfvila_model.config import ConfigError, TrainConfig, model_config
from lfvila_model.losses import IGNORE_INDEX, GlobalBatchLoss, MatchingLoss


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


@dataclass(frozen=True)
class Masker:
    """BERT's masking: ``probability`` of the non-special, non-padding tokens are selected;
    of those 80% become ``mask_id``, 10% a random token, 10% stay. Random tokens are drawn
    uniformly from the non-special ids below ``vocab_size``."""

    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int
    probability: float = 0.15

    def __post_init__(self):
        if not 0 < self.probability < 1:
            raise ValueError(f"mask probability must be in (0, 1), got {self.probability}")
        if self.mask_id not in self.special_ids:
            object.__setattr__(self, "special_ids", (*self.special_ids, self.mask_id))
        if not any(i not in self.special_ids for i in range(self.vocab_size)):
            raise ValueError("no non-special token to draw random replacements from")

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int, probability: float = 0.15) -> Masker:
        """[MASK] and every special id of ``tokenizer``; random tokens from its vocabulary
        (capped at the model's ``vocab_size``)."""
        return cls(int(tokenizer.mask_token_id), tuple(int(i) for i in tokenizer.all_special_ids),
                   min(len(tokenizer), vocab_size), probability)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, masker: Masker,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels): labels hold the original id where a token was selected and
    IGNORE_INDEX elsewhere. Random numbers are drawn on the CPU from ``generator``."""
    ids = input_ids.cpu()
    special = torch.tensor(masker.special_ids, dtype=ids.dtype)
    eligible = attention_mask.cpu().bool() & ~torch.isin(ids, special)
    selected = (torch.rand(ids.shape, generator=generator) < masker.probability) & eligible
    how = torch.rand(ids.shape, generator=generator)
    candidates = torch.tensor([i for i in range(masker.vocab_size) if i not in masker.special_ids], dtype=ids.dtype)
    replacement = candidates[torch.randint(len(candidates), ids.shape, generator=generator)]
    masked = torch.where(selected & (how < 0.8), torch.full_like(ids, masker.mask_id), ids)
    masked = torch.where(selected & (how >= 0.8) & (how < 0.9), replacement, masked)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked.to(input_ids.device), labels.to(input_ids.device)


class MatchingObjective:
    """Stage 2 on one micro-batch: mask, draw the negatives, run the model, score. The same
    for both archs: LFVILAStage2 uses the draws, LFVILASingleStream returns its own pairs' labels."""

    names = ("loss", "mlm", "vtm", "mlm_acc", "vtm_acc")

    def __init__(self, masker: Masker, mlm_weight: float = 1.0, vtm_weight: float = 1.0, rank: int = 0):
        self.masker, self.rank = masker, rank
        self.loss_fn = MatchingLoss(mlm_weight, vtm_weight)

    def inputs(self, batch: dict, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: the batch plus masked ids, labels and negative draws
        (drawn from ``seed`` and this rank)."""
        g = torch.Generator().manual_seed(seed * 4096 + self.rank)
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.masker, g)
        draws = torch.rand(len(batch["input_ids"]), 2, generator=g)
        return {"video": batch["video"].to(device, non_blocking=True),
                "input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                "masked_ids": masked.to(device), "mlm_labels": labels.to(device), "neg_draws": draws.to(device)}

    def __call__(self, model: nn.Module, batch: dict, device: torch.device, seed: int,
                 bf16: bool = False) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**self.inputs(batch, device, seed))
        return self.loss_fn({k: v.float() if v.is_floating_point() else v for k, v in out.items()})


def setup_masker(cfg: TrainConfig) -> Masker:
    """Stage-2 masking ids from ``stage2.mask_token_id``/``special_token_ids``, else from
    the tokenizer in ``data.tokenizer``."""
    s2, vocab = cfg.stage2, model_config(cfg.model).text.bert.get("vocab_size", 30522)
    if s2.mask_token_id is not None:
        specials = tuple(s2.special_token_ids) if s2.special_token_ids is not None else ()
        return Masker(int(s2.mask_token_id), specials, vocab, float(s2.mlm_probability))
    if not cfg.data.tokenizer:
        raise ConfigError("stage 2 needs data.tokenizer (or stage2.mask_token_id and stage2.special_token_ids)")
    from lfvila_model.data import load_tokenizer

    return Masker.from_tokenizer(load_tokenizer(cfg.data.tokenizer), vocab, float(s2.mlm_probability))


def setup_objective(cfg: TrainConfig, rank: int = 0) -> ContrastiveObjective | MatchingObjective:
    """The stage's objective: ContrastiveObjective (stage 1) or MatchingObjective (stage 2;
    its masks and negatives differ across ranks)."""
    if cfg.stage == 2:
        return MatchingObjective(setup_masker(cfg), cfg.stage2.mlm_weight, cfg.stage2.resolved_vtm_weight, rank=rank)
    return ContrastiveObjective()
