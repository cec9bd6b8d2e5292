"""Measurements on what a ``LoopbackPeer`` sent and received (integration tests, e2e benchmark).

Everything is on the receiver's clock (``time.monotonic``): the mic's send time of each 20 ms
frame, the arrival time of each received audio frame and video frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests.support.loopback_peer import FRAME_SAMPLES, RATE, LoopbackPeer

GRID_S = FRAME_SAMPLES / RATE  # 20 ms


def _frame_rms(samples: np.ndarray) -> np.ndarray:
    n = samples.size // FRAME_SAMPLES
    frames = samples[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).astype(np.float64)
    return np.sqrt((frames**2).mean(axis=1))


@dataclass
class AudioMatch:
    lag_s: float  # median time from sending a piece of speech to receiving it back
    correlation: float  # normalised correlation of the sent and returned 20 ms envelopes
    offset_frames: int  # returned stream frame j carries sent frame j + offset_frames


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    return np.convolve(x, np.ones(n) / n, mode="same") if n > 1 else x


def match_returned_audio(peer: LoopbackPeer, max_offset_s: float = 1.0, smooth_s: float = 0.0) -> AudioMatch:
    """Align the returned audio stream with the sent file by content (20 ms RMS envelopes), then
    measure the delay on the clock: arrival of each returned frame minus the send time of the
    mic frame it carries. Content first, so arrival jitter cannot blur the match. ``smooth_s``
    averages the envelopes first (tolerates small time shifts inside the stream)."""
    assert peer.mic.started_at is not None, "the microphone never started"
    smooth = max(1, int(round(smooth_s / GRID_S)))
    sent = _smooth(_frame_rms(peer.samples_48k), smooth)
    frames = [f for f in peer.audio_frames if f.samples.size]
    if not frames:
        return AudioMatch(float("nan"), 0.0, 0)
    received = _smooth(_frame_rms(np.concatenate([f.samples for f in frames])), smooth)
    # arrival time of each 20 ms frame of the returned stream
    arrivals = np.concatenate([np.full(f.samples.size // FRAME_SAMPLES or 1, f.arrival) for f in frames])[: received.size]
    best = AudioMatch(float("nan"), -1.0, 0)
    max_offset = int(max_offset_s / GRID_S)
    for offset in range(-max_offset, max_offset + 1):
        j0, j1 = max(0, -offset), min(received.size, sent.size - offset)
        if j1 - j0 < 50:
            continue
        a = sent[j0 + offset : j1 + offset] - sent[j0 + offset : j1 + offset].mean()
        b = received[j0:j1] - received[j0:j1].mean()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        corr = float(a @ b / denom) if denom > 0 else 0.0
        if corr > best.correlation:
            sent_times = peer.mic.started_at + (np.arange(j0, j1) + offset) * GRID_S
            lag = float(np.median(arrivals[j0:j1] - sent_times))
            best = AudioMatch(lag, corr, offset)
    return best


def mouth_activity(frames: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """Frames: grey [H, W] or RGB [H, W, 3]. Mean absolute grey-level change inside ``box`` (x0, y0, x1, y1) from each frame to the next
    (one value per frame; the first is 0)."""
    x0, y0, x1, y1 = box
    grey = [f[y0:y1, x0:x1].astype(np.float32) for f in frames]
    grey = [g.mean(axis=2) if g.ndim == 3 else g for g in grey]
    out = np.zeros(len(grey))
    for i in range(1, len(grey)):
        out[i] = float(np.abs(grey[i] - grey[i - 1]).mean())
    return out


def receive_fps(peer: LoopbackPeer, skip_s: float = 1.0) -> float:
    """Video frames per second received after the first ``skip_s`` seconds."""
    times = [f.arrival for f in peer.video_frames]
    if len(times) < 3:
        return 0.0
    kept = [t for t in times if t >= times[0] + skip_s]
    if len(kept) < 2:
        return 0.0
    return (len(kept) - 1) / (kept[-1] - kept[0])
