"""StreamSession over a generator that pipelines (submit()/collect(), as liveavatar over --num_gpus_dit N):
blocks go in as soon as their audio is there, frames come out in order, and a pipe whose blocks take
longer than their own duration still keeps up with real time when its throughput does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest

from live_avatar.core.contract import AudioBlock
from live_avatar.core.stream import StreamConfig, StreamSession, StreamSessionError
from tests.unit.test_stream_session import FPS, SR, FakeGenerator, push_packets, ramp, take


class FakePipe:
    """A pipe whose blocks come out ``latency_s`` after they went in, at most one every ``interval_s``;
    frame k is painted k % 256 (FakeGenerator's frames)."""

    def __init__(self, block_frames=6, latency_s=0.5, interval_s=0.08, depth=4, fail_on_collect=None):
        self.block_frames = block_frames
        self.context_samples, self.lookahead_samples = 800, 480
        self.latency_s, self.interval_s = latency_s, interval_s
        self.pipeline_depth = depth
        self.fail_on_collect = fail_on_collect
        self._paint = FakeGenerator(block_frames=block_frames)
        self._queue: deque[tuple[AudioBlock, float]] = deque()
        self._last_out = 0.0
        self._lock = threading.Lock()
        self.submitted: list[AudioBlock] = []
        self.collected = 0
        self.block_cost_s: float | None = None  # its busiest stage's time on the last collected block
        self.in_pipe_max = 0
        self.submit_threads: set[int] = set()
        self.collect_threads: set[int] = set()
        self.closed = 0

    def submit(self, block: AudioBlock) -> None:
        self.submit_threads.add(threading.get_ident())
        with self._lock:
            ready = max(time.monotonic() + self.latency_s, self._last_out + self.interval_s)
            self._last_out = ready
            self._queue.append((block, ready))
            self.submitted.append(block)
            self.in_pipe_max = max(self.in_pipe_max, len(self._queue))

    def collect(self) -> np.ndarray:
        self.collect_threads.add(threading.get_ident())
        with self._lock:
            block, ready = self._queue.popleft()
        if self.fail_on_collect is not None and self.collected == self.fail_on_collect:
            raise RuntimeError("boom: a rank fell over")
        time.sleep(max(0.0, ready - time.monotonic()))
        self.collected += 1
        self.block_cost_s = self.interval_s
        return self._paint.generate(block)

    def generate(self, block: AudioBlock) -> np.ndarray:
        self.submit(block)
        return self.collect()

    def reset_motion_to_idle(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


async def _speak_in_real_time(session: StreamSession, seconds: float) -> None:
    samples, t0, packet = ramp(int(seconds * SR)), time.monotonic(), 320
    for i in range(0, samples.size, packet):
        await asyncio.sleep(max(0.0, t0 + i / SR - time.monotonic()))
        session.push_audio(samples[i : i + packet])


async def _live_run(pipe: FakePipe, config: StreamConfig, seconds: float = 2.4) -> tuple[list, dict]:
    session = StreamSession(pipe, config=config)
    it = session.chunks().__aiter__()
    speaker = asyncio.ensure_future(_speak_in_real_time(session, seconds))
    chunks = []
    try:
        deadline = time.monotonic() + seconds + 3.0
        while time.monotonic() < deadline and (not chunks or chunks[-1].first_frame < seconds * FPS - 3 * pipe.block_frames):
            chunks += await take(it, 1, timeout=3.0)
        return chunks, session.stats()
    finally:
        speaker.cancel()
        await session.close()


async def test_a_pipe_slower_than_a_block_but_fast_enough_in_throughput_keeps_up_live():
    config = StreamConfig(playout_margin_s=0.04)
    chunks, stats = await _live_run(FakePipe(), config)
    starts = [c.first_frame for c in chunks]
    assert starts == list(range(0, starts[-1] + 1, 6)), starts  # in order, none skipped
    assert stats["frames_skipped"] == 0, stats
    assert stats["max_blocks_in_flight"] == 4 and stats["blocks_in_flight_max"] >= 2, stats
    for c in chunks:  # the right frames for the right audio
        assert np.array_equal(c.frames[:, 0, 0, 0], (c.first_frame + np.arange(6)) % 256)
    # a block's cost to the real-time budget is what its busiest stage spent (the pipe says), not its 0.5 s trip
    assert [c.timings.compute_s for c in chunks] == [0.08] * len(chunks)
    assert stats["compute_ms_p50"] >= 500  # how long a block takes to come out: the catch-up's estimate

    # the same pipe one block at a time: each block takes 0.5 s for 0.24 s of video, so whole blocks go
    chunks, stats = await _live_run(FakePipe(), StreamConfig(playout_margin_s=0.04, max_blocks_in_flight=1))
    assert stats["frames_skipped"] > 0 and stats["blocks_in_flight_max"] == 0, stats


async def test_submit_and_collect_run_on_two_threads_and_close_does_not_wait_for_the_pipe():
    pipe = FakePipe(latency_s=0.6, interval_s=0.05)
    session = StreamSession(pipe, config=StreamConfig(buffered=True))
    push_packets(session, ramp(SR * 3))
    it = session.chunks().__aiter__()
    await take(it, 2, timeout=3.0)
    assert len(pipe.submit_threads) == len(pipe.collect_threads) == 1 and pipe.submit_threads != pipe.collect_threads
    started = time.monotonic()
    await session.close()
    assert time.monotonic() - started < 1.5
    assert pipe.closed == 1 and not session.worker_alive


async def test_interrupt_drops_the_blocks_in_flight_and_resumes_after_the_last_frame_shown():
    pipe = FakePipe(latency_s=0.3, interval_s=0.02)
    session = StreamSession(pipe, config=StreamConfig(buffered=True, buffered_lead_s=1.0))
    push_packets(session, ramp(SR * 4))
    it = session.chunks().__aiter__()
    first = await take(it, 2, timeout=3.0)
    await asyncio.sleep(0.1)  # more blocks went into the pipe meanwhile
    shown = first[-1].first_frame + pipe.block_frames - 1
    session.note_played(shown)
    assert len(pipe.submitted) > 2
    session.interrupt()
    push_packets(session, ramp(SR, offset=7))
    after = await take(it, 2, timeout=3.0)
    assert [c.first_frame for c in after] == [shown + 1, shown + 1 + pipe.block_frames]
    await session.close()


async def test_a_failing_collect_ends_the_session_visibly(caplog):
    pipe = FakePipe(latency_s=0.1, interval_s=0.02, fail_on_collect=2)
    session = StreamSession(pipe, config=StreamConfig(buffered=True))
    push_packets(session, ramp(SR * 2))
    it = session.chunks().__aiter__()
    await take(it, 2, timeout=3.0)
    with pytest.raises(StreamSessionError, match="a rank fell over"):
        await take(it, 1, timeout=3.0)
    assert session.state == "error"
    await session.close()
    assert pipe.closed == 1


def test_blocks_in_flight_need_a_generator_that_pipelines():
    with pytest.raises(ValueError, match="submit"):
        StreamSession(FakeGenerator(), config=StreamConfig(max_blocks_in_flight=2))
    with pytest.raises(ValueError, match="max_blocks_in_flight"):
        StreamConfig(max_blocks_in_flight=0)
    assert StreamSession(FakeGenerator()).stats()["max_blocks_in_flight"] == 1
