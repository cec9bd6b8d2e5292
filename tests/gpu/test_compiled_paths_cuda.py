"""The compiled CUDA paths of a denoising call together (inductor halves, compiled audio injections,
FP8 Linears with either scaling, the fused RoPE + ring stores of the graphed calls) against the eager
model, on a CUDA device. Not collected without CUDA (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from live_avatar.core.engines.liveavatar import rope
from live_avatar.core.engines.liveavatar.config import LatentGeometry
from live_avatar.core.engines.liveavatar.fp8 import Fp8Linear, quantize_fp8_
from live_avatar.core.engines.liveavatar.loader import build_random_model
from live_avatar.core.engines.liveavatar.step_graphs import GraphContext
from tests.gpu.test_step_graphs_cuda import BLOCKS, DEVICE, GEOMETRY, TINY, _session


@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_linear_on_cuda_close_to_bf16(scaling):
    torch.manual_seed(0)
    linear = torch.nn.Linear(5120, 13824).to(DEVICE, torch.bfloat16)
    x = torch.randn(1920, 5120, device=DEVICE, dtype=torch.bfloat16)
    fp8 = Fp8Linear(linear, scaling)
    expected = linear(x).float()
    for fn in (fp8, torch.compile(fp8, dynamic=False)):
        out = fn(x).float()
        assert ((out - expected).norm() / expected.norm()).item() < 0.05


@pytest.mark.parametrize("scaling", ["tensor", "row"])
@torch.inference_mode()
def test_compiled_graphed_session_close_to_the_eager_model(scaling):
    torch._dynamo.reset()
    eager = build_random_model(TINY.dit, TINY.streaming, seed=11, device=DEVICE, dtype=torch.bfloat16)
    compiled = build_random_model(TINY.dit, TINY.streaming, seed=11, device=DEVICE, dtype=torch.bfloat16)
    for model in (eager, compiled):
        quantize_fp8_(model, scaling)
    compiled.compile_blocks()
    fused_calls = []
    fused = rope._fused_rotate_into_ring
    rope._fused_rotate_into_ring = lambda *a: fused_calls.append(1) or fused(*a)
    try:
        plain_block = _session(eager, 1, None)[1]
        graphed_stepper, graphed_block = _session(compiled, 1, GraphContext.for_device(DEVICE))
        for b in range(BLOCKS):
            expected, got = plain_block(b).float(), graphed_block(b).float()
            error = ((got - expected).norm() / expected.norm()).item()
            assert error < 0.05, f"block {b}: relative error {error}"
    finally:
        rope.use_fused_rope(None)
        torch._dynamo.reset()
    assert graphed_stepper.graphs.recorded_steps == list(range(TINY.streaming.num_steps))
    assert fused_calls, "the graphed calls did not take the fused RoPE + ring stores"


@torch.inference_mode()
def test_a_second_frame_size_records_its_graphs_at_its_first_prefill():
    """One engine, one graph context, two frame sizes with compiled blocks: the first session of the second
    size compiles its kernels in an eager call before capturing (a compile inside the capture failed it,
    and the failed capture's pool then failed every later recording)."""
    torch._dynamo.reset()
    model = build_random_model(TINY.dit, TINY.streaming, seed=11, device=DEVICE, dtype=torch.bfloat16)
    model.compile_blocks()
    context = GraphContext.for_device(DEVICE)
    try:
        for geometry in (GEOMETRY, LatentGeometry(16, 16), LatentGeometry(16, 16)):
            stepper, block = _session(model, 1, context, geometry)
            assert stepper.graphs is not None, f"{geometry}: recording at the prefill failed"
            assert stepper.graphs.recorded_steps == list(range(TINY.streaming.num_steps))
            assert all(torch.isfinite(block(b)).all() for b in range(TINY.streaming.blocks_per_clip + 1))
    finally:
        rope.use_fused_rope(None)
        torch._dynamo.reset()
