"""overlap_vae: the VAE decode of block k on its own thread while block k+1 is denoised gives the same
frames as the one-after-the-other generator, alone and inside a live StreamSession (2 blocks in flight)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from live_avatar.core.engines.liveavatar.engine import LiveAvatarEngine
from live_avatar.core.engines.liveavatar.vae_overlap import VaeOverlapGenerator
from tests.support.pipeline_render import audio_blocks, frames_through_session, portrait

BLOCKS = 6  # clip 0 and the first blocks of clip 1 (its sink refresh included)


def _engine(sink_refresh: str, overlap: bool, device: str = "cpu") -> LiveAvatarEngine:
    torch.set_num_threads(1)
    return LiveAvatarEngine(tiny=True, size="64*64", aspect="1:1", seed=11, sink_refresh=sink_refresh,
                            overlap_vae=overlap, device=device)


def generate_frames(sink_refresh: str, overlap: bool, device: str = "cpu") -> np.ndarray:
    """BLOCKS blocks' frames; with ``overlap`` two blocks in flight, as the live session keeps them."""
    engine = _engine(sink_refresh, overlap, device)
    try:
        gen = engine.new_generator(engine.prepare_avatar(portrait()))
        assert isinstance(gen, VaeOverlapGenerator) == overlap
        blocks = list(audio_blocks(gen.context_samples, gen.lookahead_samples))[:BLOCKS]
        if overlap:
            frames = []
            for k, block in enumerate(blocks):
                gen.submit(block)
                if k >= 1:
                    frames.append(gen.collect())
                    assert gen.block_cost_s is not None and gen.block_cost_s > 0
            frames.append(gen.collect())
            with pytest.raises(RuntimeError, match="without a block in flight"):
                gen.collect()
        else:
            frames = [gen.generate(block) for block in blocks]
        gen.close()
        return np.stack(frames)
    finally:
        engine.close()


@pytest.mark.parametrize("sink_refresh", ["keep_motion", "reencode"])
def test_overlapped_decode_gives_the_same_frames(sink_refresh):
    serial = generate_frames(sink_refresh, overlap=False)
    overlapped = generate_frames(sink_refresh, overlap=True)
    assert serial.shape == (BLOCKS, 12, 64, 64, 3) and serial.std() > 1.0
    np.testing.assert_array_equal(overlapped, serial)


def test_a_live_session_keeps_two_blocks_in_it_and_skips_nothing():
    results = {}
    for overlap in (False, True):
        engine = _engine("keep_motion", overlap)
        try:
            results[overlap] = asyncio.run(frames_through_session(engine, BLOCKS))
        finally:
            engine.close()
    (serial, serial_stats), (overlapped, stats) = results[False], results[True]
    np.testing.assert_array_equal(overlapped, serial)
    assert serial_stats["max_blocks_in_flight"] == 1
    assert stats["max_blocks_in_flight"] == 2 and stats["blocks_in_flight_max"] == 2, stats
    assert stats["frames_skipped"] == 0
