"""FramePack motion packer (``frame_packer``): motion latents -> sink tokens (spec section 2.11).

The last ``sum(buckets)`` motion latents (zero-padded on the left when fewer exist) are split, oldest
first, into a 4x bucket (16 frames, kernel/stride 4x8x8), a 2x bucket (2 frames, 2x4x4) and a 1x bucket
(the newest frame, 1x2x2). The token sequence is ``[1x ; 2x ; 4x]``, each flattened in (f, y, x) order.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DiTConfig


class FramePackMotioner(nn.Module):
    def __init__(self, cfg: DiTConfig, buckets: tuple[int, int, int] = (1, 2, 16)) -> None:
        super().__init__()
        self.buckets = tuple(buckets)
        c, d = cfg.in_dim, cfg.dim
        self.proj = nn.Conv3d(c, d, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(c, d, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(c, d, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion_latents: torch.Tensor) -> torch.Tensor:
        """motion_latents ``[C, T, h, w]`` (oldest first) -> tokens ``[N1 + N2 + N4, dim]``."""
        if motion_latents.ndim != 4:
            raise ValueError(f"motion latents must be [C, T, h, w], got {tuple(motion_latents.shape)}")
        n1, n2, n4 = self.buckets
        total = n1 + n2 + n4
        c, t, h, w = motion_latents.shape
        packed = motion_latents.new_zeros(c, total, h, w)
        keep = min(t, total)
        if keep:
            packed[:, total - keep :] = motion_latents[:, t - keep :]
        packed = packed.unsqueeze(0)
        oldest, middle, newest = packed.split([n4, n2, n1], dim=2)
        tokens = [
            self.proj(newest.to(self.proj.weight.dtype)),
            self.proj_2x(middle.to(self.proj.weight.dtype)),
            self.proj_4x(oldest.to(self.proj.weight.dtype)),
        ]
        return torch.cat([tok.flatten(2).transpose(1, 2)[0] for tok in tokens], dim=0)
