"""Multiple-choice video QA fine-tuning on the stage-2 model: How2QA, as the release does it
(microsoft/XPretrain LF-VILA: `run_qa.py`, `configs/how2_qa.yaml`,
`models/lfvila_qa_multichoice.py`, `datasets/how2qa_dataset.py`), on QA shards (`task: qa`,
the `qa` items of `--source how2qa`).

- **Input**: one example per question. The video is the whole clip, its frames spread over
  it (ends jittered in training) as in retrieval; each candidate answer gets the sentences
  [question, answer, subtitle lines merged to ``data.qa_subtitles`` (6) by the shortest
  adjacent pair], padded with empty (masked) sentences to a fixed count.
- **Model** (``LFVILAMultipleChoice``): for each candidate, the stage-1 text layers read its
  sentences as a paragraph; the single-stream cross-modal layers read that paragraph's
  tokens beside the video's tokens; the pooled first token, through dropout and a linear
  layer (``ChoiceHead``, the release's ``classifier``), is the candidate's score. Every
  weight on that path is trained, the stage-1 video and text encoders too (the release freezes
  nothing); the pretraining heads QA does not use stay frozen (DDP needs every trained weight used).
- **Loss**: cross-entropy over the candidates' scores, plus (weight ``finetune.span_weight``,
  the release's 1) the release's temporal-span loss: a 2-way linear layer on each frame's
  fused video tokens (averaged over its P positions, the maximum over the candidates) says
  whether the frame lies in the question's `span`, a cross-entropy per frame weighted so
  that inside and outside count half each (``span_targets``). **Prediction** is the highest
  score, the first candidate on a tie; **accuracy** the fraction of questions predicted right.
- **Schedule**: AdamW 5e-5, weight decay 0.05, warm-up then linear decay (the release: 10
  warm-up epochs of 30), batch 4 per GPU; validation every ``eval.every_steps`` updates, the
  model with the best accuracy kept in ``checkpoint.dir/best``.
- Starts from a stage-2 single-stream checkpoint (``--init``): every weight but the new head.
- Not done: VIOLIN and ActivityNet-QA (their data is built, their heads are not).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lfvila_model.checkpoint import TrainState, checkpoint_path, checkpoints, stored_config
from lfvila_model.config import ConfigError
from lfvila_model.data import SkipSample, merge_sentences
from lfvila_model.finetune import PeriodicEval
from lfvila_model.models.lfvila import LFVILAConfig
from lfvila_model.models.singlestream import LFVILASingleStream
from lfvila_model.train import TrainRecipe

# the paper's QA results as our reference notes hold them (REFERENCE.md: a gain, no accuracy)
QA_BENCHMARKS = {"how2qa": "+2.4 points of accuracy over the previous best (no absolute accuracy in our notes)"}


# ----------------------------------------------------------------------------- head and loss

class ChoiceHead(nn.Module):
    """The pooled fused sequence of each (question, candidate) pair -> the candidate's score."""

    def __init__(self, hidden: int, dropout: float = 0.1, init_std: float = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, 1)
        nn.init.normal_(self.score.weight, std=init_std)
        nn.init.zeros_(self.score.bias)

    def forward(self, pooled: torch.Tensor, choices: int) -> torch.Tensor:
        """(B·C)×H -> B×C scores."""
        return self.score(self.dropout(pooled)).view(-1, choices)


def choice_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over each question's candidates (B×C scores, B right indices)."""
    return F.cross_entropy(scores.float(), labels)


def span_targets(span: list[float] | None, duration: float, frames: int) -> tuple[list[int], list[float]]:
    """Per frame of ``frames`` spread over the clip: 1 inside the question's span (seconds),
    else 0, and the weights that make inside and outside count half each (the release's
    get_temporal_loss_label: the span in 1/frames units, rounded, at least one frame; no
    span or no duration: every frame)."""
    lo, hi = 0.0, 1.0
    if span is not None and duration > 0:
        lo, hi = (min(max(t / duration, 0.0), 1.0) for t in span)
    start = min(max(round(lo * frames), 0), frames - 1)
    end = min(max(round(hi * frames), start + 1), frames)
    inside = end - start
    outside = max(1, frames - inside)
    labels = [1 if start <= i < end else 0 for i in range(frames)]
    return labels, [frames * 0.5 / (inside if y else outside) for y in labels]


