"""Changing the portrait mid-session with the lite engine: the runtime hands the change to the
generator before the next block, which cross-fades from the old face to the new one."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from live_avatar.core.contract import AudioBlock, AvatarError, ChangeNotSupported
from live_avatar.core.engines.lite import LiteEngine
from live_avatar.core.engines.lite.renderer import Renderer
from live_avatar.core.portraits import default_portrait
from live_avatar.core.stream import StreamConfig, StreamSession

S = 640


@pytest.fixture(scope="module")
def engine():
    return LiteEngine()


@pytest.fixture(scope="module")
def avatars(engine):
    image = default_portrait()
    return engine.prepare_avatar(image), engine.prepare_avatar(np.ascontiguousarray(image[:, ::-1, ::-1]))


def silent_block(gen, first: int) -> AudioBlock:
    n = gen.context_samples + gen.block_frames * S + gen.lookahead_samples
    return AudioBlock(np.zeros(n, np.float32), first, gen.block_frames, gen.context_samples, gen.lookahead_samples,
                      np.zeros(gen.block_frames, bool))


def test_lite_cross_fades_to_the_new_portrait(engine, avatars):
    old, new = avatars
    gen = engine.new_generator(old)
    old_renderer, new_renderer = Renderer(old.rig, engine.config.render), Renderer(new.rig, engine.config.render)
    fade = engine.config.avatar_crossfade_frames
    assert fade >= 2
    gen.generate(silent_block(gen, 0))
    assert gen.change_avatar(new) == 0
    shown = []
    for first in range(2, 2 + fade + 4, gen.block_frames):
        frames = gen.generate(silent_block(gen, first))
        shown += [(frame, pose) for frame, pose in zip(frames, gen.last_poses, strict=True)]
    for i, (frame, pose) in enumerate(shown):
        a, b = old_renderer.render(pose).astype(np.float32), new_renderer.render(pose).astype(np.float32)
        weight = min(1.0, (i + 1) / (fade + 1))
        expected = a + (b - a) * weight if i < fade else b
        assert np.abs(frame.astype(np.float32) - expected).max() <= 1.0, i  # blended, then the new face alone
    with pytest.raises(AvatarError):
        gen.change_avatar("a string")


def test_the_runtime_applies_a_change_at_the_next_block(engine, avatars):
    old, new = avatars

    async def run():
        stream = engine.open_session(old, config=StreamConfig(buffered=True))
        applied: list = []
        done = threading.Event()

        def on_applied(frame, error):
            applied.append((frame, error))
            done.set()

        chunks = []

        async def consume():
            async for chunk in stream.chunks():
                chunks.append(chunk)

        consumer = asyncio.create_task(consume())
        stream.start()
        await asyncio.sleep(0.3)
        stream.change_avatar(new, None, on_applied=on_applied)
        await asyncio.to_thread(done.wait, 5)
        frame, error = applied[0]
        assert error is None and frame is not None
        stream.change_avatar(object(), None, on_applied=on_applied)  # refused by the generator: reported, not fatal
        done.clear()
        await asyncio.to_thread(done.wait, 5)
        assert isinstance(applied[1][1], AvatarError) and applied[1][0] is None
        await asyncio.sleep(0.2)
        assert stream.state == "running" and stream.generator.avatar is new
        await stream.close()
        await consumer
        assert any(c.first_frame >= frame for c in chunks)

    asyncio.run(run())


def test_a_generator_without_the_hook_refuses(engine, avatars):
    class Fixed:
        block_frames, context_samples, lookahead_samples = 2, 0, 0

    stream = StreamSession(Fixed())
    with pytest.raises(ChangeNotSupported):
        stream.change_avatar(avatars[1])
