"""3-axis rotary position embedding of the S2V DiT (spec section 2.7).

Each head of ``head_dim`` channels is read as ``head_dim/2`` interleaved complex pairs (2p, 2p+1), split
into temporal / height / width groups (22/21/21 pairs for head_dim 128). Pair j of an axis with ``n``
real channels rotates by ``pos * theta ** (-2j/n)``.

Reference numerics reproduced here: the angles are float64; cos/sin are rounded to float16 (the reference
stores its table as complex32); the rotation runs in float64 for float32 inputs (float32 for bf16 inputs,
where the difference is far below one bf16 ulp) and the result is cast back to the input dtype.
The rotation is a complex multiply: ``(re + i*im) * (cos + i*sin)``.
Positions are computed on demand, so there is no table length limit.
"""

from __future__ import annotations

import torch


def axis_channels(head_dim: int) -> tuple[int, int, int]:
    """Real channels per axis (temporal, height, width): 44/42/42 for head_dim 128."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _inv_freq(channels: int, theta: float) -> torch.Tensor:
    return 1.0 / torch.pow(theta, torch.arange(0, channels, 2, dtype=torch.float64) / channels)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, fp16_table: bool = True
) -> torch.Tensor:
    """cos/sin per token and complex pair.

    positions: int64 ``[N, 3]`` (temporal, height, width); a negative position rotates backwards.
    Returns float64 ``[N, head_dim/2, 2]`` holding (cos, sin).
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {tuple(positions.shape)}")
    parts = []
    for axis, channels in enumerate(axis_channels(head_dim)):
        pos = positions[:, axis].to(torch.float64)
        # The reference tables hold |p| and conjugate for negative p: same cos, negated sin.
        angles = pos.abs()[:, None] * _inv_freq(channels, theta).to(pos.device)[None, :]
        cos, sin = torch.cos(angles), torch.sin(angles)
        if fp16_table:
            cos = cos.to(torch.float16).to(torch.float64)
            sin = sin.to(torch.float16).to(torch.float64)
        sin = torch.where(pos[:, None] < 0, -sin, sin)
        parts.append(torch.stack([cos, sin], dim=-1))
    return torch.cat(parts, dim=1)


