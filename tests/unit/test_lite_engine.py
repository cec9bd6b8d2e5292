"""LiteEngine: configuration, the Engine contract, avatar cache and the live session it opens."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.contract import AvatarError, Engine
from live_avatar.core.engines import load_engine
from live_avatar.core.engines.lite import LiteEngine, load_lite_config
from live_avatar.core.engines.lite.config import DEFAULT_CONFIG_PATH
from live_avatar.core.portraits import default_portrait


def test_defaults_come_from_the_yaml_file():
    assert DEFAULT_CONFIG_PATH.is_file()
    engine = load_engine("lite")
    assert isinstance(engine, Engine)
    assert (engine.name, engine.fps, engine.size, engine.block_frames, engine.sample_rate) == ("lite", 25, (512, 512), 1, 16000)


def test_overrides_and_size_rounding(tmp_path):
    engine = LiteEngine(size="500*300", block_frames=3, capacity=5, motion={"blink_interval_s": [1, 2]})
    assert engine.size == (496, 288)  # multiples of 16, never larger than asked
    assert engine.block_frames == 3 and engine.capacity == 5
    assert engine.config.motion.blink_interval_s == (1.0, 2.0)
    assert engine.config.motion.lookahead_ms == load_lite_config().motion.lookahead_ms  # untouched keys keep defaults
    custom = tmp_path / "lite.yaml"
    custom.write_text("size: [320, 240]\nrig: {mouth_open_max: 0.2}\n")
    engine = LiteEngine(config_path=custom)
    assert engine.size == (320, 240) and engine.config.rig.mouth_open_max == 0.2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour": "red"}, "lite engine options: unknown key.s. colour"),
        ({"motion": {"blinks": 3}}, "lite engine options: motion: unknown key.s. blinks"),
        ({"size": "big"}, "size"),
        ({"size": "10*10"}, "out of range"),
        ({"block_frames": 0}, "block_frames"),
        ({"motion": 3}, "motion: expected a mapping"),
        ({"fps": "25"}, "fps: expected an integer"),
    ],
)
def test_bad_config_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        LiteEngine(**options)


@pytest.fixture(scope="module")
def engine():
    return LiteEngine(size="256*256")


def test_prepare_avatar_is_cached_and_sized(engine):
    image = default_portrait()
    a = engine.prepare_avatar(image)
    assert engine.prepare_avatar(image.copy()) is a  # same pixels -> same prepared avatar
    assert a.frame.shape == (256, 256, 3)
    assert a.rig.landmarks.shape == (478, 2)


def test_new_generator_checks_its_inputs(engine):
    with pytest.raises(AvatarError):
        engine.new_generator("not an avatar")
    with pytest.raises(ValueError, match="unknown generator option"):
        engine.new_generator(engine.prepare_avatar(default_portrait()), speed=2)
    # An RGB image is accepted and prepared on the fly.
    assert engine.new_generator(default_portrait()).avatar is engine.prepare_avatar(default_portrait())


def test_measured_capacity_is_positive(engine):
    cost = engine.measure_cost(frames=10)
    assert 0 < cost < 5  # CPU-seconds per second of video; real time on one core needs < 1
    assert engine.capacity >= 1


async def test_open_session_streams_frames(engine):
    stream = pytest.importorskip("live_avatar.core.stream")
    avatar = engine.prepare_avatar(default_portrait())
    session = engine.open_session(avatar, config=stream.StreamConfig(buffered=True))
    assert isinstance(session, stream.StreamSession)
    try:
        t = np.arange(16000) / 16000
        session.push_audio((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
        session.end_of_speech()
        frames = 0
        async for chunk in session.chunks():
            assert chunk.frames.shape[1:] == (256, 256, 3)
            assert chunk.first_frame == frames
            frames += chunk.num_frames
            if frames >= 10:
                break
        assert frames >= 10
    finally:
        await session.close()