def span_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted per-frame cross-entropy of B×T×2 span logits (B×T labels and weights)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"span labels of {tuple(labels.shape)} for span logits of {tuple(logits.shape[:2])}: "
                         "the video's token frames must be its input frames (patch_size 1 in time)")
    per_frame = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (per_frame * weights.flatten()).mean()


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """The chosen candidate: the highest score, the first such on a tie."""
    return scores.argmax(dim=-1)  # torch returns the first maximal index


# ----------------------------------------------------------------------------- model

class LFVILAMultipleChoice(LFVILASingleStream):
    """The stage-2 single-stream model (same parameter names, so a stage-2 checkpoint loads
    into it) with ``head``, a ChoiceHead, ``span_head`` (frame in the question's span or
    not); every weight QA uses is trained."""

    # pretraining heads QA does not use: frozen (kept, so checkpoints load), as DDP rejects
    # trainable parameters that get no gradient
    UNUSED = ("fusion.cls", "fusion.seq_relationship", "stage1.text_encoder.sentence_proj",
              "stage1.text_encoder.paragraph_proj", "stage1.video_encoder.video_proj",
              "stage1.video_encoder.clip_proj", "stage1.video_encoder.clip_norm")

    def __init__(self, cfg: LFVILAConfig):
        super().__init__(cfg)
        self.stage1.requires_grad_(True)
        for name in self.UNUSED:
            self.get_submodule(name).requires_grad_(False)
        bert = self.stage1.text_encoder.bert.config
        self.head = ChoiceHead(bert.hidden_size, bert.hidden_dropout_prob, bert.initializer_range)
        self.span_head = nn.Linear(bert.hidden_size, 2)
        nn.init.normal_(self.span_head.weight, std=bert.initializer_range)
        nn.init.zeros_(self.span_head.bias)

    def train(self, mode: bool = True) -> LFVILAMultipleChoice:
        """All of it follows ``mode`` (stage 2 proper keeps its stage-1 part in eval mode)."""
        return nn.Module.train(self, mode)

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """video B×T×3×H×W, input_ids and attention_mask B×C×m×L (C candidates) ->
        "scores" B×C and "span_logits" B×T'×2 (T' frames of video tokens)."""
        b, c, m, length = input_ids.shape
        _, vtokens = self.stage1.video_encoder.features_and_tokens(video)
        _, tokens, mask = self.stage1.text_encoder.paragraph_tokens(input_ids.reshape(b * c, m, length),
                                                                     attention_mask.reshape(b * c, m, length))
        video_seq = self.fusion.video_tokens(vtokens).repeat_interleave(c, dim=0)
        seq, pooled = self.fusion(tokens, mask, video_seq)
        frames = vtokens.shape[1]
        per_frame = seq[:, -video_seq.shape[1]:].reshape(b * c, frames, -1, seq.shape[-1]).mean(2)
        span = self.span_head(per_frame).view(b, c, frames, 2).max(dim=1).values
        return {"scores": self.head(pooled, c), "span_logits": span}


# ----------------------------------------------------------------------------- data

def candidate_sentences(question: str, answers: list[str], subtitles: list[str], max_subtitles: int) -> list[list[str]]:
    """Per candidate, its sentences: the question, the answer, the subtitle lines merged to
    at most ``max_subtitles`` (the release's order)."""
    subs = merge_sentences([s for s in subtitles if s.strip()], max_subtitles) if max_subtitles else []
    return [[question, answer, *subs] for answer in answers]


