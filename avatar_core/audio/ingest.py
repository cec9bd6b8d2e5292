"""Streaming audio conversion at the session's edges (libswresample through PyAV).

* ``AudioIngest``: anything a producer sends (aiortc's decoded opus frames, usually 48 kHz s16,
  mono or stereo; raw PCM bytes from a WebSocket/TTS) -> float32 mono at the feature rate.
* ``OutputAudioResampler``: the chunks' 16 kHz float32 speech -> 48 kHz int16 mono for the
  outgoing WebRTC audio track.

Both keep the resampler's filter state across calls, so consecutive packets join without clicks.
libswresample's filter delay is ~1 ms and it emits output for every input packet (soxr buffers
tens of ms), which matters for speech-to-lips latency. Packet timestamps are ignored: the runtime
timestamps samples by arrival, and aiortc's pts can jump or repeat.
"""

from __future__ import annotations

import av
import numpy as np

SUPPORTED_PCM_FORMATS = {"s16": ("<i2", "s16"), "f32": ("<f4", "flt")}
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8


class _StreamingResampler:
    """One libswresample stream to a fixed output format; rebuilt when the input format changes
    (a renegotiated track), flushing the old one first so no samples are lost."""

    def __init__(self, out_format: str, out_rate: int):
        self.out_format = out_format
        self.out_rate = out_rate
        self._resampler: av.AudioResampler | None = None
        self._input_key: tuple | None = None

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        parts: list[np.ndarray] = []
        if key != self._input_key:
            parts += self.flush()
            self._resampler = av.AudioResampler(format=self.out_format, layout="mono", rate=self.out_rate)
            self._input_key = key
        frame.pts = None  # swresample would otherwise try to honour (possibly odd) timestamps
        for out in self._resampler.resample(frame):
            parts.append(out.to_ndarray().reshape(-1))
        return parts

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        parts = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(None)]
        self._resampler = None
        self._input_key = None
        return parts


class AudioIngest:
    """Any producer's audio -> float32 mono at ``rate`` (16 kHz), stateful across packets."""

    def __init__(self, rate: int = 16000):
        _check_rate(rate)
        self.rate = rate
        self._resampler = _StreamingResampler("flt", rate)

    def push_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """One decoded frame (any sample format, layout or rate PyAV knows) -> float32 mono."""
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"push_frame expects an av.AudioFrame, got {type(frame).__name__}")
        if frame.samples == 0:
            return np.zeros(0, np.float32)
        _check_rate(frame.sample_rate)
        # Our own copy of the frame's header: clearing pts must not touch the caller's frame.
        copy = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name)
        copy.sample_rate = frame.sample_rate
        return _concat(self._resampler.push(copy))

    def push_pcm(
        self,
        data: bytes | bytearray | memoryview | np.ndarray,
        rate: int,
        channels: int = 1,
        sample_format: str = "s16",
    ) -> np.ndarray:
        """Raw interleaved little-endian PCM (``s16`` or ``f32``) -> float32 mono at ``self.rate``."""
        if sample_format not in SUPPORTED_PCM_FORMATS:
            raise ValueError(f"unsupported sample_format {sample_format!r}; use one of {sorted(SUPPORTED_PCM_FORMATS)}")
        _check_rate(rate)
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {channels!r}")
        dtype, av_format = SUPPORTED_PCM_FORMATS[sample_format]
        if isinstance(data, np.ndarray):
            expected = np.dtype(dtype)
            if data.dtype.kind != expected.kind or data.dtype.itemsize != expected.itemsize:
                raise ValueError(f"{sample_format} PCM must be {expected} samples, got {data.dtype}")
            interleaved = np.ascontiguousarray(data, dtype=dtype).reshape(-1)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            frame_bytes = np.dtype(dtype).itemsize * channels
            if len(data) % frame_bytes:
                raise ValueError(
                    f"{len(data)} bytes is not a whole number of {sample_format} frames of {channels} channel(s) "
                    f"({frame_bytes} bytes each)"
                )
            interleaved = np.frombuffer(data, dtype=dtype)
        else:
            raise TypeError(f"push_pcm expects bytes or a numpy array, got {type(data).__name__}")
        if interleaved.size % channels:
            raise ValueError(f"{interleaved.size} samples do not split into {channels} channels")
        if interleaved.size == 0:
            return np.zeros(0, np.float32)
        if sample_format == "f32" and not np.all(np.isfinite(interleaved)):
            raise ValueError("f32 PCM contains NaN or infinite samples")
        frame = av.AudioFrame.from_ndarray(interleaved.reshape(1, -1), format=av_format, layout=_layout(channels))
        frame.sample_rate = rate
        return _concat(self._resampler.push(frame))

    def flush(self) -> np.ndarray:
        """End of stream: the samples still inside the resampler's filter."""
        return _concat(self._resampler.flush())


class OutputAudioResampler:
    """The chunks' float32 speech at ``in_rate`` -> int16 mono at ``out_rate``, stateful."""

    def __init__(self, in_rate: int = 16000, out_rate: int = 48000):
        _check_rate(in_rate)
        _check_rate(out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = _StreamingResampler("s16", out_rate)

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"expected 1-D float mono samples, got {x.dtype} {x.shape}")
        if x.size == 0:
            return np.zeros(0, np.int16)
        # Clip before conversion: swresample wraps, not saturates, out-of-range floats.
        x = np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0), -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        return _concat(self._resampler.push(frame), np.int16)

    def flush(self) -> np.ndarray:
        return _concat(self._resampler.flush(), np.int16)


def _layout(channels: int) -> str:
    # ffmpeg's default layout for each channel count (only the count matters for the downmix)
    return {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}[channels]


def _check_rate(rate: int) -> None:
    if not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"unsupported sample rate {rate!r}; expected an integer from {MIN_RATE} to {MAX_RATE} Hz")


def _concat(parts: list[np.ndarray], dtype=np.float32) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
