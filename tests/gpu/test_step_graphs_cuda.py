"""CUDA graphs of the denoising calls (step_graphs.py) against the ordinary calls, on a CUDA device.

Not collected without CUDA (tests/conftest.py); run on the GPU machine: ``python3 -m pytest tests/gpu``.
"""

from __future__ import annotations

import random

import torch

from live_avatar.core.engines.liveavatar.config import LatentGeometry, load_model_config
from live_avatar.core.engines.liveavatar.loader import build_random_model
from live_avatar.core.engines.liveavatar.sampler import ClipNoise
from live_avatar.core.engines.liveavatar.step_graphs import GraphContext
from live_avatar.core.engines.liveavatar.stepper import CausalStepper
from tests.unit.liveavatar.conftest import CONFIGS, assert_chained_equal_full

TINY = load_model_config(CONFIGS / "liveavatar-tiny.yaml")
GEOMETRY = LatentGeometry(16, 24)
BLOCKS = 7  # the first clip (a graph per ring length while the ring fills), the sink refresh, the ring wrap,
# a new prompt (block 5) and a new reference and motion (block 6: the sink call's graph on other inputs)
DEVICE = torch.device("cuda")


def _session(model, seed: int, context: GraphContext | None, geometry: LatentGeometry = GEOMETRY,
             stepper: CausalStepper | None = None):
    """A session's stepper (``stepper``: a closed session's, reused as the engine's reuse_sessions does) and
    a function that runs its block b."""
    gen = torch.Generator().manual_seed(seed)
    cfg, s = TINY.dit, TINY.streaming
    h, w = geometry.latent_height, geometry.latent_width
    if stepper is None:
        stepper = CausalStepper(model, s, geometry, rope_rng=random.Random(seed))
        if context is not None:
            stepper.use_graphs(context)
    else:
        stepper.rope_rng = random.Random(seed)
    stepper.prefill(torch.randn(cfg.in_dim, 1, h, w, generator=gen),
                    torch.randn(cfg.in_dim, s.lat_motion_frames, h, w, generator=gen),
                    torch.randn(9, cfg.text_dim, generator=gen))
    audio = torch.randn(cfg.num_audio_layers, cfg.audio_dim, BLOCKS * s.video_frames_per_block, generator=gen)
    noise = ClipNoise(seed, stepper.clip_noise_shape, s.latent_frames_per_block, device=DEVICE, dtype=torch.bfloat16)
    prompt = torch.randn(5, cfg.text_dim, generator=gen)
    new_ref, new_motion = torch.randn(cfg.in_dim, 1, h, w, generator=gen), torch.randn(cfg.in_dim, s.lat_motion_frames, h, w, generator=gen)
    v = s.video_frames_per_block

    def block(b: int) -> torch.Tensor:
        if b == 5:
            stepper.set_text(prompt)  # a new prompt mid-stream: copied into what the graphs read
        if b == 6:
            stepper.refresh_sink(new_ref, new_motion)  # an avatar change: the sink call's graph on new inputs
        return stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b))

    return stepper, block


@torch.inference_mode()
def test_graphed_sessions_equal_ordinary_ones_even_interleaved():
    model = build_random_model(TINY.dit, TINY.streaming, seed=11, device=DEVICE, dtype=torch.bfloat16)
    context = GraphContext.for_device(DEVICE)
    plain = {seed: _session(model, seed, None)[1] for seed in (1, 2)}
    graphed = {seed: _session(model, seed, context) for seed in (1, 2)}
    s = TINY.streaming
    every_call = [(step, b * graphed[1][0].block_tokens) for step in range(s.num_steps) for b in range(1, s.blocks_per_clip + 1)]
    for stepper, _ in graphed.values():  # recorded at the prefill, before the first block: every step and ring length
        assert stepper.graphs.recorded_steps == list(range(s.num_steps))
        assert stepper.graphs.recorded == every_call
        assert stepper.graphs._sink.graph is not None, "the sink call is a graph too (the refresh before clip 1)"
    for b in range(BLOCKS):
        for seed in (1, 2):  # two sessions' graphs share one pool: each must still see its own data
            expected = plain[seed](b)
            got = graphed[seed][1](b)
            assert torch.equal(got, expected), f"session {seed}, block {b}: max diff {(got.float() - expected.float()).abs().max()}"
    for stepper, _ in graphed.values():
        assert stepper.graphs.recorded == every_call


@torch.inference_mode()
def test_a_reused_stepper_replays_its_graphs_for_the_next_session():
    """reuse_sessions: a closed session's stepper, prefilled for another session, records nothing and gives
    what a new stepper gives."""
    model = build_random_model(TINY.dit, TINY.streaming, seed=11, device=DEVICE, dtype=torch.bfloat16)
    context = GraphContext.for_device(DEVICE)
    first, run_first = _session(model, 1, context)
    for b in range(BLOCKS):
        run_first(b)
    graphs = {key: r.graph for key, r in first.graphs._recorded.items()}
    reused, run_reused = _session(model, 2, context, stepper=first)
    assert reused is first and {key: r.graph for key, r in reused.graphs._recorded.items()} == graphs
    run_plain = _session(model, 2, None)[1]
    for b in range(BLOCKS):
        expected, got = run_plain(b), run_reused(b)
        assert torch.equal(got, expected), f"block {b}: max diff {(got.float() - expected.float()).abs().max()}"


@torch.inference_mode()
def test_graphed_partial_steppers_chained_equal_the_full_stepper():
    """What a pipeline rank runs: one stepper per step, each with its own graphs (one context per rank
    process), chained block by block, gives the ordinary full stepper's latents."""
    import dataclasses

    s = dataclasses.replace(TINY.streaming, ref_rope_offset_mode="fixed", ref_rope_fixed_offset=17)
    cfg, h, w = TINY.dit, GEOMETRY.latent_height, GEOMETRY.latent_width
    model = build_random_model(cfg, s, seed=11, device=DEVICE, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(4)
    ref, motion = torch.randn(cfg.in_dim, 1, h, w, generator=gen), torch.randn(cfg.in_dim, s.lat_motion_frames, h, w, generator=gen)
    text = torch.randn(9, cfg.text_dim, generator=gen)
    audio = torch.randn(cfg.num_audio_layers, cfg.audio_dim, BLOCKS * s.video_frames_per_block, generator=gen)
    full = CausalStepper(model, s, GEOMETRY)
    ranks = [CausalStepper(model, s, GEOMETRY, steps=[step]) for step in range(s.num_steps)]
    for rank in ranks:
        rank.use_graphs(GraphContext.for_device(DEVICE))
    for stepper in [full, *ranks]:
        stepper.prefill(ref, motion, text)
    noise = ClipNoise(3, full.clip_noise_shape, s.latent_frames_per_block, device=DEVICE, dtype=torch.bfloat16)
    assert_chained_equal_full(full, ranks, audio, noise, BLOCKS)
    assert all(rank.graphs.recorded_steps == [step] for step, rank in enumerate(ranks))
