"""``FullBandIngest``: a producer's audio as two sample-locked copies, the engine's 16 kHz one and
a full-band one (48 kHz) for the outgoing audio, so the host's voice goes back as it came in.

The 16 kHz copy is ``AudioIngest``'s (unchanged). The full-band copy is the input itself when it
already is at the full-band rate (a WebRTC peer's opus: 48 kHz), else resampled to it. Each call
returns exactly ``ratio`` full-band samples per 16 kHz sample: a FIFO pairs them in stream order,
so sample j of the engine's copy and samples [ratio*j, ratio*(j+1)) of the full-band copy are the
same moment (within libswresample's ~1 ms filter delay).
"""

from __future__ import annotations

import av
import numpy as np

from live_avatar.core.audio.ingest import AudioIngest

# The FIFO never needs more than the two resamplers' delays; beyond this it is trimmed.
MAX_FIFO_S = 0.1


class FullBandIngest:
    def __init__(self, rate: int = 16000, full_band_rate: int = 48000):
        if full_band_rate % rate:
            raise ValueError(f"full_band_rate ({full_band_rate}) must be a multiple of rate ({rate})")
        self.rate = rate
        self.full_band_rate = full_band_rate
        self.ratio = full_band_rate // rate
        self._ingest = AudioIngest(rate)
        self._full = AudioIngest(full_band_rate)  # input already at this rate passes unresampled
        self._fifo = np.zeros(0, np.float32)

    def push_frame(self, frame: av.AudioFrame) -> tuple[np.ndarray, np.ndarray]:
        """One decoded frame -> (float32 mono at ``rate``, float32 mono at ``full_band_rate``)."""
        low = self._ingest.push_frame(frame)
        return low, self._pair(low.shape[0], self._full.push_frame(frame))

    def push_pcm(self, data, rate: int, channels: int = 1, sample_format: str = "s16") -> tuple[np.ndarray, np.ndarray]:
        """Raw PCM (as ``AudioIngest.push_pcm``) -> (float32 mono at ``rate``, at ``full_band_rate``)."""
        low = self._ingest.push_pcm(data, rate, channels, sample_format)
        return low, self._pair(low.shape[0], self._full.push_pcm(data, rate, channels, sample_format))

    def _pair(self, n: int, full: np.ndarray) -> np.ndarray:
        fifo = np.concatenate([self._fifo, full]) if self._fifo.size else full
        need = n * self.ratio
        if fifo.size < need:  # the full-band copy lags (its resampler's start-up): lead with silence
            fifo = np.concatenate([np.zeros(need - fifo.size, np.float32), fifo])
        out, rest = fifo[:need], fifo[need:]
        limit = int(MAX_FIFO_S * self.full_band_rate)
        self._fifo = rest[-limit:] if rest.size > limit else rest
        return np.ascontiguousarray(out, np.float32)
