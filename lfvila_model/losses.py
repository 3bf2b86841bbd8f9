"""LF-VILA losses: stage 1, global video–paragraph InfoNCE and multimodal temporal contrast (MTC);
stage 2, masked language modelling + video–text matching.

Gathering across GPUs is kept apart from the losses (open_clip style): each rank scores
its own rows against the gathered batch, so summed gradients equal one big-batch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients; identity if not distributed."""
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def rank_offset(local_batch: int) -> int:
    """Index of this rank's first row in the gathered batch (equal batches per rank)."""
    return dist.get_rank() * local_batch if _distributed() else 0


def global_contrastive_loss(
    video: torch.Tensor, paragraph: torch.Tensor, temperature: float = 0.05,
    all_video: torch.Tensor | None = None, all_paragraph: torch.Tensor | None = None, offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE: local rows against the gathered batch (the local batch by default)."""
    all_video = video if all_video is None else all_video
    all_paragraph = paragraph if all_paragraph is None else all_paragraph
    labels = torch.arange(video.shape[0], device=video.device) + offset
    v2p = video @ all_paragraph.T / temperature
    p2v = paragraph @ all_video.T / temperature
    return (F.cross_entropy(v2p, labels) + F.cross_entropy(p2v, labels)) / 2


def mtc_labels(key_pos: torch.Tensor, value_pos: torch.Tensor) -> torch.Tensor:
    """Index of the value nearest in time to each key; IGNORE_INDEX on ties.

    key_pos: B×K, value_pos: B×V positions → B×K labels in [0, V) or -100.
    """
    dist_ = (key_pos[:, :, None] - value_pos[:, None, :]).abs()  # B×K×V
    nearest = dist_.min(-1, keepdim=True).values
    tie = (dist_ == nearest).sum(-1) > 1
    return dist_.argmin(-1).masked_fill(tie, IGNORE_INDEX)


@dataclass(frozen=True)
class MTCSample:
    """Random choices of one MTC step (all indices into the gathered batch where relevant)."""

    key_pos: torch.Tensor  # B×K positions of the keys in each local sample
    value_pos: torch.Tensor  # B×V positions of the values in each local sample
    neg_sample: torch.Tensor  # B×E gathered-batch sample of each extra negative (first: own sample)
    neg_pos: torch.Tensor  # B×E position of each extra negative


def sample_mtc(
    batch: int, m: int, total: int, offset: int = 0, num_keys: int = 2, num_values: int = 2,
    num_extra_negatives: int = 3, generator: torch.Generator | None = None,
) -> MTCSample:
    """Draw keys, values and extra negatives for ``batch`` local samples of ``m`` positions.

    The first extra negative comes from the sample itself, the others from distinct other
    samples of the gathered batch of size ``total`` (with replacement if too few exist).
    """
    if m < max(num_keys, num_values):
        raise ValueError(f"MTC needs at least {max(num_keys, num_values)} clips per sample, got {m}")
    key_pos = torch.rand(batch, m, generator=generator).argsort(1)[:, :num_keys]
    value_pos = torch.rand(batch, m, generator=generator).argsort(1)[:, :num_values]
    own = torch.arange(batch) + offset
    n_other = num_extra_negatives - 1
    if total == 1:
        others = own[:, None].expand(batch, n_other)
    elif total - 1 >= n_other:
        scores = torch.rand(batch, total, generator=generator)
        scores[torch.arange(batch), own] = 2.0  # never pick the sample itself
        others = scores.argsort(1)[:, :n_other]
    else:
        pick = torch.randint(0, total - 1, (batch, n_other), generator=generator)
        others = pick + (pick >= own[:, None]).long()  # skip own index
    neg_sample = torch.cat([own[:, None], others], dim=1)[:, :num_extra_negatives]
    neg_pos = torch.randint(0, m, (batch, num_extra_negatives), generator=generator)
    return MTCSample(key_pos, value_pos, neg_sample, neg_pos)


def mtc_logits(
    keys: torch.Tensor, values: torch.Tensor, all_values: torch.Tensor, s: MTCSample, temperature: float,
) -> torch.Tensor:
    """Scores B×K×(V+E) of key features (from one modality) against the other modality's
    values of the same sample and the extra negatives drawn from the gathered batch.

    keys, values: B×m×D local features; all_values: N×m×D gathered features of the values' modality.
    """
    b = keys.shape[0]
    rows = torch.arange(b, device=keys.device)[:, None]
    k = keys[rows, s.key_pos]  # B×K×D
    v = values[rows, s.value_pos]  # B×V×D
    neg = all_values[s.neg_sample, s.neg_pos]  # B×E×D
    candidates = torch.cat([v, neg], dim=1)
    return k @ candidates.transpose(1, 2) / temperature


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.reshape(-1)
    if (labels == IGNORE_INDEX).all():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(labels.numel(), -1), labels, ignore_index=IGNORE_INDEX)


def mtc_loss(
    clip_feats: torch.Tensor, sent_feats: torch.Tensor, temperature: float = 0.05, num_keys: int = 2,
    num_values: int = 2, num_extra_negatives: int = 3, generator: torch.Generator | None = None,
    all_clip: torch.Tensor | None = None, all_sent: torch.Tensor | None = None, offset: int = 0,
    sample: MTCSample | None = None,
) -> torch.Tensor:
    """Multimodal temporal contrast: text keys vs video values and video keys vs text values.

    clip_feats, sent_feats: B×m×D local features; all_*: the gathered batch (default: local).
    Mean of the two directions' cross entropies; a key equidistant from both values is ignored.
    """
    if clip_feats.shape[:2] != sent_feats.shape[:2]:
        raise ValueError(f"clip {tuple(clip_feats.shape)} and sentence {tuple(sent_feats.shape)} features differ")
    all_clip = clip_feats if all_clip is None else all_clip
    all_sent = sent_feats if all_sent is None else all_sent
    b, m = clip_feats.shape[:2]
    if sample is None:
        sample = sample_mtc(b, m, all_clip.shape[0], offset, num_keys, num_values, num_extra_negatives, generator)
    device = clip_feats.device
    sample = MTCSample(*(t.to(device) for t in (sample.key_pos, sample.value_pos, sample.neg_sample, sample.neg_pos)))
    labels = mtc_labels(sample.key_pos, sample.value_pos)
    text_keys = mtc_logits(sent_feats, clip_feats, all_clip, sample, temperature)
    video_keys = mtc_logits(clip_feats, sent_feats, all_sent, sample, temperature)
    return (_ce(text_keys, labels) + _ce(video_keys, labels)) / 2


class LFVILALoss(nn.Module):
    """Stage-1 objective: global contrast (weight 1) + MTC (weight 0.25) on gathered features."""

    def __init__(self, temperature: float = 0.05, global_weight: float = 1.0, mtc_weight: float = 0.25,
                 num_keys: int = 2, num_values: int = 2, num_extra_negatives: int = 3):
        super().__init__()
        self.temperature = temperature
        self.global_weight = global_weight
        self.mtc_weight = mtc_weight
        self.mtc_kwargs = dict(num_keys=num_keys, num_values=num_values, num_extra_negatives=num_extra_negatives)

    def forward(self, feats: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """feats: "video" B×D, "paragraph" B×D, "clip" B×m×D, "sentence" B×m×D."""
        offset = rank_offset(feats["video"].shape[0])
        g = global_contrastive_loss(
            feats["video"], feats["paragraph"], self.temperature,
            gather_features(feats["video"]), gather_features(feats["paragraph"]), offset)
        mtc = mtc_loss(
            feats["clip"], feats["sentence"], self.temperature, generator=generator,
            all_clip=gather_features(feats["clip"]), all_sent=gather_features(feats["sentence"]),
            offset=offset, **self.mtc_kwargs)
        return {"loss": self.global_weight * g + self.mtc_weight * mtc, "global": g, "mtc": mtc}


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


# ----------------------------------------------------------------------------- stage 2
def vtm_labels(batch: int, device=None) -> torch.Tensor:
    """Labels of LFVILAStage2's 3B pairs: B matched (1), then 2B mismatched (0)."""
    return torch.cat([torch.ones(batch, dtype=torch.long, device=device),
                      torch.zeros(2 * batch, dtype=torch.long, device=device)])


class MatchingLoss(nn.Module):
    """Stage-2 objective: masked language modelling + video-text matching (2-way cross entropy).

    MLM cross entropy is summed over this rank's masked tokens and divided by the count over
    all ranks (times the world size), so with DDP's gradient averaging it is the mean over
    every masked token of the global batch, however they fall across ranks. Accuracies are
    detached, for the log."""

    def __init__(self, mlm_weight: float = 1.0, vtm_weight: float = 1.0):
        super().__init__()
        self.mlm_weight, self.vtm_weight = mlm_weight, vtm_weight

    def forward(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """out: "mlm_logits" K×V, "mlm_labels" K, "vtm_logits" and, when the pairs are not
        LFVILAStage2's 3B (see ``vtm_labels``), their "vtm_labels"."""
        logits, labels = out["mlm_logits"], out["mlm_labels"]
        valid = labels != IGNORE_INDEX
        count = valid.sum().float()
        world = 1
        if _distributed():
            count = count.clone()
            dist.all_reduce(count)
            world = dist.get_world_size()
        ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        mlm = ce * world / count.clamp(min=1)
        vtm_logits = out["vtm_logits"]
        target = out["vtm_labels"] if "vtm_labels" in out else vtm_labels(vtm_logits.shape[0] // 3, vtm_logits.device)
        vtm = F.cross_entropy(vtm_logits, target)
        with torch.no_grad():
            hits = (logits.argmax(-1) == labels) & valid
            mlm_acc = hits.sum() / valid.sum().clamp(min=1)
            vtm_acc = (vtm_logits.argmax(-1) == target).float().mean()
        return {"loss": self.mlm_weight * mlm + self.vtm_weight * vtm, "mlm": mlm, "vtm": vtm,
                "mlm_acc": mlm_acc, "vtm_acc": vtm_acc}
