"""A light streaming voice-activity detector, one decision per video frame (640 samples at 16 kHz).

A frame is speech-like when it is
  * louder than an absolute floor (digital silence and hiss never count),
  * louder than the adaptive noise floor by ``snr_db`` (steady background noise does not count),
  * and spectrally speech-like: most of its energy in the voice band and a peaky (harmonic)
    rather than flat spectrum (white/pink noise, fans and hum are rejected).
A hangover keeps short gaps inside speech (between words) from splitting it. An *onset* is
reported when speech starts after at least ``min_silence_s`` without a speech-like frame; the
session's start counts as silence, so the first speech is an onset.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class VadConfig:
    abs_floor_db: float = -50.0  # dBFS RMS under which a frame is never speech
    snr_db: float = 9.0  # required margin over the adaptive noise floor
    band_hz: tuple[float, float] = (80.0, 4000.0)  # the voice band of the band-energy ratio
    min_band_ratio: float = 0.6  # share of energy inside band_hz
    max_flatness: float = 0.15  # spectral flatness inside band_hz (speech ~0.02, pink noise ~0.35, white ~0.56)
    hangover_s: float = 0.3  # speech state lasts this long after the last speech-like frame
    min_silence_s: float = 0.5  # silence before a start of speech that makes it an onset
    noise_rise_s: float = 1.0  # time constant of the noise floor climbing towards louder noise
    noise_fall_s: float = 0.1  # time constant of the noise floor following quieter input
    # An onset is confirmed by a speech-like frame, but speech often starts a little earlier with an
    # unvoiced sound (the "h" of "hello"): look back this far for where the loud part began.
    onset_lookback_s: float = 0.12

    def __post_init__(self) -> None:
        lo, hi = self.band_hz
        if not 0 <= lo < hi:
            raise ValueError(f"band_hz must be (low, high) with 0 <= low < high, got {self.band_hz}")
        if not 0 < self.min_band_ratio <= 1 or not 0 < self.max_flatness <= 1:
            raise ValueError("min_band_ratio and max_flatness must be in (0, 1]")
        if min(self.hangover_s, self.min_silence_s) < 0 or min(self.noise_rise_s, self.noise_fall_s) <= 0:
            raise ValueError("hangover_s/min_silence_s must be >= 0 and noise time constants > 0")


@dataclass(frozen=True)
class VadFrame:
    speech: bool  # smoothed decision (with hangover)
    onset: bool  # speech starts here after >= min_silence_s of silence
    speech_like: bool  # the raw per-frame cue, before hangover
    energy_db: float
    noise_floor_db: float
    # On an onset: where the loud part begins, in samples relative to this frame's first sample
    # (negative: it began in an earlier frame, at most onset_lookback_s before).
    onset_offset: int = 0


class VoiceActivityDetector:
    """Streaming: feed consecutive frames of exactly ``frame_samples`` samples to ``process``."""

    def __init__(self, sample_rate: int = 16000, frame_samples: int = 640, config: VadConfig | None = None):
        if sample_rate <= 0 or frame_samples < 64:
            raise ValueError(f"need sample_rate > 0 and frame_samples >= 64, got {sample_rate}, {frame_samples}")
        self.config = config or VadConfig()
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        frame_s = frame_samples / sample_rate
        self._window = np.hanning(frame_samples).astype(np.float32)
        freqs = np.fft.rfftfreq(frame_samples, 1.0 / sample_rate)
        lo, hi = self.config.band_hz
        self._band = (freqs >= lo) & (freqs <= hi)
        self._rise = 1.0 - np.exp(-frame_s / self.config.noise_rise_s)
        self._fall = 1.0 - np.exp(-frame_s / self.config.noise_fall_s)
        self._lookback_frames = math.ceil(self.config.onset_lookback_s / frame_s)
        self._hangover_frames = int(round(self.config.hangover_s / frame_s))
        self._min_silence_frames = math.ceil(self.config.min_silence_s / frame_s - 1e-9)  # at least min_silence_s
        self.reset()

    def reset(self) -> None:
        self._noise_db: float | None = None
        self._since_speech_like = self._min_silence_frames  # session start counts as silence
        self._speech = False
        self._recent: deque[np.ndarray] = deque(maxlen=self._lookback_frames)

    def process(self, frame: np.ndarray) -> VadFrame:
        x = np.asarray(frame, dtype=np.float32)
        if x.shape != (self.frame_samples,):
            raise ValueError(f"VAD frames must have shape ({self.frame_samples},), got {x.shape}")
        cfg = self.config
        energy_db = _db(float(np.mean(x * x)))
        if self._noise_db is None:
            self._noise_db = max(energy_db, cfg.abs_floor_db - 20.0)
        speech_like = (
            energy_db >= cfg.abs_floor_db
            and energy_db >= self._noise_db + cfg.snr_db
            and self._spectrum_is_voice(x)
        )
        onset = False
        if speech_like:
            onset = not self._speech and self._since_speech_like >= self._min_silence_frames
            self._since_speech_like = 0
            self._speech = True
        else:
            self._since_speech_like += 1
            if self._since_speech_like > self._hangover_frames:
                self._speech = False
        noise_db = self._noise_db
        if not self._speech:  # learn the floor only outside speech, or speech would raise it
            rate = self._fall if energy_db < noise_db else self._rise
            self._noise_db = noise_db + rate * (energy_db - noise_db)
        offset = self._loud_start(x, noise_db) if onset else 0
        self._recent.append(x)
        return VadFrame(self._speech, onset, speech_like, energy_db, noise_db, offset)

    def _spectrum_is_voice(self, x: np.ndarray) -> bool:
        power = np.abs(np.fft.rfft(x * self._window)) ** 2 + 1e-20
        band = power[self._band]
        ratio = float(band.sum() / power.sum())
        flatness = float(np.exp(np.mean(np.log(band))) / np.mean(band))
        return ratio >= self.config.min_band_ratio and flatness <= self.config.max_flatness

    def _loud_start(self, x: np.ndarray, noise_db: float) -> int:
        """Start of the loud run that ends in the onset frame (10 ms resolution), relative to the
        onset frame: the first loud hop of this frame, extended back over loud hops before it."""
        hop = max(self.frame_samples // 4, 1)
        threshold = max(self.config.abs_floor_db, noise_db + self.config.snr_db)
        history = np.concatenate([*self._recent, x])
        base = history.shape[0] - self.frame_samples  # index of this frame's first sample
        loud = [
            _db(float(np.mean(history[i : i + hop] ** 2))) >= threshold for i in range(0, history.shape[0], hop)
        ]
        first_in_frame = next((i for i in range(base // hop, len(loud)) if loud[i]), base // hop)
        start = first_in_frame
        while start > 0 and loud[start - 1]:
            start -= 1
        return start * hop - base


def _db(mean_square: float) -> float:
    return 10.0 * np.log10(mean_square + 1e-12)


def detect_speech(
    samples: np.ndarray,
    sample_rate: int = 16000,
    fps: int = 25,
    config: VadConfig | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Offline: per-frame speech flags (bool[n_frames], the last partial frame zero-padded) and the
    frames where onsets happen. Same decisions as the streaming detector."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D mono, got shape {samples.shape}")
    if sample_rate % fps:
        raise ValueError(f"sample_rate {sample_rate} is not a multiple of fps {fps}")
    spf = sample_rate // fps
    n_frames = -(-samples.shape[0] // spf)
    padded = np.zeros(n_frames * spf, np.float32)
    padded[: samples.shape[0]] = samples
    vad = VoiceActivityDetector(sample_rate, spf, config)
    speech = np.zeros(n_frames, bool)
    onsets: list[int] = []
    for k in range(n_frames):
        result = vad.process(padded[k * spf : (k + 1) * spf])
        speech[k] = result.speech
        if result.onset:
            onsets.append(k)
    return speech, onsets
