"""Audio injection (``audio_injector``): AdaLN from the global audio vector, then per-frame
cross-attention of the noisy tokens over that frame's audio tokens (spec section 2.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig


class RMSNorm(nn.Module):
    """RMSNorm over the full width (all heads), computed in float32, cast back, then scaled."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight.to(x.dtype)


class AttentionProjections(nn.Module):
    """q/k/v/o Linears with q/k RMSNorm; the layout shared by self-, text- and audio-attention."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.k(src)).unflatten(-1, (self.num_heads, self.head_dim))
        v = self.v(src).unflatten(-1, (self.num_heads, self.head_dim))
        return k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked SDPA. q ``[..., Nq, H, dh]``, k/v ``[..., Nk, H, dh]`` -> ``[..., Nq, H*dh]``."""
    if q.ndim == 3:  # the fused (flash / cuDNN / efficient) kernels want [batch, heads, tokens, dh]
        return attend(q[None], k[None], v[None])[0]
    out = F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2))
    return out.transpose(-3, -2).flatten(-2)


class AdaLayerNorm(nn.Module):
    """``injector_adain_layers.k``: ``LN(x)*(1+scale)+shift`` with (shift, scale) = linear(silu(g))."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x ``[F, Lf, d]``, cond ``[F, d]`` -> float32 ``[F, Lf, d]``."""
        shift, scale = self.linear(F.silu(cond)).chunk(2, dim=-1)
        normed = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps)
        # (1 + scale) is formed in the Linear's dtype, as under the reference's bf16 autocast.
        return normed * (1 + scale[:, None]).float() + shift[:, None].float()


class AudioInjector(nn.Module):
    """``audio_injector``: one attention (``injector.k``) and one AdaLN per injection layer."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.injector = nn.ModuleList(
            AttentionProjections(cfg.dim, cfg.num_heads, cfg.eps) for _ in cfg.audio_inject_layers
        )
        self.injector_adain_layers = nn.ModuleList(
            AdaLayerNorm(cfg.dim, cfg.adain_eps) for _ in cfg.audio_inject_layers
        )
        self._compiled_inject = None  # torch.compile'd inject_eager (one graph per injection layer)

    def compile_inject(self, **compile_kwargs) -> None:
        """``torch.compile`` the injections (GPU): eagerly, each is ~85 small ops (the FP8 quantisation of
        five Linears, the norms), 12 layers x 4 steps a block."""
        self._compiled_inject = torch.compile(self.inject_eager, **compile_kwargs)

    def inject(self, index: int, x: torch.Tensor, tokens: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """Return x + injection. x ``[F, Lf, d]``; tokens ``[F, n+1, d]``; glob ``[F, d]``."""
        return (self._compiled_inject or self.inject_eager)(index, x, tokens, glob)

    def inject_eager(self, index: int, x: torch.Tensor, tokens: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        attn = self.injector[index]
        h = self.injector_adain_layers[index](x, glob).to(x.dtype)
        q = attn.project_q(h)
        k, v = attn.project_kv(tokens.to(x.dtype))
        return x + attn.o(attend(q, k, v))
