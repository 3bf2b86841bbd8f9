"""Windowed 3D self-attention block (Video-Swin style) on top of fused SDPA kernels.

Tokens are channels-last ``B×T×H×W×C``. A block attends inside non-overlapping
(t, h, w) windows; every other block shifts the windows by half the *spatial* window
(never in time) and masks pairs that the cyclic shift brought together. ``window=None``
means one window over the whole input (global attention).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

Size3 = tuple[int, int, int]
MASK_VALUE = -1e4  # finite, so rows whose keys are all masked stay finite (no NaN)


def effective_window(grid: Size3, window: Size3 | None, shift: Size3) -> tuple[Size3, Size3]:
    """Clamp a window (and its shift) to the input grid, as Video-Swin does."""
    if window is None:
        return tuple(grid), (0, 0, 0)
    win = tuple(min(g, w) for g, w in zip(grid, window))
    sh = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
    return win, sh


def window_partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """B×T×H×W×C (each of T, H, W a multiple of the window) → B×nW×N×C."""
    b, t, h, w, c = x.shape
    wt, wh, ww = window
    x = x.view(b, t // wt, wt, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wt * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: Size3, grid: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition`: B×nW×N×C → B×T×H×W×C."""
    b, _, _, c = windows.shape
    wt, wh, ww = window
    t, h, w = grid
    x = windows.view(b, t // wt, h // wh, w // ww, wt, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t, h, w, c)


def shifted_window_mask(
    padded: Size3, window: Size3, shift: Size3, valid: Size3 | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Boolean nW×N×N mask (True = may attend) for shifted and/or padded windows.

    Pairs from different regions of the cyclically shifted grid are masked, and so are
    keys that are padding (grid positions beyond ``valid``). ``None`` when nothing is masked.
    """
    valid = valid or padded
    if not any(shift) and tuple(valid) == tuple(padded):
        return None
    region = torch.zeros(padded, dtype=torch.long, device=device)
    label = 0
    slices = [
        ((slice(0, -w), slice(-w, -s), slice(-s, None)) if s else (slice(None),))
        for w, s in zip(window, shift)
    ]
    for st in slices[0]:
        for sh in slices[1]:
            for sw in slices[2]:
                region[st, sh, sw] = label
                label += 1
    is_pad = torch.ones(padded, dtype=torch.bool, device=device)
    is_pad[: valid[0], : valid[1], : valid[2]] = False
    # Roll the padding map the same way as the tokens, then partition both.
    is_pad = torch.roll(is_pad, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    region = window_partition(region[None, ..., None], window)[0, ..., 0]  # nW×N
    key_pad = window_partition(is_pad[None, ..., None], window)[0, ..., 0]  # nW×N
    same = region[:, :, None] == region[:, None, :]
    return same & ~key_pad[:, None, :]


@functools.lru_cache(maxsize=128)
def _relative_index(window: Size3, table_window: Size3, device: torch.device) -> torch.Tensor:
    """N×N index into a (2T-1)(2H-1)(2W-1) bias table sized for ``table_window``."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij"))
    coords = coords.flatten(1)  # 3×N
    rel = coords[:, :, None] - coords[:, None, :]  # 3×N×N
    tt, th, tw = table_window
    rel = rel + torch.tensor([tt - 1, th - 1, tw - 1])[:, None, None]
    index = rel[0] * (2 * th - 1) * (2 * tw - 1) + rel[1] * (2 * tw - 1) + rel[2]
    return index.flatten().to(device)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, computed by one SDPA call."""

    def __init__(self, dim: int, num_heads: int, window: Size3 | None, rel_pos_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = None
        if rel_pos_bias and window is not None:
            size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows: torch.Tensor, window: Size3, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: B×nW×N×C; mask: nW×N×N bool or None."""
        b, nw, n, c = windows.shape
        h = self.num_heads
        qkv = self.qkv(windows).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
        # Windows and heads share SDPA's head axis, so an nW·h×N×N bias broadcasts over B.
        q, k, v = (t.reshape(b, nw * h, n, c // h) for t in qkv.unbind(0))
        bias = None
        if self.relative_position_bias_table is not None:
            idx = _relative_index(tuple(window), tuple(self.window), windows.device)
            rel = self.relative_position_bias_table[idx].view(n, n, h).permute(2, 0, 1)
            bias = rel.unsqueeze(0).expand(nw, h, n, n)
        if mask is not None:
            masked = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            masked = masked.masked_fill(~mask, MASK_VALUE)[:, None]  # nW×1×N×N
            bias = masked if bias is None else bias + masked
        if bias is not None:
            bias = bias.to(q.dtype).reshape(1, nw * h, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(b, nw, h, n, c // h).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttentionBlock(nn.Module):
    """Pre-norm transformer block with (shifted) 3D window attention.

    ``window=None`` attends over the whole input. ``shift=True`` shifts by half the
    spatial window (no temporal shift). Inputs whose T/H/W are not multiples of the
    window are zero-padded and padded keys are masked.
    """

    def __init__(
        self, dim: int, num_heads: int, window: Size3 | None, shift: bool = False,
        mlp_ratio: float = 4.0, drop_path: float = 0.0, rel_pos_bias: bool = True,
    ):
        super().__init__()
        self.window = tuple(window) if window is not None else None
        self.shift = (0, self.window[1] // 2, self.window[2] // 2) if shift and window else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window, rel_pos_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._mask_cache: dict = {}

    def _mask(self, padded: Size3, window: Size3, shift: Size3, valid: Size3, device) -> torch.Tensor | None:
        key = (padded, window, shift, valid, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(padded, window, shift, valid, device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attend(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[1:4])
        window, shift = effective_window(grid, self.window, self.shift)
        pads = [(-g) % w for g, w in zip(grid, window)]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = self._mask(padded, window, shift, grid, x.device)
        out = window_reverse(self.attn(window_partition(x, window), window, mask), window, padded)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        return out[:, : grid[0], : grid[1], : grid[2]]
