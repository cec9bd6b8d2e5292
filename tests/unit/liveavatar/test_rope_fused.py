"""The real-arithmetic RoPE (compiled into one kernel on CUDA) against the complex multiply it replaces."""

from __future__ import annotations

import torch

from live_avatar.core.engines.liveavatar import rope
from live_avatar.core.engines.liveavatar.rope import apply_rope, rope_cos_sin, rotate_pairs, rotation


def _inputs(n: int = 96, heads: int = 4, head_dim: int = 128, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(-40, 200, (n, 3), generator=gen)
    x = (3 * torch.randn(n, heads, head_dim, generator=gen)).to(torch.bfloat16)
    return x, rotation(rope_cos_sin(positions, head_dim), torch.bfloat16)


def test_real_arithmetic_equals_the_complex_multiply_in_bf16():
    x, rot = _inputs()
    expected = apply_rope(x, rot)
    got = rotate_pairs(x, torch.view_as_real(rot))
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    diff = (got.float() - expected.float()).abs()
    ulp = expected.float().abs().clamp(min=2.0**-126) * 2.0**-7  # one bf16 step at each value
    # the same float32 products and sums; only a fused multiply-add may round one value differently
    assert bool((diff <= ulp).all()), f"max diff {diff.max()}"
    assert (diff == 0).float().mean() > 0.999


def test_a_wrong_pairing_is_caught():
    x, rot = _inputs(seed=1)
    swapped = torch.view_as_real(rot).flip(-1)  # (sin, cos): a rotation by 90 degrees minus the angle
    assert not torch.allclose(rotate_pairs(x, swapped).float(), apply_rope(x, rot).float(), atol=0.1)


def test_the_fused_path_is_taken_only_for_cuda_tensors(monkeypatch):
    calls = []
    monkeypatch.setattr(rope, "_fused_rotate", lambda x, r: calls.append(x.shape) or rotate_pairs(x, r))
    x, rot = _inputs()
    apply_rope(x, rot)  # a CPU tensor: the complex path, as the golden parity runs
    assert calls == []
    rope.use_fused_rope(None)
    assert rope._fused_rotate is None