def multiple_choice_items(qa: object) -> list[dict]:
    """The `qa` items that are multiple-choice questions: answers and a label among them."""
    return [q for q in qa if isinstance(q, dict) and isinstance(q.get("question"), str)
            and isinstance(q.get("answers"), list) and len(q["answers"]) >= 2
            and all(isinstance(a, str) for a in q["answers"])
            and isinstance(q.get("label"), int) and 0 <= q["label"] < len(q["answers"])] \
        if isinstance(qa, list) else []


def question_examples(decoder: Any, sample: dict, meta: dict, rng) -> list[dict]:
    """The loader's decode step for a QA sample (``data.qa``): the clip's frames decoded and
    augmented once, then one example per multiple-choice question, or SkipSample."""
    cfg = decoder.cfg
    items = multiple_choice_items(meta.get("qa"))
    if not items:
        raise SkipSample("no_question", "no multiple-choice question in the json's qa")
    choices = {len(q["answers"]) for q in items}
    if len(choices) != 1:
        raise SkipSample("bad_json", f"questions with different numbers of answers {sorted(choices)}")
    video = decoder.augment(decoder.read_frames(sample["mp4"], meta["clips"], None, float(meta["fps"]), rng), rng)
    subtitles = [str(c["text"]) for c in meta["clips"]]
    slots = 2 + cfg.qa_subtitles
    frames = cfg.sample_clips * cfg.frames_per_clip
    out = []
    for q in items:
        span = q.get("span") if isinstance(q.get("span"), list) and len(q["span"]) == 2 else None
        span_labels, span_weights = span_targets(span, float(meta.get("duration") or 0.0), frames)
        ids, masks = [], []
        for sentences in candidate_sentences(q["question"], q["answers"], subtitles, cfg.qa_subtitles):
            tok = decoder.tokenizer(sentences, padding="max_length", truncation=True, max_length=cfg.max_tokens,
                                    return_tensors="pt")
            pad = (0, 0, 0, slots - len(sentences))  # fewer subtitle lines: empty, masked sentences
            ids.append(F.pad(tok["input_ids"].long(), pad))
            masks.append(F.pad(tok["attention_mask"].long(), pad))
        out.append({"video": video, "input_ids": torch.stack(ids), "attention_mask": torch.stack(masks),
                    "label": q["label"], "span_labels": torch.tensor(span_labels),
                    "span_weights": torch.tensor(span_weights), "key": f"{sample.get('__key__', '')}/{q.get('qid')}"})
    return out


# ----------------------------------------------------------------------------- training

class ChoiceObjective:
    """Cross-entropy over the candidates + ``span_weight`` × the temporal-span loss; logs
    both and the batch's accuracy."""

    names = ("loss", "choice", "span", "accuracy")

    def __init__(self, span_weight: float = 1.0):
        self.span_weight = span_weight

    def __call__(self, model: nn.Module, batch: dict, device: torch.device, seed: int,
                 bf16: bool = False) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(*(batch[k].to(device, non_blocking=True) for k in ("video", "input_ids", "attention_mask")))
        labels = batch["label"].to(device)
        choice = choice_loss(out["scores"], labels)
        span = span_loss(out["span_logits"], batch["span_labels"].to(device), batch["span_weights"].to(device))
        return {"loss": choice + self.span_weight * span, "choice": choice.detach(), "span": span.detach(),
                "accuracy": (predictions(out["scores"].detach()) == labels).float().mean()}


@torch.no_grad()
def evaluate_choices(model: nn.Module, batches, device: torch.device | str = "cpu", bf16: bool = False) -> dict:
    """Accuracy (a fraction) of ``model`` on every question of ``batches``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        for batch in batches:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                scores = model(*(batch[k].to(device) for k in ("video", "input_ids", "attention_mask")))["scores"]
            right += int((predictions(scores.float()).cpu() == batch["label"]).sum())
            total += len(batch["label"])
    finally:
        model.train(was_training)
    if not total:
        raise ValueError("no validation questions")
    return {"accuracy": right / total, "num_questions": total}


def qa_table(metrics: dict, benchmark: str | None) -> str:
    """Our accuracy, and the paper's result for ``benchmark`` beside it."""
    lines = [f"accuracy {100 * metrics['accuracy']:.2f}% on {metrics['num_questions']} questions"]
    if benchmark:
        lines.append(f"paper ({benchmark}): {QA_BENCHMARKS[benchmark]}")
    return "\n".join(lines)


