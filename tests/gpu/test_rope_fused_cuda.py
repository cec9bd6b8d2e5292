"""The compiled RoPE kernel (rope.use_fused_rope) against the complex multiply, on a CUDA device."""

from __future__ import annotations

import torch

from live_avatar.core.engines.liveavatar import rope
from live_avatar.core.engines.liveavatar.rope import apply_rope, rope_cos_sin, rotation


def test_compiled_rope_is_within_one_bf16_step_of_the_complex_multiply():
    gen = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(1920, 40, 128, generator=gen)).to(torch.bfloat16).cuda()
    rot = rotation(rope_cos_sin(torch.randint(-40, 200, (1920, 3), generator=gen), 128), torch.bfloat16).cuda()
    expected = apply_rope(x, rot)
    rope.use_fused_rope({})
    try:
        got = apply_rope(x, rot)
    finally:
        rope.use_fused_rope(None)
    diff = (got.float() - expected.float()).abs()
    assert bool((diff <= expected.float().abs().clamp(min=2.0**-126) * 2.0**-7).all()), f"max diff {diff.max()}"
    assert (diff == 0).float().mean() > 0.999


def test_compiled_rotate_into_ring_at_the_14b_shapes():
    """320x512: a block of 1920 tokens into a ring of 7680 rows after a sink of 1280, 40 heads x 128."""
    from tests.unit.liveavatar.test_rope_fused import check_rotate_into_ring

    check_rotate_into_ring(torch.device("cuda"), n=1920, ns=1280, cap=1280, ring=7680, heads=40, head_dim=128)
