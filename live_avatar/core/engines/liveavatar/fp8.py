"""FP8 Linears (spec section 9): e4m3 weights quantised once, activations quantised on every call.

Two scalings:
    "tensor"  the spec's: one scale per weight and one per activation matrix, ``min(448 / max|X|, 448)``.
    "row"     one scale per output channel of the weight and one per token of the activation (the
              same formula per row): finer scales, as a row's maximum never exceeds the matrix's. The
              per-token maximum can fuse into the kernel producing the activation, but the row-scaled
              GEMM is another kernel: at 320x512 on an H200 the DiT took 393 vs 397 ms, so "tensor" stays
              the default.

The whole-matrix maximum is taken per row first and then over the rows: the same value (a maximum is
exact), as a reduction that runs in parallel over the rows on a GPU: in the H200 profiles of a 320x512
block the maximum after the attention (most likely the attention output's: 160 a block, 1920x5120
each) took 9.9 ms as one reduction and 1.9 ms per row then over the rows.
"""

from __future__ import annotations

from typing import Literal

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Substrings of module paths whose Linears stay in bf16 (spec 9).
FP8_SKIP = ("text_embedding", "time_embedding", "time_projection", "head.head", "casual_audio_encoder.encoder.final_linear")
Fp8Scaling = Literal["tensor", "row"]
FP8_SCALINGS: tuple[str, ...] = ("tensor", "row")


def fp8_scale(t: torch.Tensor, rowwise: bool = False) -> torch.Tensor:
    """``min(448 / max|t|, 448)`` (max|t| floored at 1e-12), float32: a scalar, or ``[rows, 1]`` per row."""
    amax = t.detach().abs().amax(dim=-1, keepdim=True)
    if not rowwise:
        amax = amax.amax()
    return torch.clamp(FP8_MAX / amax.float().clamp_min(1e-12), max=FP8_MAX)


def to_fp8(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (t.float() * scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


class Fp8Linear(torch.nn.Module):
    """A Linear whose weight is e4m3 with its scale(s); activations are quantised per call over the
    ``[tokens, in]`` matrix (one scale, or one per token) and multiplied with ``torch._scaled_mm``
    (fast accumulation)."""

    def __init__(self, linear: torch.nn.Linear, scaling: Fp8Scaling = "tensor") -> None:
        super().__init__()
        if scaling not in FP8_SCALINGS:
            raise ValueError(f"FP8 scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"FP8 GEMM needs in/out features divisible by 16, got {self.in_features}x{self.out_features}")
        self.rowwise = scaling == "row"
        scale = fp8_scale(linear.weight, self.rowwise)  # [out, 1] per output channel, or a scalar
        self.weight = torch.nn.Parameter(to_fp8(linear.weight, scale), requires_grad=False)
        # _scaled_mm takes the second operand's row scales as [1, out]
        self.register_buffer("weight_scale_inv", (1.0 / scale).float().reshape(1, -1) if self.rowwise else (1.0 / scale).float())
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.bias = torch.nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        scale = fp8_scale(flat, self.rowwise)
        out = torch._scaled_mm(to_fp8(flat, scale), self.weight.t(), scale_a=(1.0 / scale).float(),
                               scale_b=self.weight_scale_inv, bias=self.bias, out_dtype=torch.bfloat16,
                               use_fast_accum=True)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def fp8_targets(model: torch.nn.Module) -> list[str]:
    """Names of the Linears that FP8 quantises (works on a meta model too)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(skip in n for skip in FP8_SKIP)]


@torch.no_grad()
def quantize_fp8_(model: torch.nn.Module, scaling: Fp8Scaling = "tensor") -> list[str]:
    """Replace the Linears of spec 9 by :class:`Fp8Linear` in place (after any LoRA merge).

    Returns the quantised module names. Needs ``torch._scaled_mm`` for float8 (Hopper/Ada GPUs; recent
    CPU builds also run it, slowly).
    """
    names = fp8_targets(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(getattr(parent, child), scaling))
    device = next(model.parameters()).device
    if names and device.type == "cuda":
        # Hand the freed bf16 weights (~28 GB for the 14B) back to the driver: ranks that share one GPU
        # (--share-gpu) otherwise each keep them cached and the fourth cannot create its cuBLAS handle.
        torch.cuda.empty_cache()
    return names
