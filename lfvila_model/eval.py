"""Paragraph-to-video retrieval: encode a validation set, score every paragraph against every
video, report recall at K and median rank in both directions; for a stage-2 model, also MLM
and video-text matching accuracy on the same pass."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KS = (1, 5, 10, 50)


@dataclass(frozen=True)
class Benchmark:
    """A retrieval benchmark of the paper: how its paragraphs are cut (``sentences``), its
    fine-tuning LR steps, and the paper's paragraph-to-video numbers to compare with."""

    sentences: int
    lr_decay_epochs: float
    lr_decay_rate: float
    paper: dict[str, float]  # paragraph_to_video metric -> value (LF-VILA, NeurIPS 2022)


BENCHMARKS = {
    "activitynet": Benchmark(4, 5, 0.25, {"R@1": 35.3, "R@5": 65.4}),
    "didemo": Benchmark(4, 5, 0.25, {"R@1": 35.0, "R@5": 64.5, "R@10": 75.8}),
    "queryd": Benchmark(4, 5, 0.25, {}),  # no number recorded in our reference notes
    "condensed-movies": Benchmark(1, 1, 0.5, {"R@1": 13.6, "R@5": 32.5, "R@10": 41.8}),
}


def ranks_of_matches(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's match (the diagonal) among its row.

    Ties count against the match (a candidate scoring exactly as high ranks ahead of it), so a
    constant matrix scores rank N, not 1, and the result never depends on sort order. (The
    release's `compute_rt_metrics` lists every position of the match's value in the sorted
    row, so a tied row counts several times, best position first: optimistic, and its
    recalls are no longer fractions of the N queries.)
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


def paper_table(metrics: dict, benchmark: str | None = None) -> str:
    """Both directions' metrics as a text table, with the paper's paragraph-to-video numbers
    of ``benchmark`` beside ours."""
    paper = BENCHMARKS[benchmark].paper if benchmark else {}
    cols = [f"R@{k}" for k in KS] + ["median_rank", "mean_rank"]
    rows = [("paragraph->video", metrics["paragraph_to_video"]), ("video->paragraph", metrics["video_to_paragraph"])]
    if paper:
        rows.append((f"paper ({benchmark})", paper))
    head = f"{'':<24}" + "".join(f"{c.replace('_rank', ' rank'):>13}" for c in cols)
    lines = [head] + [f"{name:<24}" + "".join(f"{v[c]:>13.2f}" if c in v else f"{'-':>13}" for c in cols)
                      for name, v in rows]
    return "\n".join(lines + [f"{metrics['num_samples']} videos and paragraphs"])


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


def _at_least_two(batches: Iterable[dict]) -> Iterator[dict]:
    """The batches, with a last batch of one sample merged into the one before (VTM needs a
    second sample for its negatives)."""
    held = None
    for batch in batches:
        if held is not None and len(batch["input_ids"]) < 2:
            batch = {k: (held[k] + batch[k]) if isinstance(held[k], list) else torch.cat([held[k], batch[k]])
                     for k in ("video", "input_ids", "attention_mask", "key") if k in batch}
            held = None
        if held is not None:
            yield held
        held = batch
    if held is not None:
        if len(held["input_ids"]) < 2:
            raise ValueError("stage-2 evaluation needs at least 2 samples")
        yield held


@torch.no_grad()
def evaluate_stage2(model: nn.Module, batches: Iterable[dict], masker, device: torch.device | str = "cpu",
                    bf16: bool = False, seed: int = 0) -> dict:
    """Retrieval of the (frozen) stage-1 features, plus "stage2": MLM loss and accuracy over
    the masked tokens and VTM loss and accuracy (overall, on matched and on mismatched
    pairs; random in-batch negatives), masks and negatives seeded by ``seed`` and batch."""
    from lfvila_model.losses import IGNORE_INDEX, vtm_labels
    from lfvila_model.objectives import MatchingObjective

    device = torch.device(device)
    objective = MatchingObjective(masker)
    was_training, negatives = model.training, model.negatives
    model.eval()
    model.negatives = "random"
    videos, paragraphs, keys = [], [], []
    mlm_ce = mlm_hits = mlm_n = vtm_ce = 0.0
    vtm_hits, vtm_n = torch.zeros(2), torch.zeros(2)  # [mismatched, matched]
    try:
        for i, batch in enumerate(_at_least_two(batches)):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                out = model(**objective.inputs(batch, device, seed * 1_000_003 + i))
            logits, labels = out["mlm_logits"].float(), out["mlm_labels"]
            valid = labels != IGNORE_INDEX
            mlm_ce += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            mlm_hits += float(((logits.argmax(-1) == labels) & valid).sum())
            mlm_n += float(valid.sum())
            target = out["vtm_labels"] if "vtm_labels" in out else vtm_labels(len(batch["input_ids"]), device)
            vtm_logits = out["vtm_logits"].float()
            vtm_ce += float(F.cross_entropy(vtm_logits, target, reduction="sum"))
            hit = (vtm_logits.argmax(-1) == target).cpu()
            for cls in (0, 1):
                vtm_hits[cls] += hit[target.cpu() == cls].sum()
                vtm_n[cls] += (target == cls).sum().cpu()
            videos.append(out["video"].float().cpu())
            paragraphs.append(out["paragraph"].float().cpu())
            keys.extend(batch.get("key") or [f"{i}_{j}" for j in range(len(batch["video"]))])
    finally:
        model.train(was_training)
        model.negatives = negatives
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate sample keys in the validation set (a resampled stream?)")
    metrics = retrieval_metrics(torch.cat(paragraphs) @ torch.cat(videos).T)
    metrics["stage2"] = {
        "mlm_loss": mlm_ce / max(mlm_n, 1), "mlm_accuracy": 100.0 * mlm_hits / max(mlm_n, 1),
        "masked_tokens": int(mlm_n), "vtm_loss": vtm_ce / float(vtm_n.sum()),
        "vtm_accuracy": float(100.0 * vtm_hits.sum() / vtm_n.sum()),
        "vtm_matched_accuracy": float(100.0 * vtm_hits[1] / vtm_n[1]),
        "vtm_mismatched_accuracy": float(100.0 * vtm_hits[0] / vtm_n[0]),
    }
    return metrics


def run_eval(checkpoint: str | os.PathLike, val_shards: list[str], output: str | os.PathLike | None = None,
             overrides_cfg=None, device: str | None = None, split: str | None = None,
             benchmark: str | None = None) -> dict:
    """Load a checkpoint (its stored config unless ``overrides_cfg``), evaluate on ``val_shards``
    (only the samples of ``split``, default the config's ``eval.split``; a ``benchmark``'s
    paragraphs cut as the paper does, zero-shot or fine-tuned alike), write the metrics as
    JSON to ``output`` (default: next to the checkpoint)."""
    import dataclasses

    from lfvila_model.objectives import setup_masker
    from lfvila_model.sources import setup_data
    from lfvila_model.train import load_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(checkpoint, dev, overrides_cfg)
    # the samples scored: ``split``, else the config's validation split (never its training one)
    sentences = BENCHMARKS[benchmark].sentences if benchmark else cfg.data.retrieval_sentences
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, split=split if split is not None else cfg.eval.split, retrieval_sentences=sentences))
    batches = setup_data(cfg, list(val_shards), train=False)(0, 1)(0, 0)
    if cfg.stage == 2:
        metrics = evaluate_stage2(model, batches, setup_masker(cfg), dev, bf16=cfg.optim.bf16)
    else:
        metrics = evaluate(model, batches, dev, bf16=cfg.optim.bf16)
    metrics["checkpoint"] = str(checkpoint)
    if benchmark:
        metrics["benchmark"], metrics["paper"] = benchmark, {"paragraph_to_video": BENCHMARKS[benchmark].paper}
    out = Path(output) if output else (Path(checkpoint) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    return metrics