def rotation(cos_sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Complex rotation factors ``[N, head_dim/2]`` for :func:`apply_rope` on tensors of ``dtype``.

    float32 inputs rotate in complex128 (the reference rotates in float64); bf16/fp16 in complex64.
    """
    real = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    return torch.view_as_complex(cos_sin.to(real).contiguous())


def rotate_pairs(x: torch.Tensor, rot_real: torch.Tensor) -> torch.Tensor:
    """The complex64 rotation of :func:`apply_rope` in real arithmetic: ``rot_real`` ``[N, head_dim/2, 2]``
    (cos, sin) float32, x bf16/fp16. The same products and sums in float32; compiled, it is one kernel that
    reads x once, where the complex path makes float32 copies of x before and after the multiply."""
    n, heads, head_dim = x.shape
    pairs = x.float().reshape(n, heads, head_dim // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    cos, sin = rot_real[:, None, :, 0], rot_real[:, None, :, 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.reshape(n, heads, head_dim).to(x.dtype)


def rotate_into_ring(buf_k: torch.Tensor, buf_v: torch.Tensor, rows: torch.Tensor, q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, sink_k: torch.Tensor, noisy_rot_real: torch.Tensor,
                     sink_rot_real: torch.Tensor, sink_start: int) -> torch.Tensor:
    """The RoPE and the KV stores of one denoising call's self-attention, for one compiled kernel:
    rotated k and v into ``rows`` of one layer's ring buffers, the re-rotated sink K into rows
    ``[sink_start, sink_start + len(sink_k))``; returns the rotated q. Compiled, the stores go straight
    into the buffers (no block-sized temporaries, no separate copy kernels)."""
    buf_k.index_copy_(0, rows, rotate_pairs(k, noisy_rot_real))
    buf_v.index_copy_(0, rows, v)
    # an index store, not a slice assignment: inductor rewrote a sliced input as a whole (the layer's
    # 8960 rows at 320x512, 140 us a call on an H200) where it scatters into the given rows in place
    sink_rows = torch.arange(sink_start, sink_start + sink_k.shape[0], device=buf_k.device)
    buf_k.index_copy_(0, sink_rows, rotate_pairs(sink_k, sink_rot_real))
    return rotate_pairs(q, noisy_rot_real)


# rotate_pairs compiled for CUDA (set by CausalS2VDiT.compile_blocks with the inductor backend): the
# eager complex RoPE of q, k and the sink's K (4 steps x 40 layers x 3 rotations a block, each through
# float32 copies) was ~50 ms of copies and multiplies per 320x512 block on an H200; compiled, the DiT
# went from 443 to 418 ms a block. rotate_into_ring compiled too: the graphed calls' ring stores.
_fused_rotate = None
_fused_rotate_into_ring = None


def use_fused_rope(compile_kwargs: dict | None) -> None:
    """Rotate bf16/fp16 CUDA tensors with a compiled :func:`rotate_pairs` and :func:`rotate_into_ring`
    (``compile_kwargs`` for ``torch.compile``), or with the complex multiply again (None). Process-wide,
    like a backend flag."""
    global _fused_rotate, _fused_rotate_into_ring
    if compile_kwargs is None:
        _fused_rotate = _fused_rotate_into_ring = None
        return
    _fused_rotate = torch.compile(rotate_pairs, **{"dynamic": False, **compile_kwargs})
    _fused_rotate_into_ring = torch.compile(rotate_into_ring, **{"dynamic": False, **compile_kwargs})


def _fused_applies(x: torch.Tensor, rot: torch.Tensor) -> bool:
    """The compiled kernels rotate bf16/fp16 CUDA tensors (complex64 rotations); golden runs keep the multiply."""
    return rot.dtype == torch.complex64 and x.is_cuda


def fused_ring_rotation(x: torch.Tensor, rot: torch.Tensor):
    """The compiled :func:`rotate_into_ring` when the fused RoPE applies to ``x`` and ``rot``, else None."""
    return _fused_rotate_into_ring if _fused_rotate_into_ring is not None and _fused_applies(x, rot) else None


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` ``[N, heads, head_dim]`` by ``rot`` ``[N, head_dim/2]`` (complex)."""
    if _fused_rotate is not None and _fused_applies(x, rot):
        return _fused_rotate(x, torch.view_as_real(rot))
    n, heads, head_dim = x.shape
    real = torch.float64 if rot.dtype == torch.complex128 else torch.float32
    pairs = torch.view_as_complex(x.to(real).reshape(n, heads, head_dim // 2, 2))
    out = torch.view_as_real(pairs * rot[:, None, :]).reshape(n, heads, head_dim)
    # The reference casts float64 -> float32 -> x.dtype.
    return out.to(torch.float32).to(x.dtype)


def grid_positions(frames: list[int] | torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[len(frames)*len(rows)*len(cols), 3]`` positions in (frame, row, col) order, col fastest."""
    frames = torch.as_tensor(frames, dtype=torch.int64)
    rows = torch.as_tensor(rows, dtype=torch.int64)
    cols = torch.as_tensor(cols, dtype=torch.int64)
    f, r, c = torch.meshgrid(frames, rows, cols, indexing="ij")
    return torch.stack([f.reshape(-1), r.reshape(-1), c.reshape(-1)], dim=1)


def subsampled_indices(size: int, count: int) -> torch.Tensor:
    """``trunc(linspace(0, size-1, count))`` in numpy's float64 convention (last entry exactly size-1)."""
    if count == 1:
        return torch.zeros(1, dtype=torch.int64)
    step = (size - 1) / (count - 1)
    values = [i * step for i in range(count)]
    values[-1] = float(size - 1)
    return torch.tensor([int(v) for v in values], dtype=torch.int64)
