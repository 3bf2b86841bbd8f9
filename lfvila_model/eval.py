"""Paragraph-to-video retrieval: encode a validation set, score every paragraph against every
video, report recall at K and median rank in both directions."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

KS = (1, 5, 10, 50)


def ranks_of_matches(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's match (the diagonal) among its row.

    Ties count against the match (a candidate scoring exactly as high ranks ahead of it), so a
    constant matrix scores rank N, not 1, and the result never depends on sort order.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"need a square similarity matrix, got {tuple(sim.shape)}")
    sim = sim.float()
    match = sim.diagonal()[:, None]
    n = sim.shape[0]
    ahead = (sim >= match) & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    return ahead.sum(1) + 1


def _summary(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    r = ranks.cpu().numpy()
    out = {f"R@{k}": float(100.0 * (r <= k).mean()) for k in ks}
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(r.mean())
    return out


def retrieval_metrics(sim: torch.Tensor, ks: Iterable[int] = KS) -> dict:
    """sim[i, j] = score of paragraph i against video j (match on the diagonal) →
    {"paragraph_to_video": {...}, "video_to_paragraph": {...}, "num_samples": N}; R@K in percent."""
    ks = tuple(ks)
    return {
        "paragraph_to_video": _summary(ranks_of_matches(sim), ks),
        "video_to_paragraph": _summary(ranks_of_matches(sim.T), ks),
        "num_samples": int(sim.shape[0]),
    }


@torch.no_grad()
def encode(model: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
           bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Video and paragraph features (N×D each, float32, CPU) and sample keys of every batch."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    videos, paragraphs, keys = [], [], []
    try:
        for batch in batches:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                feats = model(batch["video"].to(device), batch["input_ids"].to(device),
                              batch["attention_mask"].to(device))
            videos.append(feats["video"].float().cpu())
            paragraphs.append(feats["paragraph"].float().cpu())
            keys.extend(batch.get("key") or [str(len(keys) + i) for i in range(len(batch["video"]))])
    finally:
        model.train(was_training)
    if not videos:
        raise ValueError("no validation samples")
    return torch.cat(videos), torch.cat(paragraphs), keys


def evaluate(model: nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
             bf16: bool = False) -> dict:
    """Retrieval metrics of ``model`` on ``batches`` (paragraph rows × video columns)."""
    video, paragraph, keys = encode(model, batches, device, bf16)
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate sample keys in the validation set (a resampled stream?)")
    return retrieval_metrics(paragraph @ video.T)


def run_eval(checkpoint: str | os.PathLike, val_shards: list[str], output: str | os.PathLike | None = None,
             overrides_cfg=None, device: str | None = None) -> dict:
    """Load a checkpoint (its stored config unless ``overrides_cfg``), evaluate on ``val_shards``,
    write the metrics as JSON to ``output`` (default: next to the checkpoint)."""
    from lfvila_model.train import load_model, setup_data

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(checkpoint, dev, overrides_cfg)
    batches = setup_data(cfg, list(val_shards), train=False)(0, 1)(0, 0)
    metrics = evaluate(model, batches, dev, bf16=cfg.optim.bf16)
    metrics["checkpoint"] = str(checkpoint)
    out = Path(output) if output else (Path(checkpoint) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    return metrics
