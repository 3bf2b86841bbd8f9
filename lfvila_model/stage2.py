"""LF-VILA stage 2: BERT masking, the stage-2 objective (MLM + video-text matching) and loading
the frozen stage-1 weights. The model is lfvila_model.models.lfvila.LFVILAStage2; the loss
is lfvila_model.losses.MatchingLoss; train.py wires them like stage 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lfvila_model.losses import IGNORE_INDEX, MatchingLoss


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
    """Stage 2 on one micro-batch: mask, draw the negatives, run the model, score."""

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


def load_stage1_weights(model: nn.Module, state: dict) -> None:
    """Put a stage-1 LFVILA state dict into ``model.stage1`` (strict: same architecture)."""
    model.stage1.load_state_dict(state)
    model.stage1.requires_grad_(False)
    model.stage1.eval()
