"""The stepper's state is allocated once: rings and sink keep their storage and size, and process
memory stays flat over a long stream (200 tiny blocks = 50 clips, many ring wraps)."""

from __future__ import annotations

import dataclasses
import gc

import psutil
import pytest
import torch

from live_avatar.core.engines.liveavatar.config import ConfigError, LatentGeometry, load_model_config
from live_avatar.core.engines.liveavatar.loader import build_random_model
from live_avatar.core.engines.liveavatar.sampler import ClipNoise
from live_avatar.core.engines.liveavatar.stepper import CausalStepper

from .conftest import CONFIGS

TINY = load_model_config(CONFIGS / "liveavatar-tiny.yaml")
NUM_BLOCKS = 200
WARMUP_BLOCKS = 20
RSS_SLACK_BYTES = 16 * 2**20  # allocator noise; a leak of one block's K/V per call would far exceed it


def _storage(stepper):
    tensors = [t for ring in stepper.rings for t in (ring.k, ring.v)] + [stepper.sink.k]
    return [(t.data_ptr(), tuple(t.shape)) for t in tensors]


def test_state_and_rss_flat_over_200_blocks():
    geometry = LatentGeometry(8, 8)  # 16 tokens per latent frame keeps 800 DiT calls fast
    s = TINY.streaming
    model = build_random_model(TINY.dit, s, seed=1)
    stepper = CausalStepper(model, s, geometry)
    gen = torch.Generator().manual_seed(0)
    cfg = TINY.dit
    stepper.prefill(torch.randn(cfg.in_dim, 1, 8, 8, generator=gen),
                    torch.randn(cfg.in_dim, s.lat_motion_frames, 8, 8, generator=gen),
                    torch.randn(5, cfg.text_dim, generator=gen))
    noise = ClipNoise(0, stepper.clip_noise_shape, s.latent_frames_per_block)
    audio = torch.randn(cfg.num_audio_layers, cfg.audio_dim, s.video_frames_per_block, generator=gen)

    storage, nbytes = _storage(stepper), stepper.state_nbytes
    ring = stepper.rings[0]
    assert ring.ring_tokens == s.ring_latent_frames * geometry.tokens_per_frame
    assert ring.k.shape[1] == ring.sink_capacity + ring.ring_tokens
    assert stepper.sink.capacity == geometry.sink_tokens(s) == 2.5 * geometry.tokens_per_frame
    process = psutil.Process()
    rss_after_warmup = None
    for b in range(NUM_BLOCKS):
        out = stepper.step_block(audio, noise.block(b))
        assert torch.isfinite(out).all(), f"block {b} produced non-finite latents"
        if b + 1 == WARMUP_BLOCKS:
            gc.collect()
            rss_after_warmup = process.memory_info().rss
    gc.collect()
    growth = process.memory_info().rss - rss_after_warmup
    assert stepper.block_index == NUM_BLOCKS
    assert stepper.frame_index == NUM_BLOCKS * s.latent_frames_per_block  # absolute, never wrapped
    assert _storage(stepper) == storage, "ring/sink storage was reallocated or resized"
    assert stepper.state_nbytes == nbytes
    assert stepper.sink.length == stepper.sink.capacity
    assert growth < RSS_SLACK_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {NUM_BLOCKS - WARMUP_BLOCKS} blocks"


def test_sink_capacity_too_small_is_an_error():
    s = dataclasses.replace(TINY.streaming, sink_capacity_tokens=10)
    model = build_random_model(TINY.dit, s, seed=1)
    with pytest.raises(ConfigError, match="sink capacity 10 < 40 tokens"):
        CausalStepper(model, s, LatentGeometry(8, 8))
