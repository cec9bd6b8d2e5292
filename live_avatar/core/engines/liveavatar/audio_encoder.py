"""The S2V causal audio encoder: wav2vec2 hidden states of one block -> per-latent-frame audio tokens.

Parameter names follow the official checkpoint, typo included (``casual_audio_encoder``; spec 1.3).
Numerics follow spec section 2.2: the block is left-padded with copies of its first frame, the 25 layers
are mixed with SiLU-normalised weights, two conv branches (local: 4 tokens, global: 1 vector) share
conv2/conv3, and only the last ``latent_frames_per_block`` outputs are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig


class CausalConv1d(nn.Module):
    """Conv1d with replicate padding of ``kernel-1`` frames on the left only (holds ``.conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class AudioConvStack(nn.Module):
    """``casual_audio_encoder.encoder``: the two conv branches plus the learned 5th token."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.num_tokens = cfg.num_audio_token
        self.eps = cfg.eps
        self.conv1_local = CausalConv1d(cfg.audio_dim, self.num_tokens * (d // 4), 3, stride=1)
        self.conv1_global = CausalConv1d(cfg.audio_dim, d // 4, 3, stride=1)
        self.conv2 = CausalConv1d(d // 4, d // 2, 3, stride=2)
        self.conv3 = CausalConv1d(d // 2, d, 3, stride=2)
        self.final_linear = nn.Linear(d, d)
        self.padding_tokens = nn.Parameter(torch.empty(1, 1, 1, d))

    def _norm_silu(self, x: torch.Tensor) -> torch.Tensor:
        """LN (no affine) over channels of ``[B, C, T]``, then SiLU."""
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=self.eps)
        return F.silu(x).transpose(1, 2)

    def _shared_tail(self, x: torch.Tensor) -> torch.Tensor:
        x = self._norm_silu(x)
        x = self._norm_silu(self.conv2(x))
        return self._norm_silu(self.conv3(x))  # [B, d, T']

    def forward(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mixed ``[B, audio_dim, T]`` -> (local tokens ``[B, T', n+1, d]``, global ``[B, T', 1, d]``)."""
        b = mixed.shape[0]
        local = self.conv1_local(mixed)  # [B, n*c, T]; the token index is the outer channel factor
        t = local.shape[-1]
        local = local.reshape(b * self.num_tokens, -1, t)
        local = self._shared_tail(local)  # [B*n, d, T']
        local = local.reshape(b, self.num_tokens, local.shape[1], local.shape[2]).permute(0, 3, 1, 2)
        pad = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, local.shape[3])
        local = torch.cat([local, pad], dim=2)

        glob = self._shared_tail(self.conv1_global(mixed)).transpose(1, 2)  # [B, T', d]
        glob = self.final_linear(glob).unsqueeze(2)
        return local, glob


class CausalAudioEncoder(nn.Module):
    """``casual_audio_encoder``: layer mixing (``weights``) + :class:`AudioConvStack` (``encoder``)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.empty(1, cfg.num_audio_layers, 1, 1))
        self.encoder = AudioConvStack(cfg)

    def mix_layers(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, layers, audio_dim, T]`` -> ``[B, audio_dim, T]`` with SiLU-normalised layer weights."""
        w = F.silu(self.weights.to(features.dtype))
        return (features * w).sum(dim=1) / w.sum(dim=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.mix_layers(features))


def encode_audio_block(
    encoder: CausalAudioEncoder,
    block_features: torch.Tensor,
    *,
    left_pad_frames: int,
    keep_frames: int,
) -> dict[str, torch.Tensor]:
    """Encode one block's features the way the reference does (spec 2.2).

    block_features: ``[1, layers, audio_dim, video_frames]``. The block is left-padded with
    ``left_pad_frames`` copies of its first frame; of the encoder's outputs the last ``keep_frames``
    are kept. The conv stack runs in float32 (the reference's fp32 autocast region); the layer mix runs
    in the input dtype. Returns ``tokens`` ``[1, keep, n+1, d]``, ``global`` ``[1, keep, 1, d]`` (both in
    the input dtype) and the undropped ``tokens_full``/``global_full`` for inspection.
    """
    if block_features.ndim != 4:
        raise ValueError(f"audio block must be [1, layers, audio_dim, frames], got {tuple(block_features.shape)}")
    first = block_features[..., :1].expand(*block_features.shape[:3], left_pad_frames)
    padded = torch.cat([first, block_features], dim=-1)
    mixed = encoder.mix_layers(padded)
    param_dtype = encoder.encoder.final_linear.weight.dtype
    local, glob = encoder.encoder(mixed.to(param_dtype))
    local, glob = local.float(), glob.float()
    if local.shape[1] < keep_frames:
        raise ValueError(f"audio encoder produced {local.shape[1]} frames, fewer than the {keep_frames} needed")
    return {
        "tokens": local[:, -keep_frames:].to(block_features.dtype),
        "global": glob[:, -keep_frames:].to(block_features.dtype),
        "tokens_full": local,
        "global_full": glob,
    }
