"""3D patch embedding and spatial patch merging for channels-last video tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed3D(nn.Module):
    """B×T×3×H×W video → B×T'×H'×W'×C tokens (a strided Conv3d, then LayerNorm).

    H and W are zero-padded up to a multiple of the patch size.
    """

    def __init__(self, patch_size: tuple[int, int, int] = (1, 8, 8), in_chans: int = 3, dim: int = 128):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.transpose(1, 2)  # B×3×T×H×W
        pt, ph, pw = self.patch_size
        t, h, w = x.shape[2:]
        pads = ((-w) % pw, (-h) % ph, (-t) % pt)
        if any(pads):
            x = F.pad(x, (0, pads[0], 0, pads[1], 0, pads[2]))
        x = self.proj(x).permute(0, 2, 3, 4, 1)  # B×T×H×W×C
        return self.norm(x)


class PatchMerging(nn.Module):
    """Merge each 2×2 spatial neighbourhood: B×T×H×W×C → B×T×⌈H/2⌉×⌈W/2⌉×2C.

    The concatenation order matches 2D Swin so its weights load unchanged.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))
