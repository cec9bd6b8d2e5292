"""Changing the portrait or prompt of a running liveavatar session (tiny random weights, CPU): the
change waits for the next clip boundary, where the sink is rebuilt from the new reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_avatar.core.contract import AudioBlock, AvatarError
from live_avatar.core.engines import load_engine

torch.set_num_threads(1)
SPF = 640


@pytest.fixture(scope="module")
def engine():
    return load_engine("liveavatar", tiny=True, capacity=3, seed=7)


def portrait(engine, flip: bool):
    yy, xx = np.mgrid[0:240, 0:180]
    img = np.stack([(xx * 255 // 180), (yy * 255 // 240), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    return engine.prepare_avatar(np.ascontiguousarray(img[::-1, ::-1] if flip else img))


def block(gen, k: int) -> AudioBlock:
    n = gen.context_samples + 12 * SPF + gen.lookahead_samples
    t = np.arange(n) / 16000
    samples = (0.2 * np.sin(2 * np.pi * (150 + 50 * k) * t)).astype(np.float32)
    return AudioBlock(samples, 12 * k, 12, gen.context_samples, gen.lookahead_samples, np.ones(12, bool))


def test_change_waits_for_the_clip_boundary_and_rebuilds_the_sink(engine):
    first, second = portrait(engine, False), portrait(engine, True)
    same, changed = engine.new_generator(first, "a person talks"), engine.new_generator(first, "a person talks")
    try:
        for k in range(2):
            np.testing.assert_array_equal(same.generate(block(same, k)), changed.generate(block(changed, k)))
        assert changed.change_avatar(second, "a person smiles") == 2 * 12  # blocks 2 and 3 end clip 0
        with pytest.raises(AvatarError):
            changed.change_avatar("not an avatar")
        sink_before = changed.stepper.sink.k.clone()
        for k in range(2, 4):  # the rest of clip 0: unchanged
            np.testing.assert_array_equal(same.generate(block(same, k)), changed.generate(block(changed, k)))
        torch.testing.assert_close(changed.stepper.sink.k, sink_before, atol=0, rtol=0)
        a, b = same.generate(block(same, 4)), changed.generate(block(changed, 4))  # clip 1: the new reference
        assert changed.avatar is second and changed._pending_change is None
        assert (changed.stepper.sink.k - sink_before).abs().max() > 1e-4
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.01
        assert changed.change_avatar(None, "") == 3 * 12  # mid-clip again: three blocks to go
    finally:
        same.close()
        changed.close()


def test_change_before_the_first_block_applies_at_once(engine):
    first, second = portrait(engine, False), portrait(engine, True)
    gen, direct = engine.new_generator(first), engine.new_generator(second)
    try:
        assert gen.change_avatar(second) == 0
        np.testing.assert_array_equal(gen.generate(block(gen, 0)), direct.generate(block(direct, 0)))
    finally:
        gen.close()
        direct.close()
