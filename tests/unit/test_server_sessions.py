"""Session admission: max_sessions and engine capacity refuse with a reason; a refused or failed
open leaves nothing behind."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from live_avatar.core.contract import EngineBusyError
from live_avatar.core.stream import StreamSession
from live_avatar.server.config import SessionConfig
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.sessions import CapacityError, SessionManager


class StillGenerator:
    block_frames, context_samples, lookahead_samples = 1, 0, 0

    def generate(self, block):
        return np.zeros((block.num_frames, 8, 8, 3), np.uint8)

    def reset_motion_to_idle(self): ...
    def state_dict(self): return {}
    def load_state_dict(self, state): ...
    def close(self): ...


class StubEngine:
    name = "stub"

    def __init__(self, capacity: int, busy: bool = False) -> None:
        self.capacity = capacity
        self.busy = busy

    def open_session(self, avatar, prompt=None, **options):
        if self.busy:
            raise EngineBusyError("the GPU is busy")
        return StreamSession(StillGenerator(), config=options.pop("config", None))


def manager(engine, max_sessions: int = 4) -> tuple[SessionManager, ServerMetrics]:
    metrics = ServerMetrics()
    return SessionManager(engine, SessionConfig(max_sessions=max_sessions), metrics), metrics


async def test_engine_capacity_is_a_limit_with_a_reason() -> None:
    sessions, metrics = manager(StubEngine(capacity=1))
    first = await sessions.create(None, None)
    assert sessions.limit == 1 and len(sessions) == 1
    with pytest.raises(CapacityError, match="stub engine is at capacity"):
        await sessions.create(None, None)
    assert metrics.sessions_refused._value.get() == 1
    await first.close("test over")
    assert len(sessions) == 0  # closing frees the place
    second = await sessions.create(None, None)
    await second.close("test over")


async def test_max_sessions_is_a_limit_with_a_reason() -> None:
    sessions, _ = manager(StubEngine(capacity=10), max_sessions=1)
    first = await sessions.create(None, None)
    with pytest.raises(CapacityError, match="max_sessions=1"):
        await sessions.create(None, None)
    await first.close("test over")


async def test_engine_busy_becomes_a_capacity_refusal_and_nothing_is_registered() -> None:
    sessions, metrics = manager(StubEngine(capacity=10, busy=True))
    with pytest.raises(CapacityError, match="GPU is busy"):
        await sessions.create(None, None)
    assert len(sessions) == 0 and sessions._opening == 0
    assert metrics.active_sessions._value.get() == 0


async def test_active_sessions_gauge_follows_the_sessions() -> None:
    sessions, metrics = manager(StubEngine(capacity=10))
    a = await sessions.create(None, None)
    b = await sessions.create(None, None)
    assert metrics.active_sessions._value.get() == 2
    await a.close("done")
    assert metrics.active_sessions._value.get() == 1
    await sessions.close_all()
    assert metrics.active_sessions._value.get() == 0 and b.closed


class _SilentTrack:
    """An audio track that never delivers a packet (the peer went away without a BYE)."""

    kind = "audio"

    async def recv(self):
        await asyncio.sleep(3600)


class _EndedTrack:
    kind = "audio"

    async def recv(self):
        from aiortc.mediastreams import MediaStreamError

        raise MediaStreamError


@pytest.mark.parametrize(
    ("track", "reason"), [(_SilentTrack(), "no audio from the peer for 0.05 s"), (_EndedTrack(), "peer audio track ended")]
)
async def test_a_silent_or_ended_audio_track_closes_the_session(track, reason) -> None:
    sessions, _ = manager(StubEngine(capacity=4))
    sessions._config.idle_timeout_s = 0.05
    session = await sessions.create(avatar=None, prompt=None)
    session.attach_audio_track(track)
    for _ in range(100):
        if session.closed:
            break
        await asyncio.sleep(0.01)
    assert session.closed and session.close_reason == reason
    assert len(sessions) == 0


class _CountingTrack:
    """A video track the session does not use: three frames, then the end."""

    kind = "video"

    def __init__(self) -> None:
        self.left = 3

    async def recv(self):
        from aiortc.mediastreams import MediaStreamError

        if self.left == 0:
            raise MediaStreamError
        self.left -= 1
        return object()


async def test_an_unused_track_is_drained_without_ending_the_session() -> None:
    sessions, _ = manager(StubEngine(capacity=4))
    session = await sessions.create(avatar=None, prompt=None)
    track = _CountingTrack()
    session.discard_track(track)
    for _ in range(100):
        if track.left == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert track.left == 0 and not session.closed
    await session.close()


async def test_the_runtime_schedules_for_the_configured_playout_delay() -> None:
    metrics = ServerMetrics()
    sessions = SessionManager(StubEngine(capacity=4), SessionConfig(playout_delay_ms=120), metrics)
    session = await sessions.create(avatar=None, prompt=None)
    assert session.stream.config.playout_margin_s == pytest.approx(0.12)
    await session.close()
