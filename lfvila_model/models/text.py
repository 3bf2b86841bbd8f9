"""LF-VILA text encoder: BERT split into a per-sentence part and a paragraph part.

Layers [0, split) encode every sentence alone (its [CLS] is the sentence feature);
layers [split, split + paragraph_layers) encode all sentences' tokens together, with a
learned sentence-index embedding and a prepended paragraph token that starts as the mean
of the sentence [CLS] tokens (its output is the paragraph feature).

``compat="xpretrain"`` computes the paragraph layers' input as the release (microsoft/XPretrain,
LF-VILA) does, so its checkpoints load: position embeddings over all sentences' tokens plus a
sentence-index ("segment") embedding, LayerNorm and dropout, and the paragraph token the mean
of every sentence's [CLS] after that (docs/fidelity.md).

The BERT is built from ``bert`` (the preset's numbers); ``pretrained`` weights are loaded into
it by ``load_pretrained`` when training starts (lfvila_model.train), not at construction, so
evaluating a checkpoint never needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from lfvila_model.models.video import COMPAT_MODES, LoadReport


@dataclass(frozen=True)
class TextEncoderConfig:
    """Numbers of the text encoder; ``bert`` holds BertConfig keyword arguments."""

    bert: dict = field(default_factory=dict)  # e.g. hidden_size, num_attention_heads, ...
    pretrained: str | None = None  # name or local path for BertModel.from_pretrained
    split: int = 8
    paragraph_layers: int = 4
    max_sentences: int = 16  # xpretrain: the release's 8 sentence ("segment") embeddings
    proj_dim: int = 1024
    compat: str | None = None  # "xpretrain": the release's paragraph input (see module doc)

    def __post_init__(self):
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, not {self.compat!r}")


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B×L 0/1 → B×1×1×L additive mask, usable by eager and SDPA BERT attention."""
    # -1e4, not finfo.min: an all-padding sentence must not become -inf (NaN) in fp16.
    return (1.0 - mask[:, None, None, :].to(dtype)) * -1e4


