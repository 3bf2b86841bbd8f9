"""LF-VILA: stage 1, the video encoder and the split BERT text encoder side by side; stage 2,
the frozen stage-1 model under a cross-modal encoder with MLM and video-text matching heads."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from lfvila_model.models.crossmodal import CrossModalConfig, CrossModalEncoder
from lfvila_model.models.text import TextEncoder, TextEncoderConfig
from lfvila_model.models.video import VideoEncoder, VideoEncoderConfig


@dataclass(frozen=True)
class LFVILAConfig:
    """Both encoders' numbers plus the input shape they expect (used for synthetic batches)."""

    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    num_clips: int = 4
    frame_size: tuple[int, int] = (192, 320)
    max_tokens: int = 50  # per sentence
    cross: CrossModalConfig = field(default_factory=CrossModalConfig)  # stage 2 only

    def __post_init__(self):
        if self.video.proj_dim != self.text.proj_dim:
            raise ValueError("video and text projections must share one embedding size")

    @property
    def num_frames(self) -> int:
        return self.num_clips * self.video.frames_per_clip


class LFVILA(nn.Module):
    """Features for the stage-1 losses; the loss lives apart (lfvila_model.losses)."""

    def __init__(self, cfg: LFVILAConfig, video_encoder: VideoEncoder | None = None,
                 text_encoder: TextEncoder | None = None):
        super().__init__()
        self.cfg = cfg
        self.video_encoder = video_encoder or VideoEncoder(cfg.video)
        self.text_encoder = text_encoder or TextEncoder(cfg.text)

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """video B×T×3×H×W, input_ids/attention_mask B×m×L →
        {"clip": B×m×D, "video": B×D, "sentence": B×m×D, "paragraph": B×D}, L2-normalised."""
        return {**self.video_encoder(video), **self.text_encoder(input_ids, attention_mask)}

    def load_pretrained(self) -> list[str]:
        """Start from the configured initial weights (``video.pretrained_2d``, a 2D Swin
        checkpoint; ``text.pretrained``, a BERT): one log line for each loaded."""
        lines = []
        if self.cfg.video.pretrained_2d:
            report = self.video_encoder.load_swin2d(self.cfg.video.pretrained_2d)
            lines.append(report.summary(f"video encoder from 2D Swin {self.cfg.video.pretrained_2d}"))
        if self.cfg.text.pretrained:
            report = self.text_encoder.load_pretrained()
            lines.append(report.summary(f"text encoder from BERT {self.cfg.text.pretrained}"))
        return lines


