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


def test_rotate_into_ring_compiled_stores_in_place_and_only_its_rows():
    """The fused RoPE + KV stores of a graphed call (compiled on CUDA; inductor on the CPU here): the
    rotated k/v land in the given rows, the re-rotated sink K in its rows, nothing else changes, and
    the result equals the uncompiled function's. tests/gpu runs the same check at the 14B's shapes."""
    check_rotate_into_ring(torch.device("cpu"), n=24, ns=10, cap=12, ring=72, heads=2, head_dim=32)


def check_rotate_into_ring(device: torch.device, *, n: int, ns: int, cap: int, ring: int, heads: int,
                           head_dim: int) -> None:
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    q, k, v = ((2 * torch.randn(n, heads, head_dim, generator=gen)).to(torch.bfloat16).to(device) for _ in range(3))
    sink_k = torch.randn(ns, heads, head_dim, generator=gen).to(torch.bfloat16).to(device)
    noisy = torch.view_as_real(rotation(rope_cos_sin(torch.randint(0, 50, (n, 3), generator=gen), head_dim), torch.bfloat16)).to(device)
    sink = torch.view_as_real(rotation(rope_cos_sin(torch.randint(-9, 50, (ns, 3), generator=gen), head_dim), torch.bfloat16)).to(device)
    rows = torch.arange(cap + ring // 3, cap + ring // 3 + n, device=device)
    compiled = torch.compile(rope.rotate_into_ring, dynamic=False)
    results = []
    for fn in (rope.rotate_into_ring, compiled):
        buf_k = torch.randn(3, cap + ring, heads, head_dim, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16).to(device)
        buf_v = buf_k.clone() + 1
        before_k, before_v = buf_k.clone(), buf_v.clone()
        out = fn(buf_k[1], buf_v[1], rows, q, k, v, sink_k, noisy, sink, cap - ns)
        results.append((out, buf_k, buf_v))
        assert torch.equal(buf_v[1, rows], v)
        assert torch.equal(buf_k[1, rows], rotate_pairs(k, noisy))
        assert torch.equal(buf_k[1, cap - ns:cap], rotate_pairs(sink_k, sink))
        touched = torch.zeros(cap + ring, dtype=torch.bool, device=device)
        touched[rows] = True
        touched[cap - ns:cap] = True
        for layer in (0, 2):  # the other layers' views of the same buffers
            assert torch.equal(buf_k[layer], before_k[layer]) and torch.equal(buf_v[layer], before_v[layer])
        assert torch.equal(buf_k[1, ~touched], before_k[1, ~touched])
        assert torch.equal(buf_v[1, ~touched], before_v[1, ~touched])
    (eager_q, eager_k, _), (comp_q, comp_k, _) = results
    assert torch.allclose(comp_q.float(), eager_q.float(), rtol=2**-7, atol=1e-6)
    assert torch.allclose(comp_k.float(), eager_k.float(), rtol=2**-7, atol=1e-6)
    torch._dynamo.reset()
