"""LF-VILA video encoder: a hierarchical 3D Swin with hierarchical temporal window attention.

Windows grow in time (2 → one clip → the whole sample) as the spatial grid shrinks.
Clip features come from the layer whose temporal window is one clip; the video feature
from the last layer (the reference implementation took both from the last layer).
``compat="xpretrain"`` computes what the release (microsoft/XPretrain, LF-VILA) computes, so
its checkpoints load (lfvila_model.convert): clip features from the last layer, each frame's
3×5 grid max-pooled with a (2, 3) kernel at stride 1 (docs/fidelity.md).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lfvila_model.modules.attention import WindowAttentionBlock
from lfvila_model.modules.patch import PatchEmbed3D, PatchMerging

COMPAT_MODES = (None, "xpretrain")
XPRETRAIN_POOL = (2, 3)  # the release's nn.MaxPool2d((2, 3), stride=(1, 1)) on each frame's grid


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
    pretrained_2d: str | None = None  # a 2D Swin checkpoint ({"model": state dict}) inflated at the start
    compat: str | None = None  # "xpretrain": the release's clip features and pooling (see module doc)

    def __post_init__(self):
        n = len(self.depths)
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, not {self.compat!r}")
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


def pool_clips_xpretrain(tokens: torch.Tensor, tokens_per_clip: int) -> torch.Tensor:
    """The release's pooling: each frame's H×W max-pooled by a (2, 3) window at stride 1
    (3×5 → 2×3), then the mean over each clip's frames and positions. B×T×H×W×C → B×clips×C."""
    b, t, h, w, c = tokens.shape
    if t % tokens_per_clip:
        raise ValueError(f"{t} temporal tokens are not a whole number of {tokens_per_clip}-token clips")
    if h < XPRETRAIN_POOL[0] or w < XPRETRAIN_POOL[1]:
        raise ValueError(f"compat xpretrain pools a {h}×{w} grid with a {XPRETRAIN_POOL} window: "
                         "the input frames are too small")
    x = F.max_pool2d(tokens.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w), XPRETRAIN_POOL, stride=1)
    x = x.reshape(b, t // tokens_per_clip, tokens_per_clip, c, -1)
    return x.mean((2, 4))


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
        self.compat = cfg.compat
        # xpretrain: clip features from the last layer's `norm` output, as the release computes them
        self.clip_layer = len(cfg.depths) - 1 if cfg.compat else cfg.resolved_clip_layer
        self.clip_norm = None if cfg.compat else nn.LayerNorm(dims[self.clip_layer])
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
            if i == self.clip_layer and self.clip_norm is not None:
                clip_tokens = self.clip_norm(out)
        last = self.norm(out)
        return (last if clip_tokens is None else clip_tokens), last

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"clip": B×clips×D, "video": B×D}, both L2-normalised."""
        return self.features_and_tokens(video)[0]

    def features_and_tokens(self, video: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``forward``'s features and the last layer's normalised tokens (B×T×H×W×C, what the
        stage-2 cross-modal encoder attends to), from one pass."""
        clip_tokens, last_tokens = self.forward_features(video)
        tpc, grid = self.cfg.tokens_per_clip, self.cfg.pool_grid
        if self.compat:
            pooled = pool_clips_xpretrain(last_tokens, tpc)
            clip, video_feat = F.normalize(self.clip_proj(pooled), dim=-1), pooled.mean(1)
        else:
            clip = F.normalize(self.clip_proj(pool_clips(clip_tokens, tpc, grid)), dim=-1)
            video_feat = pool_clips(last_tokens, tpc, grid).mean(1)
        video_feat = F.normalize(self.video_proj(video_feat), dim=-1)
        return {"clip": clip, "video": video_feat}, last_tokens

    def load_swin2d(self, path_or_state: str | dict) -> LoadReport:
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
    ignored: tuple[str, ...] | list[str] = ()  # checkpoint buffers we recompute (relative_position_index, attn_mask)
    loaded: int = 0  # our tensors filled from the checkpoint

    def summary(self, what: str) -> str:
        """One log line: how much of ``what`` was loaded and what was not."""
        def few(keys):
            return f"{len(keys)}" + (f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")
        return (f"{what}: {self.loaded} tensors loaded ({len(self.adapted)} adapted), missing {few(self.missing)}, "
                f"unexpected {few(self.unexpected)}, {len(self.ignored)} buffers ignored")


SWIN_BUFFERS = ("relative_position_index", "attn_mask")  # Swin recomputes these; so do we


def _swin_key_map(encoder: VideoEncoder) -> dict[str, str]:
    """Our parameter prefix for each 2D Swin prefix: consecutive layers of one width form one
    Swin stage (paper: layers 2-4, 14+2+2 blocks, are Swin-B's 18-block stage 2), and a stage's
    downsample is the last of its layers' (as the release maps them, src/utils/load.py)."""
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


def _inflate_patch_conv(src: torch.Tensor, dst: torch.Tensor, tile: bool = False) -> torch.Tensor:
    """C×3×kh×kw → C×3×pt×ph×pw, keeping the response to a flat, static input: resized
    bilinearly, or (``tile``, as the release does) repeated ph/kh × pw/kw times."""
    pt, ph, pw = dst.shape[2:]
    kh, kw = src.shape[2:]
    if tile:
        if ph % kh or pw % kw:
            raise ValueError(f"patch_embed.proj.weight: a {kh}×{kw} kernel does not tile a {ph}×{pw} patch")
        w = src.float().repeat(1, 1, ph // kh, pw // kw) / ((ph // kh) * (pw // kw))
    else:
        w = F.interpolate(src.float(), size=(ph, pw), mode="bilinear", align_corners=False)
        w = w * (kh * kw) / (ph * pw)
    return (w.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt).to(dst.dtype)


def _inflate_rel_table(src: torch.Tensor, table: tuple[int, int, int], dtype) -> torch.Tensor:
    """(2s-1)²×heads 2D table → (2t-1)(2h-1)(2w-1)×heads: resized in space, repeated over time
    (bicubic, then repeated, as the release inflates it)."""
    side, heads = round(src.shape[0] ** 0.5), src.shape[1]
    t, h, w = table
    img = src.float().T.reshape(1, heads, side, side)
    img = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False)[0]  # heads×h×w
    return img.permute(1, 2, 0).unsqueeze(0).expand(t, h, w, heads).reshape(-1, heads).to(dtype)


def read_state_dict(path_or_state: str | os.PathLike | dict, wrappers: tuple[str, ...]) -> dict:
    """A checkpoint's state dict (inside the first of ``wrappers`` it has, in turn); a missing or
    unreadable file is a one-line ValueError."""
    state = path_or_state
    if not isinstance(state, dict):
        try:
            state = torch.load(path_or_state, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"checkpoint not found: {path_or_state}") from None
        except Exception as e:  # noqa: BLE001 - pickle/zip errors of a wrong file: one line
            raise ValueError(f"{path_or_state} is not a torch checkpoint: {str(e).splitlines()[0]}") from None
    for wrapper in wrappers:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def _swin_state(path_or_state: str | dict) -> dict[str, torch.Tensor]:
    """The 2D Swin state dict of a release checkpoint (``{"model": ...}``) or a bare one; a file
    that is not one is a one-line ValueError."""
    state = read_state_dict(path_or_state, ("model", "state_dict"))
    if not (isinstance(state, dict) and "patch_embed.proj.weight" in state
            and any(k.startswith("layers.0.blocks.0.") for k in state)):
        where = path_or_state if isinstance(path_or_state, (str, os.PathLike)) else "the state dict"
        raise ValueError(f"{where} is not a 2D Swin checkpoint (no patch_embed.proj.weight and "
                         "layers.0.blocks.0.* under 'model')")
    return state


def load_swin2d(encoder: VideoEncoder, path_or_state: str | dict, tile: bool | None = None) -> LoadReport:
    """Load a 2D Swin checkpoint as Microsoft's Swin releases store it (Swin-B 22k/384/window 12
    for the paper): the patch conv inflated over time, bias tables resized and repeated over
    time, Swin stages spread over our layers. A tensor that fits no way is a ValueError naming
    it. ``tile`` (default: the encoder's compat mode) inflates the patch conv as the release does."""
    state = _swin_state(path_or_state)
    tile = bool(encoder.compat) if tile is None else tile
    prefixes = _swin_key_map(encoder)
    own = encoder.state_dict()
    tables = {
        f"{name}.relative_position_bias_table": tuple(2 * w - 1 for w in mod.window)
        for name, mod in encoder.named_modules()
        if getattr(mod, "relative_position_bias_table", None) is not None
    }
    new, unexpected, adapted, ignored = {}, [], [], []
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in SWIN_BUFFERS:
            ignored.append(key)
            continue
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
            inflated = _inflate_patch_conv(value, dst, tile)
        if inflated is None or inflated.shape != dst.shape:
            raise ValueError(f"Swin key {key} has shape {tuple(value.shape)}, which does not fit {target} "
                             f"{tuple(dst.shape)}: a different Swin size than model.video")
        new[target] = inflated
        adapted.append(target)
    encoder.load_state_dict(new, strict=False)
    missing = sorted(k for k in own if k not in new)
    return LoadReport(missing, unexpected, adapted, ignored, len(new))


def full_attention(cfg: VideoEncoderConfig) -> VideoEncoderConfig:
    """The same encoder with one window over the whole input in every layer."""
    return dataclasses.replace(cfg, attention="full")


__all__ = ["LoadReport", "VideoEncoder", "VideoEncoderConfig", "full_attention", "load_swin2d", "pool_clips",
           "pool_clips_xpretrain"]