def _run(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple


class ParagraphEmbedding(nn.Module):
    """The release's input to the paragraph layers (its ``SentEmbedding``): every sentence's
    tokens in order, plus position embeddings over the whole sequence and the sentence's index
    embedding, then LayerNorm and dropout."""

    def __init__(self, bert: BertConfig, sentences: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(bert.max_position_embeddings, bert.hidden_size)
        self.segment_embeddings = nn.Embedding(sentences, bert.hidden_size)
        self.norm = nn.LayerNorm(bert.hidden_size, eps=bert.layer_norm_eps)
        self.dropout = nn.Dropout(bert.hidden_dropout_prob)
        for emb in (self.position_embeddings, self.segment_embeddings):
            nn.init.normal_(emb.weight, std=bert.initializer_range)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """B×m×L×H sentence tokens → B×(m·L)×H."""
        b, m, length, h = hidden.shape
        if m * length > self.position_embeddings.num_embeddings:
            raise ValueError(f"{m}×{length} paragraph tokens > {self.position_embeddings.num_embeddings} positions")
        pos = self.position_embeddings.weight[: m * length]
        seg = self.segment_embeddings.weight[:m].repeat_interleave(length, dim=0)
        return self.dropout(self.norm(hidden.reshape(b, m * length, h) + pos + seg))


class TextEncoder(nn.Module):
    """Token ids B×m×L → sentence features B×m×D and a paragraph feature B×D (L2-normalised)."""

    def __init__(self, cfg: TextEncoderConfig, bert: BertModel | None = None):
        super().__init__()
        self.cfg = cfg
        used = cfg.split + cfg.paragraph_layers
        if bert is None:  # only the stage-1 layers are built; load_pretrained fills them
            bert = BertModel(BertConfig(**{**cfg.bert, "num_hidden_layers": used}), add_pooling_layer=False)
        if len(bert.encoder.layer) < used:
            raise ValueError(f"BERT has {len(bert.encoder.layer)} layers, {used} are needed")
        # Stage 1 uses only the first `used` layers; drop the rest so DDP sees no unused params.
        bert.encoder.layer = bert.encoder.layer[:used]
        self.bert = bert
        hidden = bert.config.hidden_size
        if cfg.compat:
            self.paragraph_embedding = ParagraphEmbedding(bert.config, cfg.max_sentences)
        else:
            self.sentence_index = nn.Embedding(cfg.max_sentences, hidden)
            nn.init.normal_(self.sentence_index.weight, std=bert.config.initializer_range)
        self.sentence_proj = nn.Linear(hidden, cfg.proj_dim)
        self.paragraph_proj = nn.Linear(hidden, cfg.proj_dim)

    def load_pretrained(self, name_or_path: str | None = None) -> LoadReport:
        """Load a transformers BERT (a directory or a hub name; default ``cfg.pretrained``) into
        the stage-1 layers; under xpretrain its position embeddings also start the paragraph
        embedding's (as the release's _init_sent_embedding). A BERT of another size is a
        ValueError naming the first tensor that does not fit."""
        name = name_or_path or self.cfg.pretrained
        try:
            theirs = BertModel.from_pretrained(name, add_pooling_layer=False).state_dict()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load BERT {name!r}: {str(e).splitlines()[0]}") from None
        own = self.bert.state_dict()
        new, unexpected = {}, []
        for key, value in theirs.items():
            if key not in own:
                unexpected.append(key)
            elif value.shape != own[key].shape:
                raise ValueError(f"BERT {name!r} key {key} has shape {tuple(value.shape)}, this model's is "
                                 f"{tuple(own[key].shape)}: set model.text.bert to that BERT's size")
            else:
                new[key] = value
        self.bert.load_state_dict(new, strict=False)
        loaded = len(new)
        if self.cfg.compat and "embeddings.position_embeddings.weight" in new:
            with torch.no_grad():
                self.paragraph_embedding.position_embeddings.weight.copy_(new["embeddings.position_embeddings.weight"])
            loaded += 1
        missing = sorted(k for k in own if k not in new)
        return LoadReport(missing, sorted(unexpected), [], (), loaded)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unprojected sentence [CLS] (B×m×H) and paragraph token (B×H)."""
        cls, tokens, _ = self.paragraph_tokens(input_ids, attention_mask)
        return cls, tokens[:, 0]

    def paragraph_tokens(self, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sentence [CLS] (B×m×H), the paragraph layers' output tokens (B×(1+m·L)×H: the
        paragraph token, then every sentence's tokens in order) and their 0/1 mask."""
        b, m, length = input_ids.shape
        if m > self.cfg.max_sentences:
            raise ValueError(f"{m} sentences > max_sentences={self.cfg.max_sentences}")
        layers = self.bert.encoder.layer
        hidden = self.bert.embeddings(input_ids=input_ids.reshape(b * m, length))
        sent_mask = attention_mask.reshape(b * m, length)
        ext = _extended_mask(sent_mask, hidden.dtype)
        for layer in layers[: self.cfg.split]:
            hidden = _run(layer, hidden, ext)
        hidden = hidden.view(b, m, length, -1)
        cls = hidden[:, :, 0]  # B×m×H
        if self.cfg.compat:  # the release: embed first, then an unmasked mean of the [CLS] tokens
            tokens = self.paragraph_embedding(hidden)
            para = tokens.view(b, m, length, -1)[:, :, 0].mean(1)
        else:
            present = attention_mask[:, :, 0].to(cls.dtype)  # sentences that are not padding
            para = (cls * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)
            index = self.sentence_index(torch.arange(m, device=input_ids.device))  # m×H
            tokens = (hidden + index[None, :, None]).reshape(b, m * length, -1)
        tokens = torch.cat([para[:, None], tokens], dim=1)
        mask = torch.cat([attention_mask.new_ones(b, 1), attention_mask.reshape(b, m * length)], dim=1)
        ext = _extended_mask(mask, tokens.dtype)
        for layer in layers[self.cfg.split:]:
            tokens = _run(layer, tokens, ext)
        return cls, tokens, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"sentence": B×m×D, "paragraph": B×D}, both L2-normalised."""
        cls, para = self.encode(input_ids, attention_mask)
        return self.project(cls, para)

    def project(self, cls: torch.Tensor, para: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sentence [CLS] and paragraph token → forward's L2-normalised features."""
        return {
            "sentence": F.normalize(self.sentence_proj(cls), dim=-1),
            "paragraph": F.normalize(self.paragraph_proj(para), dim=-1),
        }
