"""LF-VILA stage-1 model: the video encoder and the split BERT text encoder side by side."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

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
