"""The server's two audio conversions, delegated to avatar_core.audio.

``IncomingAudio``: a peer's av.AudioFrame (any rate/layout) -> 16 kHz mono float32 (AudioIngest).
``OutputUpsampler``: the session's 16 kHz speech -> 48 kHz for the outgoing track
(OutputAudioResampler). Both are streaming and stateful: one instance per session.
"""

from __future__ import annotations

import av
import numpy as np
import soxr


class IncomingAudio:
    def __init__(self, sample_rate: int = 16000) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)

    def push(self, frame: av.AudioFrame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


class OutputUpsampler:
    def __init__(self, in_rate: int = 16000, out_rate: int = 48000) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.asarray(samples, np.float32))
