"""LF-VILA stage-2 cross-modal encoder: BERT layers over the paragraph's tokens that also
cross-attend to the video's last-layer tokens (in the paper, BERT-large layers 12-23).

A layer is BERT's (self-attention, then cross-attention, then feed-forward, each with its
residual LayerNorm) with parameter names of transformers' BertLayer, so a BERT
checkpoint's layers initialise the self-attention and feed-forward weights; transformers'
own BertLayer only adds cross-attention to causal decoders, hence this one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertIntermediate,
    BertOutput,
)


@dataclass(frozen=True)
class CrossModalConfig:
    """Numbers of the cross-modal encoder (its width and heads are the text BERT's)."""

    num_layers: int = 12
    init_from_pretrained: bool = True  # layers after the stage-1 ones of text.pretrained, when set


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B×L 0/1 → B×1×1×L additive mask (-1e4, not -inf: no NaN in half precision)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * -1e4


class CrossModalLayer(nn.Module):
    """Text self-attention, cross-attention to the video tokens, feed-forward (BERT post-norm)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """text B×N×H with its additive mask B×1×1×N, video B×M×H (all tokens valid)."""
        x, _ = self.attention(text, text_mask)
        x, _ = self.crossattention(x, encoder_hidden_states=video)
        return self.output(self.intermediate(x), x)


class CrossModalEncoder(nn.Module):
    """Paragraph tokens B×N×H (+ 0/1 mask) and video tokens B×T×h×w×C → fused tokens B×N×H.

    Video tokens are projected to the text width and given learned temporal and spatial
    position embeddings (cross-attention alone does not see where a token sits in time)."""

    def __init__(self, cfg: CrossModalConfig, bert: BertConfig, video_dim: int, video_grid: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        hidden = bert.hidden_size
        self.video_grid = tuple(video_grid)
        t, h, w = self.video_grid
        self.video_proj = nn.Linear(video_dim, hidden)
        self.video_norm = nn.LayerNorm(hidden, eps=bert.layer_norm_eps)
        self.time_embed = nn.Parameter(torch.zeros(t, hidden))
        self.space_embed = nn.Parameter(torch.zeros(h * w, hidden))
        self.layers = nn.ModuleList(CrossModalLayer(bert) for _ in range(cfg.num_layers))
        std = bert.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed, std=std)
        nn.init.normal_(self.space_embed, std=std)

    def video_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """B×T×h×w×C video-encoder tokens → B×(T·h·w)×H keys and values for cross-attention."""
        b, t, h, w, _ = tokens.shape
        if (t, h, w) != self.video_grid:
            raise ValueError(f"video token grid {(t, h, w)} != the configured {self.video_grid}")
        x = self.video_proj(tokens) + self.time_embed[None, :, None, None] \
            + self.space_embed.view(1, 1, h, w, -1)
        return self.video_norm(x).reshape(b, t * h * w, -1)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """text B×N×H, text_mask B×N (0/1), video B×M×H from ``video_tokens``."""
        ext = extended_mask(text_mask, text.dtype)
        for layer in self.layers:
            text = layer(text, ext, video)
        return text

    def load_bert_layers(self, layers: list[nn.Module]) -> list[str]:
        """Copy BERT layers' self-attention and feed-forward weights into the first layers;
        returns the parameter names left at their initial values (the cross-attention)."""
        missing = []
        for ours, theirs in zip(self.layers, layers):
            result = ours.load_state_dict(theirs.state_dict(), strict=False)
            if result.unexpected_keys:
                raise ValueError(f"unexpected BERT layer keys {result.unexpected_keys}")
            missing += result.missing_keys
        return missing