def pick_negatives(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Row i's negative: j drawn with probability weights[i, j] (the diagonal is never drawn),
    by inverse CDF of the uniform draws ``u`` (B), so the randomness comes from the caller."""
    b = weights.shape[0]
    if b < 2:
        raise ValueError("video-text matching needs at least 2 samples per batch for negatives")
    w = weights.float().masked_fill(torch.eye(b, dtype=torch.bool, device=weights.device), 0.0).clamp(min=0)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, 1.0 - torch.eye(b, device=w.device))  # all-zero rows: uniform
    cdf = w.cumsum(1) / w.sum(1, keepdim=True)
    idx = torch.searchsorted(cdf, u.to(cdf)[:, None].clamp(0, 1 - 1e-6), right=True)[:, 0]
    return idx.clamp(max=b - 1)


class LFVILAStage2(nn.Module):
    """Stage 2: the stage-1 model, frozen (no gradients, always in eval mode), under a
    cross-modal encoder; an MLM head tied to the word embeddings (as BERT's) and a
    video-text matching head on the fused paragraph token.

    negatives: "random" draws each sample's mismatched video and text uniformly from the
    rest of the (local) batch; "hard" draws them in proportion to exp(stage-1 similarity /
    temperature), as ALBEF does."""

    def __init__(self, cfg: LFVILAConfig, stage1: LFVILA | None = None, negatives: str = "random",
                 temperature: float = 0.05):
        super().__init__()
        if negatives not in ("random", "hard"):
            raise ValueError(f"negatives must be 'random' or 'hard', not {negatives!r}")
        self.cfg, self.negatives, self.temperature = cfg, negatives, temperature
        self.stage1 = stage1 or LFVILA(cfg)
        self.stage1.requires_grad_(False)
        bert = self.stage1.text_encoder.bert.config
        grid = cfg.video.token_grid(cfg.num_frames, cfg.frame_size)
        self.cross = CrossModalEncoder(cfg.cross, bert, cfg.video.dims[-1], grid)
        self.vtm_head = nn.Linear(bert.hidden_size, 2)
        self.mlm_transform = BertPredictionHeadTransform(bert)
        self.mlm_bias = nn.Parameter(torch.zeros(bert.vocab_size))
        for m in (self.vtm_head, self.mlm_transform.dense):
            nn.init.normal_(m.weight, std=bert.initializer_range)
            nn.init.zeros_(m.bias)
        if cfg.text.pretrained and cfg.cross.init_from_pretrained:
            self.load_pretrained_bert(cfg.text.pretrained)
        self.stage1.eval()

    def load_pretrained_bert(self, name_or_path: str) -> list[str]:
        """Initialise the cross-modal layers from the BERT layers after the stage-1 ones
        (BERT-large: 12-23) and the MLM head's transform and bias from BERT's; returns the
        parameter names that kept their fresh initialisation (cross-attention, ...)."""
        from transformers import BertForMaskedLM

        mlm = BertForMaskedLM.from_pretrained(name_or_path)
        used = self.cfg.text.split + self.cfg.text.paragraph_layers
        layers = list(mlm.bert.encoder.layer[used:used + self.cfg.cross.num_layers])
        missing = [f"cross.layers.{name}" for name in self.cross.load_bert_layers(layers)]
        missing += [f"cross.layers.{i}" for i in range(len(layers), self.cfg.cross.num_layers)]
        head = mlm.cls.predictions
        self.mlm_transform.load_state_dict(head.transform.state_dict())
        with torch.no_grad():
            self.mlm_bias.copy_(head.bias if head.bias is not None else head.decoder.bias)
        return missing

    def train(self, mode: bool = True) -> LFVILAStage2:
        """The stage-1 part stays in eval mode (no dropout, fixed features)."""
        super().train(mode)
        self.stage1.eval()
        return self

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.stage1.text_encoder.bert.embeddings.word_embeddings.weight

    def mlm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused tokens (…×H) → vocabulary scores, decoder weight = the word embeddings."""
        return F.linear(self.mlm_transform(fused), self.word_embeddings, self.mlm_bias)

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                masked_ids: torch.Tensor, mlm_labels: torch.Tensor, neg_draws: torch.Tensor) -> dict[str, torch.Tensor]:
        """video B×T×3×H×W; input_ids, attention_mask, masked_ids, mlm_labels B×m×L (labels
        -100 where not masked); neg_draws B×2 uniforms picking each text's negative video and
        each video's negative text →
          vtm_logits 3B×2 for the pairs (text i, video i), (text i, video neg_video[i]),
            (text neg_text[i], video i);
          mlm_logits K×V and mlm_labels K at the K masked tokens;
          the stage-1 "video"/"paragraph" features and the chosen neg_video, neg_text."""
        b, m, length = input_ids.shape
        with torch.no_grad():
            feats, vtokens = self.stage1.video_encoder.features_and_tokens(video)
            text = self.stage1.text_encoder
            cls, tokens, mask = text.paragraph_tokens(input_ids, attention_mask)
            feats.update(text.project(cls, tokens[:, 0]))
            _, masked_tokens, _ = text.paragraph_tokens(masked_ids, attention_mask)
        vid = self.cross.video_tokens(vtokens)
        if self.negatives == "hard":
            sim = (feats["paragraph"] @ feats["video"].T).float() / self.temperature
            w_video, w_text = sim.softmax(1), sim.T.softmax(1)
        else:
            w_video = w_text = torch.ones(b, b, device=video.device)
        neg_video = pick_negatives(w_video, neg_draws[:, 0])
        neg_text = pick_negatives(w_text, neg_draws[:, 1])
        fused = self.cross(torch.cat([tokens, tokens, tokens[neg_text]]),
                           torch.cat([mask, mask, mask[neg_text]]),
                           torch.cat([vid, vid[neg_video], vid]))
        labels = torch.cat([mlm_labels.new_full((b, 1), -100), mlm_labels.reshape(b, m * length)], dim=1)
        where = labels != -100
        if not where.any():  # keep the MLM head in the graph (DDP) with nothing to predict
            where = torch.zeros_like(where)
            where[0, 0] = True
        fused_mlm = self.cross(masked_tokens, mask, vid)
        return {"vtm_logits": self.vtm_head(fused[:, 0]), "mlm_logits": self.mlm_logits(fused_mlm[where]),
                "mlm_labels": labels[where], "neg_video": neg_video, "neg_text": neg_text,
                "video": feats["video"], "paragraph": feats["paragraph"]}


def synthetic_batch(cfg: LFVILAConfig, batch_size: int, seed: int = 0, device="cpu") -> dict[str, torch.Tensor]:
    """A random batch of the configured shapes (for tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.frame_size
    g_video = torch.Generator(device).manual_seed(seed)  # drawn where it is used: no big host copy
    video = torch.randn(batch_size, cfg.num_frames, cfg.video.in_chans, h, w, generator=g_video, device=device)
    vocab = cfg.text.bert.get("vocab_size", 30522)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch_size, cfg.num_clips, cfg.max_tokens), generator=g)
    lengths = torch.randint(cfg.max_tokens // 2, cfg.max_tokens + 1, (batch_size, cfg.num_clips), generator=g)
    mask = (torch.arange(cfg.max_tokens) < lengths[..., None]).long()
    ids = ids * mask
    ids[..., 0] = 101 if vocab > 2000 else 1  # [CLS]
    return {"video": video, "input_ids": ids.to(device), "attention_mask": mask.to(device)}
