"""Full-band voice and capacity admission, end to end over loopback WebRTC with the real lite
engine and a real aiortc peer (opus both ways).

* The peer sends speech plus a 10 kHz tone; the audio track that comes back holds the sent
  energy above 8 kHz within 3 dB (before this, the 16 kHz engine copy went back: nothing above 8 kHz).
* With capacity admission on, a second offer that the measured cost does not allow gets 503 JSON
  while the first session keeps streaming; its stats and /metrics carry the capacity figures.
"""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from live_avatar.server.capacity import CapacityConfig
from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.loopback_analysis import GRID_S, match_returned_audio, receive_fps
from tests.support.loopback_peer import RATE, LoopbackPeer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TONE_HZ = 10_000.0


@pytest.fixture(scope="module")
def lite_engine():
    from live_avatar.core.engines import load_engine

    return load_engine("lite")


def band_db(x: np.ndarray, lo: float, hi: float = 20_000.0) -> float:
    """Mean power in [lo, hi) Hz, in dB (Welch-like: 4096-sample Hann windows, half overlap)."""
    n, hop = 4096, 2048
    window = np.hanning(n)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    band = (freqs >= lo) & (freqs < hi)
    powers = [np.sum(np.abs(np.fft.rfft(x[i : i + n] * window))[band] ** 2) for i in range(0, x.size - n, hop)]
    return float(10 * np.log10(np.mean(powers) + 1e-20))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tone_session(lite_engine, speech_16k):
    import soxr

    speech = soxr.resample(speech_16k, 16000, RATE).astype(np.float32)
    t = np.arange(speech.size) / RATE
    sent_voice = 0.5 * speech / np.abs(speech).max() + 0.05 * np.sin(2 * np.pi * TONE_HZ * t).astype(np.float32)
    silence = np.zeros(RATE, np.float32)
    samples = np.concatenate([silence, sent_voice, silence])
    async with serve_in_process(ServerConfig(port=0), engine=lite_engine) as server:
        peer = LoopbackPeer(samples, frame_format=None)
        try:
            session_id = await peer.connect_offer(server.url)
            await peer.wait_sent(extra_s=0.8)
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/sessions/{session_id}/stats") as resp:
                stats = await resp.json()
        finally:
            await peer.close()
        yield peer, samples, stats


async def test_returned_audio_keeps_the_energy_above_8_khz(tone_session):
    peer, sent, stats = tone_session
    match = match_returned_audio(peer, smooth_s=0.2)
    assert match.correlation > 0.5, match
    returned = peer.audio_samples()
    # the same stretch of speech in both streams: sent frame j + offset is returned frame j
    start = RATE + RATE // 2  # from 0.5 s into the speech ...
    stop = sent.size - RATE - RATE // 2  # ... to 0.5 s before its end
    shift = round(match.offset_frames * GRID_S * RATE)
    sent_part = sent[start:stop]
    returned_part = returned[start - shift : stop - shift]
    assert returned_part.size == sent_part.size
    high_sent, high_back = band_db(sent_part, 8000), band_db(returned_part, 8000)
    assert abs(high_back - high_sent) <= 3.0, f"above 8 kHz: sent {high_sent:.1f} dB, returned {high_back:.1f} dB"
    # the tone itself is there, at its frequency
    spectrum = np.abs(np.fft.rfft(returned_part[: 1 << 16] * np.hanning(min(1 << 16, returned_part.size))))
    freqs = np.fft.rfftfreq(min(1 << 16, returned_part.size), 1 / RATE)
    peak = freqs[np.argmax(spectrum * (freqs > 8000))]
    assert abs(peak - TONE_HZ) < 20
    # and the speech below 8 kHz came back at its level too
    assert abs(band_db(returned_part, 100, 8000) - band_db(sent_part, 100, 8000)) <= 3.0
    # the budget of the session's speech-to-lips time is in its stats, stage by stage
    budget = stats["latency_budget_ms"]
    assert budget["onsets"] >= 1 and budget["total"]["p50"] > 0
    assert set(budget["stages"]) == {"timeline", "block_ready", "generated", "playout", "sent"}
    assert stats["playout_margin"]["adaptive"] is True


async def test_a_second_session_the_cost_does_not_allow_gets_503_json(lite_engine, speech_with_silence_wav,
                                                                        monkeypatch):
    monkeypatch.setenv("AVATAR_CAPACITY_ADMISSION", "on")
    # a budget that holds one session on any machine: the first is admitted, the second is not
    config = ServerConfig(port=0, capacity=CapacityConfig(cpu_budget=0.01))
    async with serve_in_process(config, engine=lite_engine) as server:
        first = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
        second = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
        try:
            session_id = await first.connect_offer(server.url)
            with pytest.raises(RuntimeError) as refused:
                await second.connect_offer(server.url)
            assert "503" in str(refused.value) and "capacity" in str(refused.value)
            await first.wait_sent(extra_s=0.2)
            assert receive_fps(first) > 15  # the first kept streaming
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.url}/sessions/{session_id}/stats") as resp:
                    stats = await resp.json()
                async with http.get(f"{server.url}/metrics") as resp:
                    metrics = await resp.text()
                async with http.get(f"{server.url}/healthz") as resp:
                    health = await resp.json()
            assert set(stats["capacity"]) >= {"behind", "late_frames_recent", "slots_recent"}
            assert "sessions_behind" in metrics and "session_cpu_cores" in metrics
            cost = health["capacity"]["startup_cost_cores"]
            assert cost["render"] > 0 and cost["video_encode"] > 0 and cost["total"] > cost["render"]
        finally:
            await first.close()
            await second.close()
