"""Full-band voice and the adaptive playout margin: the chunks carry the
producer's own 48 kHz speech sample-locked to the engine's 16 kHz copy; the playout moves its
slots (in silence) until the low tail of the frames' slack sits at its target."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from live_avatar.core.audio.full_band import FullBandIngest
from live_avatar.core.stream import StreamConfig, StreamSession
from live_avatar.server.media.margin import MarginControl
from tests.unit.test_stream_session import FakeGenerator, take

SR, FPS, S = 16000, 25, 640


def _frame_48k(samples: np.ndarray, layout: str = "mono") -> av.AudioFrame:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    if layout == "stereo":
        pcm = np.repeat(pcm, 2)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_full_band_ingest_pairs_three_48k_samples_with_each_16k_one(layout):
    ingest = FullBandIngest(16000, 48000)
    t = np.arange(48000 * 2) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 10000 * t) + 0.3 * np.sin(2 * np.pi * 440 * t)
    lows, fulls = [], []
    for i in range(0, tone.size, 960):
        low, full = ingest.push_frame(_frame_48k(tone[i : i + 960], layout))
        assert full.size == 3 * low.size
        lows.append(low)
        fulls.append(full)
    low, full = np.concatenate(lows), np.concatenate(fulls)
    spectrum = np.abs(np.fft.rfft(full[24000:72000]))
    freqs = np.fft.rfftfreq(48000, 1 / 48000)
    # the full-band copy is the input: the 10 kHz tone is there at its level (the 16 kHz one cannot hold it)
    assert spectrum[np.argmin(abs(freqs - 10000))] > 0.8 * spectrum[np.argmin(abs(freqs - 440))]
    # and it is the same moment as the 16 kHz copy: the 440 Hz part lines up within 2 ms
    low_440 = np.interp(np.arange(full.size) / 3, np.arange(low.size), low)
    lag = _best_lag(_lowpass(full), _lowpass(low_440), 96)
    assert abs(lag) <= 96


def _lowpass(x: np.ndarray) -> np.ndarray:
    return np.convolve(x, np.ones(48) / 48, "same")[24000:36000]


def _best_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    best = max(range(-max_lag, max_lag + 1), key=lambda k: float(np.dot(a[max_lag:-max_lag], np.roll(b, k)[max_lag:-max_lag])))
    return best


async def test_chunks_carry_the_full_band_copy_of_their_own_frames():
    gen = FakeGenerator(block_frames=1, context=160, lookahead=0)
    session = StreamSession(gen, config=StreamConfig(buffered=True))
    n = 10 * S
    low = (np.arange(n) % 1000 + 1).astype(np.float32) / 2000.0
    full = np.repeat(low, 3) + 0.001 * np.tile(np.array([1, -1, 0], np.float32), n)  # full band has its own detail
    for i in range(0, n, 320):
        session.push_audio(low[i : i + 320], full_band=full[3 * i : 3 * (i + 320)])
    session.end_of_speech()
    chunks = await take(session.chunks(), 10)
    for c in chunks:
        k = c.first_frame
        assert c.full_band_rate == 48000
        np.testing.assert_array_equal(c.full_band_audio, full[3 * k * S : 3 * (k + 1) * S])
        np.testing.assert_array_equal(c.audio, low[k * S : (k + 1) * S])
    await session.close()


def test_full_band_of_the_wrong_length_is_refused():
    session = StreamSession(FakeGenerator(block_frames=1, context=0, lookahead=0))
    with pytest.raises(ValueError, match="full_band"):
        session.push_audio(np.zeros(320, np.float32), full_band=np.zeros(959, np.float32))


def test_margin_control_moves_the_slots_towards_the_target_only_in_silence():
    def control():
        return MarginControl(min_margin_s=0.012, quantile=0.05, window=25, quiet_slots=8, max_step_s=0.01)

    c = control()
    # 40 ms of slack while speaking: no move, however long
    assert not any(c.observe(0.040, quiet=False) for _ in range(100))
    moves = [c.observe(0.040, quiet=True) for _ in range(30)]
    assert [m for m in moves if m] == [pytest.approx(-0.010)]  # earlier, by the step bound
    c = control()
    moves = [c.observe(0.005, quiet=True) for _ in range(25)]
    assert [m for m in moves if m] == [pytest.approx(0.007)]  # too little slack: later, by what is missing
    c = control()
    assert not any(c.observe(0.012 + 0.001 * (i % 2), quiet=True) for i in range(60))  # on target: nothing
    c = control()
    moves = [c.observe(0.030 if i % 10 else -0.04, quiet=True) for i in range(25)]  # repeats in the window
    assert [m for m in moves if m] == [pytest.approx(0.010)]


def test_playout_slots_follow_the_jitter_in_silence():
    """A playout fed quiet frames that are ready 40 ms before their slots (with 0-6 ms of jitter)
    moves its slots earlier until the low tail of the slack is near the 12 ms target; the clock's
    slots move by what the control reports (the stream hears of it from the slots frames go out in).
    Simulated time: each frame is ready 1/fps after the previous one."""
    from live_avatar.core.contract import BlockTimings, Chunk
    from live_avatar.server.media.clock import MediaClock
    from live_avatar.server.media.fanout import Fanout
    from live_avatar.server.media.playout import Playout

    now = [1000.0]
    clock = MediaClock(fps=FPS, now=lambda: now[0])
    playout = Playout(clock, Fanout(), lambda a: np.zeros(a.size * 3, np.int16), playout_delay_s=0.04,
                      max_buffered_frames=50, margin=MarginControl(min_margin_s=0.012, window=10, quiet_slots=3))
    rng = np.random.default_rng(0)
    frame = np.zeros((1, 8, 8, 3), np.uint8)
    ready = [1000.0 + (k + 1) / FPS + float(rng.uniform(0, 0.006)) for k in range(200)]
    k = slot = 0
    waits = []
    while slot < 190:
        due = clock.video_slot_time(slot) if clock.started else float("inf")
        if k < len(ready) and ready[k] <= due:  # the next event is a frame being ready
            now[0] = ready[k]
            playout.add_chunk(Chunk(frame, np.zeros(S, np.float32), k, np.zeros(1, bool),
                                    BlockTimings(now[0], now[0], now[0], 0.0)), now[0])
            k += 1
            continue
        now[0] = due
        playout._emit(slot, due)
        waits.append(due - ready[min(slot, len(ready) - 1)])
        slot += 1
    stats = playout.margin.stats(0.04)
    assert clock.t0 - (playout.first_chunk_at + 0.04) == pytest.approx(stats["slots_moved_ms"] / 1000.0)
    assert -35 < stats["slots_moved_ms"] < -20  # most of the ~30 ms surplus gone, not more
    assert playout.counters.frames_repeated == 0
    assert 0.010 < np.median(waits[-20:]) < 0.025  # frames now wait ~12-20 ms for their slot, not 40


async def _sleep_until(t: float) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, t - time.monotonic()))



def test_full_band_ingest_takes_pcm_at_other_rates_too():
    ingest = FullBandIngest(16000, 48000)
    t = np.arange(24000) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 9000 * t) * 32767).astype("<i2")
    lows, fulls = zip(*(ingest.push_pcm(pcm[i : i + 480].tobytes(), 24000) for i in range(0, pcm.size, 480)), strict=True)
    low, full = np.concatenate(lows), np.concatenate(fulls)
    assert full.size == 3 * low.size and full.size > 47000
    spectrum = np.abs(np.fft.rfft(full[4800:4800 + 38400]))
    freqs = np.fft.rfftfreq(38400, 1 / 48000)
    assert abs(freqs[np.argmax(spectrum)] - 9000) < 5  # 9 kHz from a 24 kHz TTS: kept, resampled to 48 kHz