class ChoiceEval(PeriodicEval):
    """PeriodicEval scoring accuracy; the most accurate model is kept."""

    benchmarks = QA_BENCHMARKS
    what = "accuracy"

    def measure(self, model: nn.Module, batches) -> dict:
        return evaluate_choices(model, batches, self.device, bf16=self.cfg.optim.bf16)

    def score(self, metrics: dict) -> float:
        return metrics["accuracy"]

    def table(self, metrics: dict) -> str:
        return qa_table(metrics, self.cfg.eval.benchmark)


def load_init(model: LFVILAMultipleChoice, path: str) -> Path:
    """Every weight but the new heads from a stage-2 single-stream checkpoint; another is one ConfigError."""
    step = checkpoint_path(path)
    stored = stored_config(step)
    if stored.get("stage", 1) != 2 or stored.get("stage2", {}).get("arch", "crossattn") != "singlestream":
        raise ConfigError(f"{step} is not a stage-2 single-stream checkpoint; QA fine-tuning starts from one")
    state = torch.load(step / "model.pt", map_location="cpu", weights_only=True)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{step} does not fit this model config: {str(e).splitlines()[0]}") from None
    missing = [k for k in missing if not k.startswith(("head.", "span_head."))]
    if missing or unexpected:
        raise ConfigError(f"{step} does not fit the QA model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return step


class QARecipe(TrainRecipe):
    """Multiple-choice fine-tuning (``finetune.task: multiple_choice``) of the stage-2 model
    from ``finetune.init``; the optimizer and warm-up + linear decay are TrainRecipe's."""

    def make_objective(self) -> ChoiceObjective:
        if self.cfg.stage != 2 or not self.cfg.data.qa:
            raise ConfigError("multiple-choice fine-tuning needs stage: 2 and data.qa: true")
        return ChoiceObjective(self.cfg.finetune.span_weight)

    def make_evaluator(self) -> ChoiceEval:
        return ChoiceEval(self.cfg, self.device, self.rank)

    def _restore(self, raw: nn.Module, resume: bool | str):
        found = (checkpoints(self.cfg.checkpoint.dir) if resume is True else [resume]) if resume else []
        if found:
            return super()._restore(raw, resume)
        if not self.cfg.finetune.init:
            raise ConfigError("finetune.enabled needs finetune.init (lfvila-train --init PATH)")
        self._say(f"fine-tuning for multiple-choice QA from {load_init(raw, self.cfg.finetune.init)}")
        return TrainState()


def run_qa_eval(checkpoint: str | os.PathLike, val_shards: list[str], output: str | os.PathLike | None = None,
                device: str | None = None, split: str | None = None, benchmark: str | None = None) -> dict:
    """Accuracy of a QA checkpoint on ``val_shards`` (``split``, default its ``eval.split``),
    written as JSON to ``output`` (default next to the checkpoint), the paper's result beside it."""
    import dataclasses

    from lfvila_model.sources import setup_data
    from lfvila_model.train import load_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(checkpoint, dev)
    if not isinstance(model, LFVILAMultipleChoice):
        raise ConfigError(f"{checkpoint} is not a multiple-choice QA checkpoint (finetune.task: multiple_choice)")
    data = dataclasses.replace(cfg.data, split=split if split is not None else cfg.eval.split)
    batches = setup_data(dataclasses.replace(cfg, data=data), list(val_shards), train=False)(0, 1)(0, 0)
    metrics = evaluate_choices(model, batches, dev, bf16=cfg.optim.bf16)
    metrics["checkpoint"] = str(checkpoint)
    if benchmark:
        metrics["benchmark"], metrics["paper"] = benchmark, QA_BENCHMARKS[benchmark]
    out = Path(output) if output else (Path(checkpoint) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    return metrics
