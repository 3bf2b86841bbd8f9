"""LF-VILA video encoder: a hierarchical 3D Swin with hierarchical temporal window attention.

Windows grow in time (2 → one clip → the whole sample) as the spatial grid shrinks.
Clip features come from the layer whose temporal window is one clip; the video feature
from the last layer (the reference implementation took both from the last layer).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lfvila_model.modules.attention import WindowAttentionBlock
from lfvila_model.modules.patch import PatchEmbed3D, PatchMerging


@dataclass(frozen=True)
class VideoEncoderConfig:
    """Numbers of the video encoder; defaults are the paper's (32×192×320 input)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 14, 2, 2, 2)
    heads: tuple[int, ...] = (4, 8, 16, 16, 16, 32)
    windows: tuple[tuple[int, int, int], ...] = (
        (2, 3, 5), (4, 3, 5), (8, 3, 5), (16, 3, 5), (16, 3, 5), (32, 3, 5))
    merge_after: tuple[int, ...] = (0, 1, 4)
    patch_size: tuple[int, int, int] = (1, 8, 8)
    in_chans: int = 3
    frames_per_clip: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    attention: str = "htwa"  # "htwa" (windows above) or "full" (one window per layer)
    rel_pos_bias: bool = True  # ignored by "full" (no windows to index)
    checkpointing: bool = False
    proj_dim: int = 1024
    pool_grid: tuple[int, int] = (2, 3)  # spatial max-pool output before the clip mean
    clip_layer: int | None = None  # default: first layer whose temporal window is one clip

    def __post_init__(self):
        n = len(self.depths)
        if not (len(self.heads) == len(self.windows) == n):
            raise ValueError("depths, heads and windows must have one entry per layer")
        if self.attention not in ("htwa", "full"):
            raise ValueError(f"attention must be 'htwa' or 'full', not {self.attention!r}")
        if self.frames_per_clip % self.patch_size[0]:
            raise ValueError("frames_per_clip must be a multiple of the temporal patch size")
        self.resolved_clip_layer  # noqa: B018 - validates

    @property
    def dims(self) -> list[int]:
        dims, d = [], self.embed_dim
        for i in range(len(self.depths)):
            dims.append(d)
            if i in self.merge_after:
                d *= 2
        return dims

    @property
    def tokens_per_clip(self) -> int:
        return self.frames_per_clip // self.patch_size[0]

    @property
    def resolved_clip_layer(self) -> int:
        if self.clip_layer is not None:
            return self.clip_layer
        for i, w in enumerate(self.windows):
            if w[0] == self.tokens_per_clip:
                return i
        raise ValueError(f"no layer has a temporal window of one clip ({self.tokens_per_clip} tokens)")

    def token_grid(self, frames: int, frame_size: tuple[int, int]) -> tuple[int, int, int]:
        """(T, H, W) of the last layer's tokens for ``frames`` frames of ``frame_size``."""
        pt, ph, pw = self.patch_size
        t, h, w = -(-frames // pt), -(-frame_size[0] // ph), -(-frame_size[1] // pw)
        for _ in (i for i in self.merge_after if i < len(self.depths) - 1):
            h, w = -(-h // 2), -(-w // 2)
        return t, h, w

    def layer_window(self, i: int) -> tuple[int, int, int] | None:
        return None if self.attention == "full" else tuple(self.windows[i])


class VideoLayer(nn.Module):
    """A stage: blocks alternating plain/shifted windows, then optional patch merging."""

    def __init__(self, dim, depth, heads, window, drop_paths, mlp_ratio, rel_pos_bias, merge, checkpointing):
        super().__init__()
        self.blocks = nn.ModuleList(
            WindowAttentionBlock(dim, heads, window, shift=(j % 2 == 1), mlp_ratio=mlp_ratio,
                                 drop_path=drop_paths[j], rel_pos_bias=rel_pos_bias)
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output before merging, output after merging)."""
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


def pool_clips(tokens: torch.Tensor, tokens_per_clip: int, grid: tuple[int, int]) -> torch.Tensor:
    """B×T×H×W×C → B×clips×C: spatial max-pool to ``grid``, then mean over each clip."""
    b, t, _, _, c = tokens.shape
    if t % tokens_per_clip:
        raise ValueError(f"{t} temporal tokens are not a whole number of {tokens_per_clip}-token clips")
    x = F.adaptive_max_pool3d(tokens.permute(0, 4, 1, 2, 3), (t, *grid))  # B×C×T×gh×gw
    x = x.reshape(b, c, t // tokens_per_clip, -1)
    return x.mean(-1).transpose(1, 2)


class VideoEncoder(nn.Module):
    """Video B×T×3×H×W (T = clips × frames_per_clip) → clip features and a video feature."""

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            self.layers.append(VideoLayer(
                dims[i], depth, cfg.heads[i], cfg.layer_window(i), rates[start:start + depth],
                cfg.mlp_ratio, cfg.rel_pos_bias and cfg.attention == "htwa",
                merge=i in cfg.merge_after, checkpointing=cfg.checkpointing))
            start += depth
        self.clip_layer = cfg.resolved_clip_layer
        self.clip_norm = nn.LayerNorm(dims[self.clip_layer])
        self.norm = nn.LayerNorm(dims[-1])
        self.clip_proj = nn.Linear(dims[self.clip_layer], cfg.proj_dim)
        self.video_proj = nn.Linear(dims[-1], cfg.proj_dim)
        self.apply(_init_weights)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens (B×T×H×W×C) of the clip layer and of the last layer."""
        if video.shape[1] % self.cfg.frames_per_clip:
            raise ValueError(f"{video.shape[1]} frames are not whole clips of {self.cfg.frames_per_clip}")
        x = self.patch_embed(video)
        clip_tokens = None
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            if i == self.clip_layer:
                clip_tokens = self.clip_norm(out)
        return clip_tokens, self.norm(out)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"clip": B×clips×D, "video": B×D}, both L2-normalised."""
        return self.features_and_tokens(video)[0]

    def features_and_tokens(self, video: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``forward``'s features and the last layer's normalised tokens (B×T×H×W×C, what the
        stage-2 cross-modal encoder attends to), from one pass."""
        clip_tokens, last_tokens = self.forward_features(video)
        tpc, grid = self.cfg.tokens_per_clip, self.cfg.pool_grid
        clip = F.normalize(self.clip_proj(pool_clips(clip_tokens, tpc, grid)), dim=-1)
        video_feat = F.normalize(self.video_proj(pool_clips(last_tokens, tpc, grid).mean(1)), dim=-1)
        return {"clip": clip, "video": video_feat}, last_tokens

    def load_swin2d(self, path_or_state: str | dict) -> "LoadReport":
        """Inflate 2D Swin weights (official key layout) into this encoder."""
        return load_swin2d(self, path_or_state)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class LoadReport(NamedTuple):
    missing: list[str]  # our keys left at their initial values
    unexpected: list[str]  # checkpoint keys not used
    adapted: list[str]  # our keys filled from a reshaped checkpoint tensor


def _swin_key_map(encoder: VideoEncoder) -> dict[str, str]:
    """Our parameter prefix for each 2D Swin prefix: consecutive layers of one width form one Swin stage."""
    cfg, mapping = encoder.cfg, {}
    stage, j = 0, 0
    for i, layer in enumerate(encoder.layers):
        for b in range(len(layer.blocks)):
            mapping[f"layers.{stage}.blocks.{j}."] = f"layers.{i}.blocks.{b}."
            j += 1
        if i in cfg.merge_after:
            mapping[f"layers.{stage}.downsample."] = f"layers.{i}.downsample."
            stage, j = stage + 1, 0
    return mapping


def _inflate_patch_conv(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """C×3×kh×kw → C×3×pt×ph×pw, keeping the response to a flat, static input."""
    pt, ph, pw = dst.shape[2:]
    kh, kw = src.shape[2:]
    w = F.interpolate(src.float(), size=(ph, pw), mode="bilinear", align_corners=False)
    w = w * (kh * kw) / (ph * pw)
    return (w.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt).to(dst.dtype)


def _inflate_rel_table(src: torch.Tensor, table: tuple[int, int, int], dtype) -> torch.Tensor:
    """(2s-1)²×heads 2D table → (2t-1)(2h-1)(2w-1)×heads: resized in space, repeated over time."""
    side, heads = round(src.shape[0] ** 0.5), src.shape[1]
    t, h, w = table
    img = src.float().T.reshape(1, heads, side, side)
    img = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False)[0]  # heads×h×w
    return img.permute(1, 2, 0).unsqueeze(0).expand(t, h, w, heads).reshape(-1, heads).to(dtype)


def load_swin2d(encoder: VideoEncoder, path_or_state: str | dict) -> LoadReport:
    """Load a 2D Swin state dict: patch conv inflated over time, bias tables resized."""
    state = path_or_state
    if not isinstance(state, dict):
        state = torch.load(path_or_state, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    prefixes = _swin_key_map(encoder)
    own = encoder.state_dict()
    tables = {
        f"{name}.relative_position_bias_table": tuple(2 * w - 1 for w in mod.window)
        for name, mod in encoder.named_modules()
        if getattr(mod, "relative_position_bias_table", None) is not None
    }
    new, unexpected, adapted = {}, [], []
    for key, value in state.items():
        target = next((dst + key[len(src):] for src, dst in prefixes.items() if key.startswith(src)), key)
        if target not in own:
            unexpected.append(key)
            continue
        dst = own[target]
        if dst.shape == value.shape:
            new[target] = value.to(dst.dtype)
            continue
        inflated = None
        if target in tables and value.ndim == 2 and value.shape[1] == dst.shape[1]:
            inflated = _inflate_rel_table(value, tables[target], dst.dtype)
        elif target == "patch_embed.proj.weight" and value.ndim == 4:
            inflated = _inflate_patch_conv(value, dst)
        if inflated is None or inflated.shape != dst.shape:
            unexpected.append(key)
        else:
            new[target] = inflated
            adapted.append(target)
    encoder.load_state_dict(new, strict=False)
    missing = sorted(k for k in own if k not in new)
    return LoadReport(missing, unexpected, adapted)


def full_attention(cfg: VideoEncoderConfig) -> VideoEncoderConfig:
    """The same encoder with one window over the whole input in every layer."""
    return dataclasses.replace(cfg, attention="full")


__all__ = ["VideoEncoderConfig", "VideoEncoder", "LoadReport", "load_swin2d", "pool_clips", "full_attention"]
