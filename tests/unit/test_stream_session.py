"""StreamSession (the chunk runtime) driven with a fake, instrumented BlockGenerator."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from live_avatar.core.audio.timeline import block_window
from live_avatar.core.contract import AudioBlock, BlockGenerator
from live_avatar.core.stream import BufferFullError, StreamConfig, StreamSession, StreamSessionError
from live_avatar.core.stream.input_clock import LiveInputClock

SR, FPS, S = 16000, 25, 640


class FakeGenerator:
    """Records every block; frame k of the session is painted with value k % 256 in channel 0."""

    def __init__(self, block_frames=2, context=800, lookahead=480, delay_s=0.0, fail_on_block=None, bad_output=False):
        self.block_frames = block_frames
        self.context_samples = context
        self.lookahead_samples = lookahead
        self.delay_s = delay_s
        self.fail_on_block = fail_on_block
        self.bad_output = bad_output
        self.blocks: list[AudioBlock] = []
        self.resets: list[int] = []  # number of blocks generated before each reset
        self.threads: set[int] = set()
        self.closed = 0

    def generate(self, block: AudioBlock) -> np.ndarray:
        self.threads.add(threading.get_ident())
        if self.fail_on_block is not None and len(self.blocks) == self.fail_on_block:
            raise RuntimeError("boom: the model fell over")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.blocks.append(block)
        if self.bad_output:
            return np.zeros((block.num_frames, 4, 4), np.float32)
        frames = np.zeros((block.num_frames, 4, 4, 3), np.uint8)
        frames[..., 0] = ((block.first_frame + np.arange(block.num_frames)) % 256)[:, None, None]
        return frames

    def reset_motion_to_idle(self) -> None:
        self.threads.add(threading.get_ident())
        self.resets.append(len(self.blocks))

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def ramp(n: int, offset: int = 0) -> np.ndarray:
    """Non-zero samples whose value encodes their index."""
    return ((np.arange(n) + offset) % 1000 + 1).astype(np.float32) / 2000.0


def push_packets(session: StreamSession, samples: np.ndarray, t_first: float | None = None, packet: int = 320):
    for i in range(0, samples.shape[0], packet):
        t = None if t_first is None else t_first + (i + packet) / SR
        session.push_audio(samples[i : i + packet], t_arrival=t)


async def take(iterator, n: int, timeout: float = 3.0) -> list:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(iterator.__anext__(), timeout))
    return out


async def wait_for_stat(session, key, predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(session.stats()[key]):
            return session.stats()
        await asyncio.sleep(0.01)
    raise AssertionError(f"stats[{key!r}] never satisfied the condition: {session.stats()}")


def test_fake_generator_satisfies_the_contract():
    assert isinstance(FakeGenerator(), BlockGenerator)


async def test_buffered_chunks_are_in_order_with_exact_windows_and_audio():
    gen = FakeGenerator(block_frames=3, context=1000, lookahead=480)
    session = StreamSession(gen, config=StreamConfig(buffered=True))
    signal = ramp(16000)
    t_first = time.monotonic() - 1.0  # as if the packets arrived over the last second
    push_packets(session, signal, t_first=t_first)
    session.end_of_speech()
    it = session.chunks().__aiter__()
    chunks = await take(it, 9)  # 27 frames: past the end of the 25 frames of audio
    assert [c.first_frame for c in chunks] == list(range(0, 27, 3))
    padded = np.concatenate([signal, np.zeros(27 * S - signal.shape[0], np.float32)])
    for c, block in zip(chunks, gen.blocks, strict=True):
        assert c.num_frames == 3 and c.frames.dtype == np.uint8
        assert list(c.frames[:, 0, 0, 0]) == [c.first_frame, c.first_frame + 1, c.first_frame + 2]
        np.testing.assert_array_equal(c.audio, padded[c.first_frame * S : (c.first_frame + 3) * S])
        assert block.first_frame == c.first_frame and (block.context, block.lookahead) == (1000, 480)
        np.testing.assert_array_equal(block.samples, block_window(signal, block.first_frame, 3, S, 1000, 480))
        t = c.timings
        assert t.audio_ready_at <= t.started_at <= t.finished_at and t.compute_s >= 0
    # audio_ready_at is the arrival of the packet that completed the block's window
    assert chunks[0].timings.audio_ready_at == pytest.approx(t_first + (-(-(3 * S + 480) // 320) * 320) / SR)
    assert [b.end_of_speech for b in gen.blocks[:9]] == [False] * 8 + [True]
    stats = session.stats()
    assert stats["blocks"] >= 9 and stats["frames_skipped"] == 0 and stats["state"] == "running"
    await session.close()


async def test_live_windows_match_audio_that_arrives_on_time():
    gen = FakeGenerator(block_frames=2, context=800, lookahead=400)
    session = StreamSession(gen)
    t0 = time.monotonic()
    session.start(t0)
    signal = ramp(int(0.8 * SR))
    push_packets(session, signal, t_first=t0)  # every packet exactly on time (or early)
    it = session.chunks().__aiter__()
    chunks = await take(it, 9)
    for c in chunks:
        np.testing.assert_array_equal(c.audio, signal[c.first_frame * S : (c.first_frame + 2) * S])
    for block in gen.blocks[:9]:
        np.testing.assert_array_equal(block.samples, block_window(signal, block.first_frame, 2, S, 800, 400))
    stats = session.stats()
    assert stats["late_input_dropped_s"] == 0 and stats["padded_silence_s"] == 0
    await session.close()


async def test_live_input_late_within_the_jitter_allowance_is_kept():
    gen = FakeGenerator(block_frames=2, lookahead=480)
    session = StreamSession(gen, config=StreamConfig(input_jitter_s=0.3, playout_margin_s=0.3))
    t0 = time.monotonic()
    session.start(t0)
    signal = ramp(int(0.6 * SR))
    push_packets(session, signal[: int(0.3 * SR)], t_first=t0)
    await asyncio.sleep(t0 + 0.38 - time.monotonic())  # the next 0.3 s come late, in one burst
    push_packets(session, signal[int(0.3 * SR) :])
    it = session.chunks().__aiter__()
    chunks = await take(it, 6)  # frames 0..11 (0.48 s)
    for c in chunks:
        np.testing.assert_array_equal(c.audio, signal[c.first_frame * S : (c.first_frame + 2) * S])
    stats = session.stats()
    assert stats["padded_silence_s"] == 0 and stats["late_input_dropped_s"] == 0
    await session.close()


async def test_idle_blocks_keep_coming_at_real_time_pace_without_input():
    gen = FakeGenerator(block_frames=2, context=800, lookahead=480)
    config = StreamConfig(input_jitter_s=0.02)
    session = StreamSession(gen, config=config)
    t0 = time.monotonic()
    session.start(t0)
    it = session.chunks().__aiter__()
    chunks = []
    while time.monotonic() - t0 < 0.8:
        chunks.append(await asyncio.wait_for(it.__anext__(), 1.0))
    frames = sum(c.num_frames for c in chunks)
    assert 10 <= frames <= 26, f"{frames} idle frames in 0.8 s (real time is 20)"
    assert [c.first_frame for c in chunks] == list(range(0, frames, 2))
    for c in chunks:
        assert not c.audio.any() and not c.speech.any()
        # never ahead of real time: a block starts only once its window could have arrived
        assert c.timings.started_at >= t0 + ((c.first_frame + 2) * S + 480) / SR
    stats = session.stats()
    assert stats["idle_blocks"] == stats["blocks"] and stats["padded_silence_s"] > 0.3
    await session.close()


async def test_output_queue_is_bounded_and_pauses_the_worker():
    gen = FakeGenerator(block_frames=2)
    session = StreamSession(gen, config=StreamConfig(buffered=True, output_queue_chunks=3))
    push_packets(session, ramp(4 * SR))
    await wait_for_stat(session, "output_queue", lambda q: q == 3)
    await asyncio.sleep(0.2)
    stats = session.stats()
    assert stats["output_queue"] == 3 and stats["blocks"] == 3, "the worker must wait for the consumer"
    it = session.chunks().__aiter__()
    await take(it, 1)
    await wait_for_stat(session, "blocks", lambda b: b == 4)
    assert session.stats()["output_queue"] == 3
    await session.close()


async def test_buffered_audio_beyond_the_limit_is_a_clear_error():
    session = StreamSession(FakeGenerator(), config=StreamConfig(buffered=True, max_buffered_audio_s=1.0, output_queue_chunks=1))
    session.push_audio(np.zeros(int(0.8 * SR), np.float32))
    with pytest.raises(BufferFullError, match="limit is 1.0 s"):
        session.push_audio(np.zeros(int(0.5 * SR), np.float32))
    session.push_audio(np.zeros(int(0.1 * SR), np.float32))  # still within the limit: accepted
    assert session.stats()["state"] == "running"
    await session.close()


async def test_interrupt_drops_queue_and_pushed_audio_and_answers_position():
    gen = FakeGenerator(block_frames=2)
    session = StreamSession(gen, config=StreamConfig(buffered=True, output_queue_chunks=4))
    push_packets(session, ramp(4 * SR))
    it = session.chunks().__aiter__()
    first = await take(it, 3)  # frames 0..5 delivered
    for c in first:
        for k in range(c.first_frame, c.first_frame + c.num_frames):
            session.note_played(k)
    await wait_for_stat(session, "output_queue", lambda q: q == 4)
    position = session.interrupt()
    assert position == pytest.approx(6 / FPS)
    stats = session.stats()
    assert stats["output_queue"] == 0 and stats["chunks_dropped_by_interrupt"] == 4
    assert stats["input_backlog_s"] == 0, "pushed audio that was not generated is gone"
    after = await take(it, 1)
    assert after[0].first_frame == 6, "frames continue where delivery stopped"
    assert not after[0].audio.any()
    assert gen.resets == [7], "motion reset once, in the worker, before the next block"
    assert threading.get_ident() not in gen.threads
    # A new utterance pushed after the interrupt is played (after at most the queued idle blocks).
    reply = ramp(SR // 2, offset=500)
    push_packets(session, reply)
    for _ in range(20):
        c = (await take(it, 1))[0]
        if c.audio.any():
            break
    nonzero = np.flatnonzero(c.audio)
    assert c.audio[nonzero[0]] == reply[0]
    await session.close()


async def test_interrupt_resumes_right_after_the_last_frame_shown():
    # The consumer received frames 0..7 but showed only 0..3; it drops the rest on a barge-in.
    gen = FakeGenerator(block_frames=2)
    session = StreamSession(gen, config=StreamConfig(buffered=True, output_queue_chunks=2))
    signal = ramp(2 * SR)
    push_packets(session, signal)
    it = session.chunks().__aiter__()
    await take(it, 4)
    session.note_played(3)
    assert session.interrupt() == pytest.approx(4 / FPS)
    (after,) = await take(it, 1)
    assert after.first_frame == 4 and not after.audio.any()
    assert gen.blocks[-1].first_frame == 4
    # the context before the restart point is the audio that was really played
    np.testing.assert_array_equal(gen.blocks[-1].samples[:800], signal[4 * S - 800 : 4 * S])
    await session.close()


async def test_buffered_generation_stays_a_bounded_lead_ahead_of_playout():
    gen = FakeGenerator(block_frames=2)
    config = StreamConfig(buffered=True, buffered_lead_s=0.2, playout_margin_s=0.04, output_queue_chunks=50)
    session = StreamSession(gen, config=config)
    push_packets(session, ramp(5 * SR))  # a TTS producer far ahead of real time
    it = session.chunks().__aiter__()
    chunks = [await take(it, 1)]
    first_ready = chunks[0][0].timings.finished_at
    t_end = time.monotonic() + 0.6
    received = []
    while time.monotonic() < t_end:
        (c,) = await take(it, 1)
        received.append((time.monotonic(), c))
    for _t, c in received:
        due = first_ready + 0.04 + c.first_frame / FPS
        assert c.timings.started_at >= due - 0.2 - 1e-3, "started more than the lead before its playout"
    frames = 2 + sum(c.num_frames for _, c in received)
    assert frames >= 0.6 * FPS, "but it does keep up with real time"
    assert frames <= (received[-1][0] - first_ready + 0.04 + 0.2) * FPS + 2
    await session.close()


async def test_catch_up_when_the_generator_is_slower_than_real_time():
    gen = FakeGenerator(block_frames=2, delay_s=0.2)  # 0.2 s for 0.08 s of video
    margin = 0.05
    session = StreamSession(gen, config=StreamConfig(playout_margin_s=margin, input_jitter_s=0.02))
    session.start()
    it = session.chunks().__aiter__()
    chunks = await take(it, 7, timeout=2.0)
    starts = [c.first_frame for c in chunks]
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False)) and all(f % 2 == 0 for f in starts)
    first = chunks[0]
    lateness = [
        c.timings.finished_at - (first.timings.finished_at + margin + (c.first_frame - first.first_frame) / FPS)
        for c in chunks
    ]
    # Without catch-up the 7th block would be 6 * 0.12 s = 0.72 s late and growing.
    assert max(lateness) < 0.45, lateness
    stats = session.stats()
    assert stats["frames_skipped"] > 0
    assert stats["frames_generated"] + stats["frames_skipped"] == stats["next_frame"]
    assert stats["compute_ms_p50"] >= 200
    await session.close()


async def _live_slow_run(speech: np.ndarray, config: StreamConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    """A generator 12 % slower than real time (4-frame blocks of 160 ms in 180 ms), fed live in real
    time with [pause | speech | pause | speech | pause]; returns the stats, which frames were
    generated, and which frames hold speech."""
    gen = FakeGenerator(block_frames=4, delay_s=0.18)
    pause = np.zeros(int(0.8 * SR), np.float32)
    program = np.concatenate([pause, speech[: int(1.6 * SR)], pause, speech[int(1.6 * SR): int(3.2 * SR)], pause])
    frames = program.size // S
    loud = np.sqrt(np.mean(program[: frames * S].reshape(frames, S) ** 2, axis=1)) > 0.01
    session = StreamSession(gen, config=config)
    t0 = time.monotonic()
    session.start(t0)
    it = session.chunks().__aiter__()

    async def consume() -> None:
        async for _ in it:
            pass

    consumer = asyncio.create_task(consume())
    for i in range(0, program.size, 320):  # 20 ms packets, each pushed when it would arrive
        await asyncio.sleep(max(0.0, t0 + (i + 320) / SR - time.monotonic()))
        session.push_audio(program[i : i + 320], t_arrival=time.monotonic())
    await asyncio.sleep(0.4)
    stats = session.stats()
    await session.close()
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    generated = np.zeros(frames, bool)
    for block in gen.blocks:
        generated[block.first_frame : block.first_frame + block.num_frames] = True
    return stats, generated[: stats["next_frame"]], loud[: stats["next_frame"]]


async def test_a_late_live_worker_loses_pauses_not_words(speech_16k):
    """Slower than real time, the catch-up would skip whatever block comes when a block late; with
    silence_skip_late_s a silent block is skipped as soon as it would be that late, so the speech is
    generated."""
    config = StreamConfig(playout_margin_s=0.05, input_jitter_s=0.02, silence_skip_late_s=0.04)
    assert StreamConfig().silence_skip_late_s == 0.12  # the default: a quarter of a 12-frame block
    stats, generated, loud = await _live_slow_run(speech_16k, config)
    assert stats["silent_frames_skipped"] > 0, stats
    assert stats["frames_generated"] + stats["frames_skipped"] == stats["next_frame"]
    speech_lost = (loud & ~generated).sum() / loud.sum()
    assert speech_lost <= 0.1, (speech_lost, stats)
    assert not generated[~loud].all(), "pauses were skipped"

    # off: nothing is skipped for being silent; the whole-block catch-up skips speech too
    off = StreamConfig(playout_margin_s=0.05, input_jitter_s=0.02, silence_skip_late_s=None)
    stats_off, generated_off, loud_off = await _live_slow_run(speech_16k, off)
    assert stats_off["silent_frames_skipped"] == 0 and stats_off["frames_skipped"] > 0
    assert (loud_off & ~generated_off).sum() > (loud & ~generated).sum(), "more speech lost without it"


async def test_live_backlog_is_bounded_when_the_consumer_stalls():
    gen = FakeGenerator(block_frames=2)
    config = StreamConfig(output_queue_chunks=2, max_live_backlog_s=0.3)
    session = StreamSession(gen, config=config)
    t0 = time.monotonic()
    session.start(t0)
    signal = ramp(2 * SR)
    push_packets(session, signal[: SR // 5], t_first=t0)
    await wait_for_stat(session, "output_queue", lambda q: q == 2)  # frames 0..3, then the consumer stalls
    push_packets(session, signal[SR // 5 :], t_first=t0 + 0.2)
    # the worker (paused by the full queue) still trims the backlog to its bound
    stats = await wait_for_stat(session, "input_backlog_s", lambda s: s <= 0.3 + 0.08)
    assert stats["frames_skipped"] > 0 and stats["output_queue"] == 2
    it = session.chunks().__aiter__()
    chunks = await take(it, 3)
    assert [c.first_frame for c in chunks[:2]] == [0, 2]
    assert chunks[2].first_frame > 4, "after the stall the session jumped to recent audio"
    await session.close()


async def test_speech_onset_arrival_is_reported_on_the_chunk_that_shows_it(speech_16k):
    gen = FakeGenerator(block_frames=4)
    session = StreamSession(gen, config=StreamConfig(buffered=True, buffered_lead_s=5.0))
    samples = np.concatenate([np.zeros(SR, np.float32), speech_16k[: 2 * SR]])  # speech starts at 1.0 s
    t_first = time.monotonic()
    push_packets(session, samples, t_first=t_first)
    it = session.chunks().__aiter__()
    chunks = await take(it, 18)  # frames 0..71, all within the pushed audio
    with_onset = [c for c in chunks if c.speech_onset_arrivals]
    assert len(with_onset) == 1
    (arrival,) = with_onset[0].speech_onset_arrivals
    assert 1.0 <= arrival - t_first <= 1.1, "the packet where speech starts arrived ~1.0 s after the first"
    assert with_onset[0].first_frame <= 27 < with_onset[0].first_frame + 4 or with_onset[0].first_frame == 24
    (offset,) = with_onset[0].speech_onset_offsets  # the onset's own frame in the block
    assert 25 <= with_onset[0].first_frame + offset <= 27, "speech starts at 1.0 s: frame 25"
    assert with_onset[0].onsets_at(offset) == [arrival]
    speech = np.concatenate([c.speech for c in chunks])
    assert not speech[:24].any() and speech[28:60].mean() > 0.8
    assert session.stats()["speech_onsets"] == 1
    await session.close()


async def test_live_interrupt_reissues_the_onset_of_regenerated_speech(speech_16k):
    gen = FakeGenerator(block_frames=2)
    session = StreamSession(gen, config=StreamConfig(output_queue_chunks=40))
    t0 = time.monotonic()
    session.start(t0)
    samples = np.concatenate([np.zeros(SR, np.float32), speech_16k[:SR]])  # speech from frame 25
    push_packets(session, samples, t_first=t0)
    await wait_for_stat(session, "next_frame", lambda f: f >= 40)
    it = session.chunks().__aiter__()
    shown = await take(it, 10)  # frames 0..19, no onset among them
    assert not any(c.speech_onset_arrivals for c in shown)
    session.note_played(19)
    session.interrupt()  # the queued chunk holding the onset is dropped...
    again = await take(it, 8)  # ...and frames 20..35 are generated again from the same audio
    assert again[0].first_frame == 20
    with_onset = [c for c in again if c.speech_onset_arrivals]
    assert len(with_onset) == 1 and 24 <= with_onset[0].first_frame <= 28
    assert 1.0 <= with_onset[0].speech_onset_arrivals[0] - t0 <= 1.1
    await session.close()


async def test_buffered_reply_after_an_interrupt_is_a_new_onset(speech_16k):
    gen = FakeGenerator(block_frames=2)
    session = StreamSession(gen, config=StreamConfig(buffered=True, buffered_lead_s=5.0))
    session.push_audio(speech_16k[: 2 * SR])  # speech from the first frame: an onset at once
    it = session.chunks().__aiter__()
    first = await take(it, 15)  # 1.2 s, mid-speech
    assert sum(len(c.speech_onset_arrivals) for c in first) == 1
    session.note_played(29)
    session.interrupt()  # barge-in in the middle of a word
    t_reply = time.monotonic()
    session.push_audio(speech_16k[: SR], t_arrival=t_reply)  # the agent's next reply
    after = await take(it, 12)  # frames 30..53: all within the reply
    arrivals = [a for c in after for a in c.speech_onset_arrivals]
    assert arrivals == [t_reply], "the reply starts a new utterance"
    await session.close()


async def test_end_of_speech_generates_the_last_block_without_waiting():
    gen = FakeGenerator(block_frames=2, lookahead=480)
    session = StreamSession(gen, config=StreamConfig(buffered=True, input_jitter_s=0.2))
    t0 = time.monotonic()
    session.push_audio(ramp(8000), t_arrival=t0)  # 12.5 frames
    session.end_of_speech()
    it = session.chunks().__aiter__()
    chunks = await take(it, 6)
    waited = time.monotonic() - t0
    # The block of frames 10-11 holds the end of the audio in its lookahead window. Without the
    # hint it would wait for its deadline: (12*640 + 480) / 16000 + 0.2 s = 0.71 s.
    assert chunks[-1].first_frame == 10 and waited < 0.4, waited
    assert [b.end_of_speech for b in gen.blocks[:6]] == [False] * 5 + [True]
    np.testing.assert_array_equal(gen.blocks[5].samples[-(12 * S + 480 - 8000) :], 0)
    nxt = await take(it, 1)
    np.testing.assert_array_equal(nxt[0].audio[:320], ramp(8000)[7680:])
    assert not nxt[0].audio[320:].any()
    await session.close()


async def test_generator_error_ends_the_session_visibly(caplog):
    gen = FakeGenerator(fail_on_block=2)
    session = StreamSession(gen, config=StreamConfig(buffered=True))
    push_packets(session, ramp(SR))
    it = session.chunks().__aiter__()
    with caplog.at_level(logging.ERROR):
        assert len(await take(it, 2)) == 2
        with pytest.raises(StreamSessionError, match="boom"):
            await asyncio.wait_for(it.__anext__(), 3.0)
    stats = session.stats()
    assert stats["state"] == "error" and "boom" in stats["error"]
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records), "traceback logged"
    session.push_audio(np.zeros(320, np.float32))  # ignored, no hang, no raise
    t = time.monotonic()
    await session.close()
    assert time.monotonic() - t < 1.0 and gen.closed == 1 and not session.worker_alive


async def test_malformed_generator_output_is_an_error_not_a_crash():
    session = StreamSession(FakeGenerator(bad_output=True), config=StreamConfig(buffered=True))
    session.push_audio(ramp(4000))
    it = session.chunks().__aiter__()
    with pytest.raises(StreamSessionError, match=r"uint8 \[N, H, W, 3\]"):
        await asyncio.wait_for(it.__anext__(), 3.0)
    await session.close()


async def test_close_stops_the_worker_and_ends_chunks():
    gen = FakeGenerator()
    session = StreamSession(gen, config=StreamConfig(input_jitter_s=0.0))
    session.start()
    it = session.chunks().__aiter__()
    waiter = asyncio.ensure_future(take(it, 5, timeout=5.0))
    await asyncio.sleep(0.15)
    assert session.worker_alive
    await session.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 1.0)
    assert not session.worker_alive and session.state == "closed" and gen.closed == 1
    await session.close()  # idempotent
    assert gen.closed == 1
    session.push_audio(np.zeros(320, np.float32))  # a producer racing close(): ignored
    assert session.stats()["state"] == "closed"


async def test_close_without_start_closes_the_generator():
    gen = FakeGenerator()
    session = StreamSession(gen)
    await session.close()
    assert gen.closed == 1 and not session.worker_alive


def test_bad_input_is_rejected_clearly():
    session = StreamSession(FakeGenerator())
    with pytest.raises(ValueError, match="float"):
        session.push_audio(np.zeros(320, np.int16))
    with pytest.raises(ValueError, match="1-D"):
        session.push_audio(np.zeros((320, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        session.push_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="monotonic"):
        session.push_audio(np.zeros(320, np.float32), t_arrival=time.time())
    assert not session.worker_alive, "rejected input does not start the session"
    with pytest.raises(ValueError, match="block_frames"):
        StreamSession(FakeGenerator(block_frames=0))
    with pytest.raises(ValueError, match="multiple of fps"):
        StreamSession(FakeGenerator(), fps=24, sample_rate=16000)
    with pytest.raises(ValueError, match="output_queue_chunks"):
        StreamConfig(output_queue_chunks=0)


def test_stream_config_from_a_yaml_section():
    config = StreamConfig.from_dict({"buffered": True, "playout_margin_s": 0.08, "vad": {"min_silence_s": 0.3}})
    assert config.buffered and config.playout_margin_s == 0.08 and config.vad.min_silence_s == 0.3
    assert StreamConfig.from_dict(None) == StreamConfig()
    with pytest.raises(ValueError, match="stream options: unknown key.s. bufferd"):
        StreamConfig.from_dict({"bufferd": True})
    with pytest.raises(ValueError, match="stream options: vad: unknown key.s. snr"):
        StreamConfig.from_dict({"vad": {"snr": 3}})


def test_live_input_clock_drops_only_what_silence_replaced():
    clock = LiveInputClock(SR)
    clock.anchor(10.0)
    # on time: packet [0, 320) arrives at 10.02
    assert clock.samples_to_drop(0, 320, 10.02) == 0
    # input stalls; at a deadline the runtime pads 1600 samples (100 ms) of silence
    clock.note_padding(1600)
    # the late packet [320, 640) arrives at 10.12, when the timeline is already at 1920: dropped
    cursor = 320 + 1600
    assert clock.samples_to_drop(cursor, 320, 10.12) == 320
    # a packet arriving on time after the gap is kept
    assert clock.samples_to_drop(cursor, 320, 10.14) == 0
    # a mic pause: 1 s padded, the speaker resumes on time -> nothing dropped, debt forgotten
    clock.note_padding(16000)
    assert clock.samples_to_drop(cursor + 16000, 320, 10.0 + (cursor + 16000 + 320) / SR) == 0
    # a packet earlier than the model (late anchor) moves the anchor, nothing dropped
    t0 = clock.t0
    assert clock.samples_to_drop(40000, 320, 10.0 + 40000 / SR) == 0
    assert clock.t0 == pytest.approx(t0 - 320 / SR)


class PartsGenerator(FakeGenerator):
    """Makes each block in parts of ``part`` frames (as liveavatar's VAE decodes a latent frame at a time);
    waits for ``release`` before each part after the first of a block."""

    def __init__(self, part: int, **kwargs):
        super().__init__(**kwargs)
        self.part = part
        self.release = threading.Event()
        self.parts_made: list[tuple[int, int]] = []  # (first frame, frames) in the order made

    def generate_parts(self, block: AudioBlock):
        whole = self.generate(block)
        for a in range(0, block.num_frames, self.part):
            if a:
                assert self.release.wait(5.0), "the test never released the rest of the block"
            self.parts_made.append((block.first_frame + a, min(self.part, block.num_frames - a)))
            yield whole[a : a + self.part]


async def test_a_block_made_in_parts_goes_out_part_by_part_with_its_own_audio_and_onsets(speech_16k):
    gen = PartsGenerator(part=4, block_frames=12, context=800, lookahead=480)
    session = StreamSession(gen, config=StreamConfig(buffered=True, buffered_lead_s=5.0))
    samples = np.concatenate([np.zeros(SR, np.float32), speech_16k[: 2 * SR]])  # speech starts at 1.0 s: frame 25
    push_packets(session, samples, t_first=time.monotonic())
    it = session.chunks().__aiter__()
    (first,) = await take(it, 1)
    # the block's first part is out while its generator still waits to make the second
    assert (first.first_frame, first.num_frames, first.ends_block) == (0, 4, False) and gen.parts_made == [(0, 4)]
    gen.release.set()
    chunks = [first, *await take(it, 8)]  # frames 0..35: three blocks
    assert [(c.first_frame, c.num_frames) for c in chunks] == [(f, 4) for f in range(0, 36, 4)]
    assert [c.ends_block for c in chunks] == [False, False, True] * 3
    for c in chunks:
        assert list(c.frames[:, 0, 0, 0]) == list(range(c.first_frame, c.first_frame + 4))
        np.testing.assert_array_equal(c.audio, samples[c.first_frame * S : (c.first_frame + 4) * S])
    # the onset goes with the part that shows its frame, at its offset in that part
    (shown,) = [c for c in chunks if c.speech_onset_arrivals]
    (offset,) = shown.speech_onset_offsets
    assert 25 <= shown.first_frame + offset <= 27 and 0 <= offset < 4
    # the block's compute is counted once, with its last part
    stats = session.stats()
    assert stats["blocks"] >= 3 and stats["frames_skipped"] == 0
    await session.close()


async def test_parts_that_overrun_the_block_end_the_session_with_a_clear_error():
    class Overrun(PartsGenerator):
        def generate_parts(self, block):
            whole = self.generate(block)
            yield whole
            yield whole[:1]  # one frame too many

    session = StreamSession(Overrun(part=2, block_frames=2), config=StreamConfig(buffered=True))
    session.push_audio(np.zeros(SR, np.float32))
    with pytest.raises(StreamSessionError):
        async for _ in session.chunks():
            pass
    assert "generate_parts() gave 1 frames at frame 2 of a block of 2" in session.stats()["error"]
    await session.close()


async def test_the_schedule_plans_with_the_time_to_a_blocks_first_part():
    """Lateness (the silence skip), catch-up and the buffered lead are about when a block's first frames
    can be shown: for a block made in parts that is its first part, not its last; the stats keep the
    whole block's time."""

    class SlowRest(PartsGenerator):
        def generate_parts(self, block):
            for k, part in enumerate(super().generate_parts(block)):
                if k:
                    time.sleep(0.08)  # the later parts take the block's time
                yield part

    gen = SlowRest(part=2, block_frames=6, context=800, lookahead=480)
    gen.release.set()
    session = StreamSession(gen, config=StreamConfig(buffered=True, buffered_lead_s=5.0))
    push_packets(session, ramp(SR), t_first=time.monotonic())
    it = session.chunks().__aiter__()
    await take(it, 9)  # three blocks of three parts
    assert session._schedule.expected_compute() < 0.05
    stats = session.stats()
    assert stats["compute_ms_p50"] >= 150  # two parts at 80 ms each
    assert stats["first_out_ms_p50"] < 50  # the first part goes out before the sleeps
    await session.close()
